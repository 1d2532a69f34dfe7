"""The simulator's systematic error over many validation runs: what survives the machine's noise.

    python benchmarks/bias.py RUN [RUN ...] [--json]

Each ``RUN`` is the ``--out`` folder of a ``python -m validation`` run on CPU with the
profiles it collected (as ``benchmarks/repredict.py`` takes it; the quick grids shipped in
``docs/validation-*-quick-epyc-*`` are such runs). Every row of every run is predicted again by
the code as it is now, from that run's own profiles, with the default pace, and its signed
relative error against the run's measurement is kept. Per strategy family and model it prints
the number of rows, the median and mean signed error and how many rows came out short.

Why: on a noisy machine one run's row misses by the noise of that run, in either direction;
over many runs a bias of the model shows as a median away from zero with most rows on one
side, a noise-only row as a median near zero with rows on both sides. Exit status 2 with one
line when a folder is not such a run.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from repredict import case_and_profile, run_files

from sim.cli import run_main
from validation.predict import predict_case


def signed_errors(runs: list[Path]) -> dict[tuple[str, str], list[float]]:
    """(family, model) -> signed relative errors of today's prediction against each run's
    measurement, over every row of ``runs``."""
    out: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        table, profiles, link = run_files(run)
        with open(table, newline="") as fh:
            for row in csv.DictReader(fh):
                case, compute = case_and_profile(row, profiles)
                now = predict_case(case, compute, link, "cpu").latency_s
                out.setdefault((row["strategy"], row["model"]), []).append(
                    now / float(row["measured_s"]) - 1)
    return out


def summarise(errors: dict[tuple[str, str], list[float]]) -> list[dict]:
    """One row per (family, model), sorted: ``family``, ``model``, ``rows``, ``median``,
    ``mean`` (signed relative errors) and ``short`` (rows predicted below the measurement)."""
    return [{"family": fam, "model": model, "rows": len(v), "median": statistics.median(v),
             "mean": statistics.fmean(v), "short": sum(x < 0 for x in v)}
            for (fam, model), v in sorted(errors.items())]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="validation --out folders")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    a = p.parse_args(argv)
    rows = summarise(signed_errors(a.runs))
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{len(a.runs)} runs; signed error of today's prediction against each measurement")
    print(f"{'family':13s} {'model':14s} {'rows':>4s} {'median':>8s} {'mean':>8s}  short")
    for r in rows:
        print(f"{r['family']:13s} {r['model']:14s} {r['rows']:4d} {r['median']:+8.1%} "
              f"{r['mean']:+8.1%}  {r['short']}/{r['rows']}")
    return 0


if __name__ == "__main__":
    run_main(main)
