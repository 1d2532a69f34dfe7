"""``python -m sim.compare``: strategies (rows) x resolutions (columns), like the comparison
tables of DiT-parallelism papers: latency, speedup over one GPU, memory per GPU, OOM marks.

Each cell is the best configuration of that strategy family using every GPU (serial: one
GPU), with the best patch count for PipeFusion and the given warmup for stale strategies.

Example::

    python -m sim.compare --model pixart --gpu l40 --gpus 8 --link pcie \\
        --resolutions 1024,2048,4096

HTML report: ``python -m reports.compare``, same flags plus ``--report FILE``. From Python,
``sim.compare(model=..., gpus=..., ...)`` (this module, called) or ``sim.api.compare``
returns a ``Comparison`` (``api_compare``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from sim.cli import (
    add_quiet_arg,
    add_workload_args,
    argv_from_kwargs,
    callable_module,
    check_finite,
    checked_time_limit,
    cluster_from_args,
    cost_spec_from_args,
    moved_report_flag,
    parse_int_list,
    parser,
    print_json,
    progress_from_args,
    reject_moved_report,
    run_main,
    time_limit,
    time_limit_arg,
    workload_from_args,
)
from sim.config import ParallelConfig, check_warmup, validate
from sim.errors import UserError
from sim.evaluate import Prediction
from sim.progress import QUIET, Progress
from sim.search import candidates, search
from sim.strategies import FAMILIES

# Prefix of a family's note in ``missing`` when some of its cells are out of memory.
OOM_AT = "OOM at "

# Best prediction per family and resolution (px); families without one map to an empty dict.
Cells = dict[str, dict[int, Prediction]]


def build_parser(prog: str = "python -m sim.compare") -> argparse.ArgumentParser:
    """The comparison's flags (``reports.compare`` adds ``--report`` to them)."""
    p = parser(prog, "Compare parallel strategies across resolutions on the same cluster.")
    add_workload_args(p)
    add_quiet_arg(p)
    p.add_argument("--resolutions", default="1024,2048,4096",
                   help="square resolutions in pixels, comma-separated")
    p.add_argument("--warmup", type=int, default=1,
                   help="warmup steps for strategies with stale context")
    time_limit_arg(p, DEFAULT_TIME_LIMIT_S, "the comparison")
    return p


# How long the command works before giving up, seconds (issue 18): 1,024 GPUs took minutes.
DEFAULT_TIME_LIMIT_S = 60.0


def compare(args: argparse.Namespace, progress: Progress | None = None
            ) -> tuple[list[int], Cells, dict[str, str]]:
    """The resolutions (px), the best prediction per (family, resolution), and why a family
    has no entry; ``progress`` is told how far it is (default: lines on stderr after 2 s
    unless ``--quiet``)."""
    if progress is None:
        progress = progress_from_args(args)
    if args.single_gpu_latency is not None:
        raise UserError("--single-gpu-latency is measured at one resolution; calibrate with "
                        "sim.predict or sim.plan at that resolution")
    resolutions = parse_int_list(args.resolutions, "--resolutions") or ()
    if not resolutions:
        raise UserError("--resolutions needs at least one value")
    gpu, topo = cluster_from_args(args)
    cells: Cells = {f: {} for f in FAMILIES}
    # Families with a valid configuration at a resolution: one of these without a cell there
    # was skipped as out of memory, not ruled out by the degree rules.
    valid: dict[str, set[int]] = {f: set() for f in FAMILIES}
    for res in resolutions:
        args.resolution = str(res)
        wl = workload_from_args(args)
        validate(wl, ParallelConfig(1))
        check_warmup(args.warmup, wl.steps)
        for c in candidates(wl, topo.num_gpus, [args.warmup], all_gpus=True):
            valid[c.strategy].add(res)
        with progress.stage(f"comparing the strategies at {res} px"):
            result = search(wl, gpu, topo, [args.warmup], top=1, per_family=1, all_gpus=True,
                            spec=cost_spec_from_args(args),
                            progress=lambda what, d, n, r=res: progress(f"{r} px: {what}", d,
                                                                         n))
        progress.end()
        for p in result.ranked:
            fam = p.config.strategy
            if res not in cells[fam] or (cells[fam][res].oom, cells[fam][res].latency_s) > \
                    (p.oom, p.latency_s):
                cells[fam][res] = p
    check_finite({f: {r: p.as_dict() for r, p in row.items()} for f, row in cells.items()},
                 "the comparison")  # refused, not printed as nan, before any report
    missing = {f: _why_missing(f, topo.num_gpus, valid[f]) for f in FAMILIES if not cells[f]}
    # A family with some cells but none at a resolution where it was valid: out of memory there.
    for f, row in cells.items():
        if row and any(r not in row for r in valid[f]):
            missing[f] = OOM_AT + ", ".join(f"{r} px" for r in resolutions
                                              if r in valid[f] and r not in row)
    return list(resolutions), cells, missing


# Columns of ``Comparison.to_frame``.
COMPARE_COLUMNS = ("strategy", "resolution", "label", "gpus", "latency_s", "speedup",
                   "memory_gb", "oom")


