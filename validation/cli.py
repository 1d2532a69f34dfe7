"""``python -m validation``: predictions checked against measurements on this machine (the
command line; the grid is in ``validation.grid``, profiles in ``validation.profiling``, runs in
``validation.measure``, predictions in ``validation.predict``, the CSV in ``validation.results``).

For a grid of configurations (one and two processes, PipeFusion with patches 1/2/4/8 and warmup
0/1/2, and in the quick grid Ulysses, ring, tensor, CFG and DistriFusion on two processes; two
model sizes, two resolutions) it runs the executor under torchrun, simulates the same configuration
with the profiles measured on this machine (collecting them first when missing), and writes
``validation.csv`` (configuration, measured and predicted seconds, relative error, per-op
error summary) and ``validation.html`` (predicted against measured, error by configuration and
by strategy family, measured and simulated timelines one above the other, the ops that
disagree most); the summary line gives the median and worst error of each strategy family.

Profiles: by default collected fresh into ``OUT/profiles`` right before the runs (a shared
machine's speed drifts by several percent within an hour), covering only the grid's shapes;
for the full grid (about 20 minutes) again before every launch, each launch predicted from its
own profiles (``--profile-each-launch``), and the median of those predictions is compared. A
run of N processes on one host is predicted from a profile collected with N-1 processes
computing beside the profiler (``profiles.collect --co-run N-1``), since the ranks share the
host's caches and memory bandwidth, timed on the wall clock (``--co-run-clock``: with every
core held by a rank, anything else that runs delays a rank, as in the run); one process from
an idle-host profile on the compute thread's CPU clock. Messages use a
link profile timed while every rank computes (``profiles.links --busy``), which also measures
the host time a message costs its two ranks on CPU.

Measured and predicted times are those of the denoising loop (the executor takes prompt
embeddings and returns latents: no text encoder, no VAE). Each launch first performs an
untimed run of the configuration (``--warmup-runs``: a serving process is warm), then as many
measured runs as fill about half a second (at least one, at most ten); the launches repeat
``--repeats`` times, interleaved over the grid, and the median of all measured runs is kept.
The last lines say how much of the error the machine itself leaves: the runs' own spread, and
what a perfect model would score on these very launches (``validation.noise``: a bootstrap
over each configuration's launches).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from profiles.links import ORDERS
from sim.cli import at_least, parser
from sim.cost.profile_format import ComputeProfile
from sim.errors import UserError
from sim.outputs import check_folder, write_outputs
from validation.compare import op_error_summary
from validation.grid import GRIDS, grid_cases, grid_models
from validation.measure import run_cases, runs_per_launch
from validation.noise import beyond_line, grid_floors, summary_line
from validation.predict import pace_by_probe, predict_case, probe_calls
from validation.profiling import ensure_profiles
from validation.results import (
    family_summary,
    result_rows,
    row_name,
    run_spread,
    trace_pairs,
    write_csv,
)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m validation``."""
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
    p.add_argument("--co-run-clock", choices=("wall", "cpu"), default="wall",
                   help="clock of the CPU compute profiles of multi-process runs, measured "
                        "with the other processes computing beside the profiler: wall (the "
                        "default: the run's ranks hold every core, so anything else that runs "
                        "takes a rank's core, and the run is charged wall time) or cpu (the "
                        "compute thread's CPU time, blind to those waits; the choice before "
                        "issue 11)")
    p.add_argument("--link-order", choices=ORDERS, default="shuffled",
                   help="order in which the link profile times its sizes (profiles.links "
                        "--order): shuffled (the default) or ascending, smallest first")
    p.add_argument("--pace", choices=("probe", "slowest", "median"), default="slowest",
                   help="compute pace of a prediction: slowest (default: the expected slowest "
                        "of the run's processes, from the paces of the processes that "
                        "measured the profile), median (the median process's profile as is) "
                        "or probe (each launch's own pace: its processes time the profile's "
                        "whole-image block before and after the runs, executor.run "
                        "--pace-probe; the slowest rank over the profile's time scales that "
                        "launch's prediction; the CSV keeps the slowest-pace prediction "
                        "beside it)")
    p.add_argument("--models", default="",
                   help="comma-separated subset of the grid's models (default: all)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """Validate on the grid ``argv`` asks for (default: the command line); returns the exit
    status. Bad input raises ``UserError`` (``sim.cli.run_main`` prints it, exit 2)."""
    args = build_parser().parse_args(argv)
    at_least(args.nproc, 1, "--nproc")
    at_least(args.repeats, 1, "--repeats")
    at_least(args.warmup_runs, 0, "--warmup-runs")
    only = tuple(m for m in args.models.split(",") if m)
    unknown = [m for m in only if m not in grid_models(args.grid)]
    if unknown:
        raise UserError(f"--models {','.join(unknown)}: not in the {args.grid} grid "
                        f"(choose from {', '.join(grid_models(args.grid))})")
    if args.device == "cuda":
        import torch  # here, not at the top: the other paths run torch in child processes

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device here; use --device cpu")
    out = Path(args.out)
    check_folder(out, "--out")  # before the runs; the folder itself is created as they start
    try:  # plotly is optional: said before the runs, not after them
        from reports.validation_report import write_validation_report
    except ImportError:
        write_validation_report = None
        print("note: plotly is not installed, so validation.html will be skipped (pip "
              "install 'ditsim[reports]'); validation.csv is written", file=sys.stderr)
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
                                        fresh=args.profile_dir is None, progress=progress,
                                        co_run_clock=args.co_run_clock,
                                        link_order=args.link_order)
        probing = args.pace == "probe"
        for c in cases:
            c.prediction = predict_case(c, compute, link, args.device,
                                        "slowest" if probing else args.pace)
            c.predicted.append(c.prediction.latency_s)
            c.sources.append((compute, link))
            if r == 0:
                c.runs = runs_per_launch(c.prediction.latency_s)
            if probing:
                c.probe_calls = probe_calls(c, ComputeProfile.read(compute[(c.model,
                                                                            c.nproc)]))

    run_cases(cases, out, args.device, args.repeats, progress, args.warmup_runs,
              before_repeat=profile_and_predict)
    if args.pace == "probe":
        for c in cases:
            pace_by_probe(c, args.device)
    pairs = trace_pairs(cases)
    floor = grid_floors(cases, args.pace == "probe")
    rows = result_rows(cases, pairs, floor["p90"])
    families = family_summary(rows)
    elapsed = time.perf_counter() - t0
    outputs = [("--out", out / "validation.csv", lambda p: write_csv(p, rows))]
    if write_validation_report is not None:
        outputs.append(("--out", out / "validation.html", lambda p: write_validation_report(
            p, cases, rows, pairs, op_error_summary(pd.concat(pairs)), elapsed, args,
            families)))
    write_outputs(outputs)  # CSV and HTML together or neither, each complete
    launches = f"{args.repeats} launch{'es' if args.repeats > 1 else ''}"
    errs = pd.Series([r["rel_err"] for r in rows]).abs()
    print(f"{len(rows)} configurations ({args.grid} grid, {launches} each) in "
          f"{elapsed:.0f} s: median |error| {errs.median():.1%}, worst "
          f"{errs.max():.1%} ({row_name(rows[errs.idxmax()])}); wrote {out / 'validation.csv'}")
    for f in families.itertuples():
        print(f"  {f.Index:<13} {f.configs:>2} configurations: median |error| "
              f"{f.median:.1%}, worst {f.worst:.1%} ({row_name(rows[f.worst_row])})")
    mid, widest, at = run_spread(rows)
    print(f"  the runs' own spread (interquartile range over the median run): median "
          f"{mid:.1%}, widest {widest:.1%} ({row_name(rows[at])})")
    print(f"  {summary_line(floor)}")
    errors = [r["rel_err"] for r in rows]
    print(f"  {beyond_line([row_name(r) for r in rows], errors, floor['p90'])}")
    if args.pace == "probe":
        unpaced = pd.Series([r["rel_err_unpaced"] for r in rows]).abs()
        paces = [p for c in cases for p in c.paces]
        print(f"  without the probe (pace of the expected slowest process): median |error| "
              f"{unpaced.median():.1%}, worst {unpaced.max():.1%}; launch paces "
              f"{min(paces):.2f}-{max(paces):.2f}")
    return 0

