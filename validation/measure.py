"""Measuring the grid: every configuration run by the executor under torchrun, several launches
interleaved over the grid, several measured runs per launch for short configurations."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

from validation.grid import Case
from validation.launch import say, torchrun

MIN_MEASURED_S = 0.5  # seconds of measured runs per configuration and launch (at least one)
MAX_RUNS = 10


def runs_per_launch(predicted_s: float) -> int:
    """Measured runs per launch of a configuration predicted to take ``predicted_s`` seconds:
    enough to fill ``MIN_MEASURED_S``, from one to ``MAX_RUNS``. Short runs are at the mercy
    of scheduler and hypervisor hiccups of a few ms; the prediction is all that is known
    before running."""
    return max(1, min(MAX_RUNS, math.ceil(MIN_MEASURED_S / predicted_s)))


def run_cases(cases: list[Case], out: Path, device: str, repeats: int, progress: bool,
              warmup_runs: int = 1,
              before_repeat: Callable[[int], None] | None = None) -> None:
    """Run every case ``repeats`` times, one torchrun launch per process count and repeat
    (start-up paid once per launch), interleaving repeats so drifts in machine load spread
    over all cases; ``before_repeat(r)``, when given, is called before repeat ``r``. Each
    case's ``measured`` gets the loop seconds of its runs, ``trace_path`` its last trace."""
    (out / "traces").mkdir(parents=True, exist_ok=True)
    groups: dict[int, list[Case]] = {}
    for c in cases:
        groups.setdefault(c.nproc, []).append(c)
    total = len(groups) * repeats
    done = 0
    for r in range(repeats):
        if before_repeat is not None:
            before_repeat(r)
        for nproc, group in groups.items():
            folder = out / "runs" / f"n{nproc}-r{r}"
            args = [c.executor_args(out, device, r, warmup_runs) for c in group]
            t0 = time.perf_counter()
            torchrun(nproc, ["-m", "executor.batch", str(folder), *args])
            for i, c in enumerate(group):
                d = json.loads((folder / f"run-{i}.json").read_text())
                c.launches.append([float(x) for x in d["latencies_s"]])
                if "pace_probe" in d:
                    c.probes.append(d["pace_probe"])
                ranks = d["memory_per_rank"]
                c.cpu_share.append(sum(r["loop_thread_cpu_s"] / r["loop_s"] for r in ranks)
                                   / len(ranks))
                if r == repeats - 1 or c.trace_path is None:
                    c.trace_path = out / "traces" / f"{c.slug}-r{r}.csv"
            done += 1
            say(f"[{'#' * (30 * done // total):<30}] executor runs {done}/{total} "
                f"({len(group)} configurations on {nproc} process"
                f"{'es' if nproc > 1 else ''}, {time.perf_counter() - t0:.0f} s)", progress)
