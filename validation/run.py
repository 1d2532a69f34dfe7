"""``python -m validation``: predictions checked against measurements on this machine.

For a grid of configurations (one and two processes, patches 1/2/4/8, warmup 0/1/2, two model
sizes, two resolutions) it runs the executor under torchrun, simulates the same configuration
with the profiles measured on this machine (collecting them first when missing), and writes
``validation.csv`` (configuration, measured and predicted seconds, relative error, per-op
error summary) and ``validation.html`` (predicted against measured, error by configuration,
measured and simulated timelines one above the other, the ops that disagree most).

Profiles: by default collected fresh into ``OUT/profiles`` right before the runs (a shared
machine's speed drifts by several percent within an hour), covering only the grid's shapes;
for the full grid (about 20 minutes) again before every launch, each launch predicted from its
own profiles (``--profile-each-launch``), and the median of those predictions is compared. A
run of N processes on one host is predicted from a profile collected with N-1 processes
computing beside the profiler (``profiles.collect --co-run N-1``), since the ranks share the
host's caches and memory bandwidth; one process from an idle-host profile. Messages use a
link profile timed while every rank computes (``profiles.links --busy``), which also measures
the host time a message costs its two ranks on CPU.

Measured and predicted times are those of the denoising loop (the executor takes prompt
embeddings and returns latents: no text encoder, no VAE). Each launch first performs an
untimed run of the configuration (``--warmup-runs``: a serving process is warm), then as many
measured runs as fill about half a second (at least one, at most ten); the launches repeat
``--repeats`` times, interleaved over the grid, and the median of all measured runs is kept.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sim.cli import run_main
from sim.config import ParallelConfig, Workload
from sim.errors import UserError
from sim.evaluate import Prediction, evaluate
from sim.hardware import get_gpu
from sim.models import get_model
from sim.topology import build_topology
from sim.trace import Trace, join_traces, op_error_summary

MIN_MEASURED_S = 0.5  # seconds of measured runs per configuration and launch (at least one)
MAX_RUNS = 10

GRIDS = {
    # (models, resolutions, steps, 2-process (patches, warmup) pairs)
    "smoke": (("pixart-tiny",), (256,), 4, ((2, 1),)),
    "quick": (("pixart-tiny", "pixart-small"), (256, 512), 6,
              ((1, 1), (2, 1), (4, 1), (8, 1), (4, 0), (4, 2))),
    "full": (("pixart-tiny", "pixart-small"), (256, 384, 512), 8,
             tuple((m, w) for m in (1, 2, 4, 8) for w in (0, 1, 2))),
}


@dataclass
class Case:
    """One configuration of the grid and what became of it."""

    model: str
    resolution: int
    steps: int
    nproc: int
    patches: int
    warmup: int
    runs: int = 1  # measured runs per launch (short configurations get more)
    measured: list[float] = field(default_factory=list)
    predicted: list[float] = field(default_factory=list)  # per set of profiles (seconds)
    trace_path: Path | None = None
    prediction: Prediction | None = None

    @property
    def name(self) -> str:
        return (f"{self.model} {self.resolution}px n={self.nproc} M={self.patches} "
                f"W={self.warmup}")

    @property
    def slug(self) -> str:
        return (f"{self.model}-{self.resolution}-n{self.nproc}-m{self.patches}-"
                f"w{self.warmup}")

    def executor_args(self, out: Path, device: str, repeat: int, warmup_runs: int) -> str:
        trace = out / "traces" / f"{self.slug}-r{repeat}.csv"
        return shlex.join(["--warmup-runs", str(warmup_runs), "--runs", str(self.runs),
                           "--model", self.model, "--resolution", str(self.resolution),
                           "--steps", str(self.steps), "--patches", str(self.patches),
                           "--warmup", str(self.warmup), "--device", device, "--dtype", "fp32",
                           "--trace", str(trace), "--json"])


def grid_cases(grid: str, nproc: int, only: tuple[str, ...] = ()) -> list[Case]:
    """The configurations of ``grid``: every model and resolution on one process, and the
    grid's (patches, warmup) pairs on ``nproc`` processes (``only``: these models alone)."""
    models, resolutions, steps, pairs = GRIDS[grid]
    cases = []
    for model in models:
        if only and model not in only:
            continue
        for res in resolutions:
            cases.append(Case(model, res, steps, 1, 1, 0))
            if nproc > 1:
                cases += [Case(model, res, steps, nproc, m, w) for m, w in pairs]
    return cases