@dataclass
class Comparison:
    """What ``sim.compare`` finds, as an object: per strategy family and resolution (px)
    the best configuration on every GPU (``cells``), and why a family has no cell
    (``missing``). Seconds throughout."""

    resolutions: list[int]
    cells: Cells
    missing: dict[str, str]

    def to_frame(self) -> Any:
        """One row per (family, resolution) cell (``COMPARE_COLUMNS``); ``speedup`` is
        against the serial cell at that resolution (NaN without one). Needs pandas.

        >>> import sim
        >>> cmp = sim.compare(model="pixart", gpus=2, steps=4, resolutions=[512, 1024])
        >>> df = cmp.to_frame()
        >>> sorted(set(df["resolution"])), bool((df[df.strategy == "serial"].speedup == 1).all())
        ([512, 1024], True)
        """
        from sim.frames import data_frame

        serial = self.cells.get("serial", {})
        rows = [(fam, res, p.config.label(), p.config.gpus, p.latency_s,
                 serial[res].latency_s / p.latency_s if res in serial else float("nan"),
                 p.memory_gb, p.oom)
                for fam, row in self.cells.items() for res, p in sorted(row.items())]
        return data_frame(rows, COMPARE_COLUMNS)


def api_compare(*, model: str, gpus: int, gpu: str | None = None, link: str = "pcie",
                nodes: int = 1, inter_node: str | None = None, nccl: str | None = None,
                host_cpu: str | None = None, ring_overlap: str = "auto", steps: int | None = None,
                dtype: str = "bf16", text_encoder: bool = True, vae: bool = True,
                profile: str | None = None, link_profile: str | None = None,
                resolutions: list[int] | str = "1024,2048,4096",
                warmup: int = 1) -> Comparison:
    """Strategies x resolutions: ``sim.compare``'s flags as keyword arguments, with its
    defaults and checks (a ``UserError`` carries the message the command prints after
    ``error:``); ``resolutions`` is a list of square sizes in pixels.

    >>> import sim
    >>> cmp = sim.compare(model="pixart", gpus=2, steps=4, resolutions=[1024])
    >>> cmp.cells["serial"][1024].config.label(), "ulysses" in cmp.cells
    ('serial', True)
    """
    args = build_parser().parse_args(argv_from_kwargs(dict(locals())))
    args.json = True  # no progress bar from a library call
    return Comparison(*compare(args, QUIET))


def _why_missing(family: str, gpus: int, valid_at: set[int]) -> str:
    """Why ``family`` has no cell at all; ``valid_at`` are the resolutions (px) where it had
    a valid configuration (so that one was skipped as out of memory)."""
    if valid_at:
        return "OOM: no configuration fits in GPU memory"
    if family == "cfg":
        return "pure CFG parallelism uses exactly 2 GPUs" if gpus != 2 else \
            "the model has no guidance batch"
    if family == "serial":
        return "no valid single-GPU configuration"
    return f"no valid {family} configuration on {gpus} GPUs (degree rules, see sim.predict)"


def print_comparison(args: argparse.Namespace, resolutions: list[int], cells: Cells,
                     missing: dict[str, str]) -> None:
    """Print the strategies x resolutions table (or, with --json, every cell)."""
    if args.json:
        print_json({"resolutions": resolutions,
                    "rows": {f: {str(r): p.as_dict() for r, p in row.items()}
                             for f, row in cells.items() if row},
                    "missing": missing})
        return
    serial = cells["serial"]
    any_p = next(p for row in cells.values() for p in row.values())
    gpu = any_p.gpu
    print(f"{any_p.workload.model.name}, {any_p.workload.steps} steps, {args.gpus} x {gpu.name} "
          f"({gpu.memory_bytes / 1e9:.0f} GB) over {args.link}; cell: latency s / speedup / "
          f"GB per GPU")
    col = 24
    print(f"{'strategy':<14}" + "".join(f"{str(r) + ' px':>{col}}" for r in resolutions)
          + "   best configuration at the largest size")
    for fam, row in cells.items():
        if not row:
            note = missing[fam]
            print(f"{fam:<14}{note if note.startswith('OOM') else 'n/a: ' + note}")
            continue
        out = f"{fam:<14}"
        note = missing.get(fam, "")
        oom_at = note.removeprefix(OOM_AT).split(", ") if note.startswith(OOM_AT) else []
        for r in resolutions:
            p = row.get(r)
            if p is None:  # valid there but skipped: nothing fits in memory
                out += f"{'OOM' if f'{r} px' in oom_at else 'n/a':>{col}}"
                continue
            # No serial cell (it does not fit): no speedup to show, not "nanx".
            speed = f"{serial[r].latency_s / p.latency_s:.2f}x" if r in serial else "-"
            cell = f"{p.latency_s:.2f} / {speed} / {p.memory_gb:.0f}" + (" OOM" if p.oom
                                                                         else "")
            out += f"{cell:>{col}}"
        last = row.get(resolutions[-1])
        print(out + (f"   {last.config.label()}" if last else ""))


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    moved_report_flag(p, "reports.compare")
    args = p.parse_args(argv)
    reject_moved_report(args, "reports.compare")
    limit = checked_time_limit(args.time_limit)
    with time_limit(limit, "the comparison", "fewer GPUs or resolutions compare faster"):
        found = compare(args)
    print_comparison(args, *found)
    return 0


callable_module(__name__, api_compare)

if __name__ == "__main__":
    run_main(main)