def build_parser() -> argparse.ArgumentParser:
    from sim.cli import parser

    p = parser("python -m validation",
               "Run the executor on a grid of configurations and compare with predictions.")
    p.add_argument("--grid", choices=sorted(GRIDS), default="quick",
                   help="configurations to run (smoke: one tiny case, for tests)")
    p.add_argument("--nproc", type=int, default=2, help="processes of the parallel runs")
    p.add_argument("--out", default="validation", help="folder for the CSV, HTML and traces")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, default=3,
                   help="launches of each configuration (each: warm-up runs, then measured "
                        "runs filling about half a second); the median run is kept")
    p.add_argument("--profile-dir", default=None,
                   help="reuse the profiles in this folder, collecting only missing ones "
                        "(default: collect fresh ones into OUT/profiles before the runs)")
    p.add_argument("--warmup-runs", type=int, default=1,
                   help="untimed runs of each configuration before each measured one "
                   "(default 1; serving latency is that of a warm process)")
    p.add_argument("--profile-each-launch", action=argparse.BooleanOptionalAction,
                   default=None,
                   help="measure fresh profiles before every launch and predict each launch "
                        "from its own (default: on for the full grid, whose 20 minutes see "
                        "the machine's speed drift; off for the quick grid)")
    p.add_argument("--models", default="",
                   help="comma-separated subset of the grid's models (default: all)")
    p.add_argument("--no-progress", action="store_true")
    return p


# ---- profiles ---------------------------------------------------------------------------------
def ensure_profiles(cases: list[Case], device: str, profile_dir: Path, fresh: bool,
                    progress: bool) -> tuple[dict[tuple[str, int], Path], Path | None]:
    """The compute profile of each model for runs of each process count (a run of N
    processes is profiled with N-1 processes computing beside it: on one host they share
    caches and memory bandwidth) and the link profile of the largest count, collected into
    ``profile_dir`` first when missing (or always, with ``fresh``). Compute profiles cover the
    grid's resolutions and patch counts and the ops the executor runs: a machine's speed drifts
    by several percent within an hour (other tenants of a VM, clocks), so validation measures
    what it needs right before the runs instead of trusting a profile from earlier."""
    from profiles import collect

    name = collect.device_name(device)
    dev = collect.device_slug(device, name, 1)
    dtype = "fp32"
    models = sorted({c.model for c in cases})
    nprocs = sorted({c.nproc for c in cases})
    resolutions = ",".join(str(r) for r in sorted({c.resolution for c in cases}))
    patches = ",".join(str(m) for m in sorted({c.patches for c in cases} | {1}))
    profile_dir.mkdir(parents=True, exist_ok=True)
    compute = {}
    for model in models:
        for n in nprocs:
            co = n - 1 if device == "cpu" else 0  # GPUs share no caches between ranks
            path = profile_dir / f"{dev}_{model}_{dtype}{f'_co{co}' if co else ''}.csv"
            if fresh or not path.exists():
                _say(f"profiling {model} on this {device}"
                     f"{f' with {co} process(es) computing beside it' if co else ''} "
                     f"-> {path}", progress)
                argv = ["--model", model, "--device", device, "--dtype", dtype, "--threads",
                        "1", "--co-run", str(co), "--resolutions", resolutions, "--patches",
                        patches, "--ops", "block,embed,final,scheduler_step,condition",
                        "--no-curve", "--out", str(path)] + \
                    ([] if progress else ["--no-progress"])
                if collect.main(argv) != 0:
                    raise UserError(f"profile collection for {model} failed")
            compute[(model, n)] = path
    nproc = max(nprocs)
    link = None
    if nproc > 1:
        # Messages are timed while every rank computes, as in a run (--busy).
        kind = "loopback" if device == "cpu" else "nvlink4"
        backend = "gloo" if device == "cpu" else "nccl"
        link = profile_dir / f"links_{backend}_{kind}_w{nproc}_busy_{dev}.csv"
        if fresh or not link.exists():
            _say(f"timing messages between {nproc} processes -> {link}", progress)
            _torchrun(nproc, ["-m", "profiles.links", "--backend", backend, "--quick",
                              "--busy", "--out", str(link)] +
                      ([] if device == "cpu" else ["--link-kind", kind]))
    return compute, link


def _say(text: str, progress: bool) -> None:
    if progress:
        print(text, file=sys.stderr)


def _torchrun(nproc: int, argv: list[str], timeout: float = 1800) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
        raise UserError(f"{' '.join(argv[:2])} under torchrun failed: "
                        f"{lines[-1] if lines else 'no output'}")


# ---- runs -------------------------------------------------------------------------------------
def run_cases(cases: list[Case], out: Path, device: str, repeats: int, progress: bool,
              warmup_runs: int = 1,
              before_repeat: Callable[[int], None] | None = None) -> None:
    """Run every case ``repeats`` times, one torchrun launch per process count and repeat
    (start-up paid once per launch), interleaving repeats so drifts in machine load spread
    over all cases; ``before_repeat(r)``, when given, is called before repeat ``r``."""
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
            _torchrun(nproc, ["-m", "executor.batch", str(folder), *args])
            for i, c in enumerate(group):
                d = json.loads((folder / f"run-{i}.json").read_text())
                c.measured.extend(float(x) for x in d["latencies_s"])
                if r == repeats - 1 or c.trace_path is None:
                    c.trace_path = out / "traces" / f"{c.slug}-r{r}.csv"
            done += 1
            _say(f"[{'#' * (30 * done // total):<30}] executor runs {done}/{total} "
                 f"({len(group)} configurations on {nproc} process"
                 f"{'es' if nproc > 1 else ''}, {time.perf_counter() - t0:.0f} s)", progress)


def predict_case(c: Case, compute: dict[tuple[str, int], Path], link: Path | None,
                 device: str) -> Prediction:
    """The simulator's prediction of ``c`` with this machine's profiles."""
    from sim.cost.profile import ProfileCost, apply_link_profile

    gpu = get_gpu("cpu" if device == "cpu" else "h100-sxm")
    wl = Workload(get_model(c.model), c.resolution, c.resolution, c.steps, dtype="fp32",
                  text_encoder=False, vae=False)
    cfg = ParallelConfig(c.nproc, c.nproc, c.patches, c.warmup)
    topo = build_topology(gpu, c.nproc, "pcie" if device == "cpu" else "nvlink")
    if link is not None:
        # The link fit of the regime holding this run's typical message: a patch's hidden
        # states (batch x tokens/M x hidden, fp32).
        m = wl.model
        msg = m.batch * wl.tokens // c.patches * m.hidden * 4
        topo = apply_link_profile(topo, link, nbytes=msg)
    cost = ProfileCost(wl, gpu, compute[(c.model, c.nproc)])
    return evaluate(wl, cfg, gpu, topo, cost)


# ---- outputs ----------------------------------------------------------------------------------
CSV_COLUMNS = ("model", "resolution", "steps", "nproc", "patches", "warmup", "measured_s",
               "measured_runs", "measured_iqr", "predicted_s", "rel_err", "op_errors",
               "cost_sources")


def write_csv(path: Path, cases: list[Case]) -> list[dict]:
    """validation.csv; returns its rows."""
    rows = []
    for c in cases:
        meas = statistics.median(c.measured)
        q = statistics.quantiles(c.measured, n=4) if len(c.measured) > 1 else [meas] * 3
        pred = statistics.median(c.predicted)
        summary = op_error_summary(join_traces(Trace.read_csv(c.trace_path),
                                               c.prediction.trace))
        rows.append({
            "model": c.model, "resolution": c.resolution, "steps": c.steps, "nproc": c.nproc,
            "patches": c.patches, "warmup": c.warmup, "measured_s": meas,
            "measured_runs": len(c.measured),
            # Interquartile range of the measured runs over their median: how far apart the
            # middle half of the runs lie (the extremes of 30 short runs say little).
            "measured_iqr": (q[2] - q[0]) / meas,
            "predicted_s": pred, "rel_err": pred / meas - 1,
            "op_errors": json.dumps({k: round(v["rel_err"], 4) for k, v in summary.items()}),
            "cost_sources": json.dumps(c.prediction.cost_sources),
        })
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.nproc < 1 or args.repeats < 1:
        raise UserError("--nproc and --repeats must be at least 1")
    if args.warmup_runs < 0:
        raise UserError(f"--warmup-runs must be 0 or more, got {args.warmup_runs}")
    only = tuple(m for m in args.models.split(",") if m)
    unknown = [m for m in only if m not in GRIDS[args.grid][0]]
    if unknown:
        raise UserError(f"--models {','.join(unknown)}: not in the {args.grid} grid "
                        f"(choose from {', '.join(GRIDS[args.grid][0])})")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device here; use --device cpu")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    progress = not args.no_progress
    t0 = time.perf_counter()
    cases = grid_cases(args.grid, args.nproc, only)
    each = args.profile_each_launch if args.profile_each_launch is not None \
        else args.grid == "full"
    if args.profile_dir and each:
        raise UserError("--profile-each-launch measures fresh profiles; it does not go with "
                        "--profile-dir")

    def profile_and_predict(r: int) -> None:
        if r > 0 and not each:
            return
        folder = Path(args.profile_dir) if args.profile_dir else \
            out / "profiles" / (f"launch-{r}" if each else "")
        compute, link = ensure_profiles(cases, args.device, folder,
                                        fresh=args.profile_dir is None, progress=progress)
        for c in cases:
            c.prediction = predict_case(c, compute, link, args.device)
            c.predicted.append(c.prediction.latency_s)
            if r == 0:
                # Short runs are at the mercy of scheduler and hypervisor hiccups of a few ms:
                # give each configuration about MIN_MEASURED_S of measured runs per launch
                # (sized by the prediction, all that is known before running).
                c.runs = max(1, min(MAX_RUNS, math.ceil(MIN_MEASURED_S /
                                                        c.prediction.latency_s)))

    run_cases(cases, out, args.device, args.repeats, progress, args.warmup_runs,
              before_repeat=profile_and_predict)
    rows = write_csv(out / "validation.csv", cases)
    errs = [abs(r["rel_err"]) for r in rows]
    elapsed = time.perf_counter() - t0
    try:
        from reports.validation_report import write_validation_report
    except ImportError:
        print("plotly is not installed: validation.html skipped (pip install "
              "'ditsim[reports]')", file=sys.stderr)
    else:
        write_validation_report(out / "validation.html", cases, rows, elapsed, args)
    launches = f"{args.repeats} launch{'es' if args.repeats > 1 else ''}"
    print(f"{len(rows)} configurations ({args.grid} grid, {launches} each) in "
          f"{elapsed:.0f} s: median |error| {statistics.median(errs):.1%}, worst "
          f"{max(errs):.1%} ({rows[errs.index(max(errs))]['model']} "
          f"{rows[errs.index(max(errs))]['resolution']}px n={rows[errs.index(max(errs))]['nproc']}"
          f" M={rows[errs.index(max(errs))]['patches']}); wrote {out / 'validation.csv'}")
    return 0


if __name__ == "__main__":
    run_main(main)
