"""What this machine's own noise leaves a perfect model, for validation runs already made.

    python benchmarks/noise_floor.py RUN [RUN ...] [--draws 2000] [--seed 0] [--json]

Each ``RUN`` is the ``--out`` folder of a ``python -m validation`` run that kept its launches'
results (``runs/n<procs>-r<launch>/run-<i>.json``, one per configuration and launch; the grids
shipped under ``docs/`` from 2026-12-02 05:14 UTC keep them). For every run it prints what a
simulator that predicted each configuration exactly would score on that run's own launches
(``validation.noise``: a bootstrap over the launches): per family and over the grid, the
median over draws of the median and worst |error|, and the share of draws that meet issue
11's targets (median <= 5 %, worst <= 15 %); unpaced, and paced by each launch's probe for
runs made with ``--pace probe``. A validation run since 2026-12-02 prints the over-the-grid
line itself. Exit status 2 with one line when a folder is not such a run.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from sim.cli import run_main
from sim.errors import UserError
from validation.noise import DRAWS, Launches, beyond_line, floors
from validation.results import row_name


def _matches(row: dict[str, str], config: dict) -> bool:
    """Whether a launch's ``config`` (as ``executor.run`` records it) is ``row``'s."""
    res = config.get("resolution")
    res = res[0] if isinstance(res, list) else res
    same = (config.get("model") == row["model"] and str(res) == row["resolution"]
            and config.get("strategy") == row["strategy"]
            and str(config.get("warmup")) == row["warmup"])
    return same and (row["strategy"] not in ("serial", "pipefusion")
                     or str(config.get("patches")) == row["patches"])


def read_run(out: Path) -> tuple[list[Launches], list[dict[str, str]]]:
    """The configurations of the validation run in ``out`` with their launches' runs and
    paces, and the rows of its ``validation.csv``; or a ``UserError`` saying what is
    missing."""
    table = out / "validation.csv"
    if not table.is_file():
        raise UserError(f"{out}: no validation.csv; give the --out folder of a finished "
                        f"python -m validation run")
    if not (out / "runs").is_dir():
        raise UserError(f"{out}: no runs/ folder (each launch's results); this run did not "
                        f"keep them, so its launches cannot be told apart")
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    cases = []
    index: dict[str, int] = {}
    for line, r in enumerate(rows, start=2):
        n = r["nproc"]
        i = index[n] = index.get(n, -1) + 1  # a launch runs its process count's rows in order
        runs: list[list[float]] = []
        while (f := out / "runs" / f"n{n}-r{len(runs)}" / f"run-{i}.json").is_file():
            d = json.loads(f.read_text())
            if not _matches(r, d.get("config", {})):
                raise UserError(f"{f} does not hold {row_name(r)} (row {line} of "
                                f"{table}); the folder was changed after the run")
            runs.append([float(x) for x in d["latencies_s"]])
        if not runs:
            raise UserError(f"{out}: no launch of {row_name(r)} (runs/n{n}-r0/run-{i}.json)")
        paces = [float(p) for p in json.loads(r["pace"])] if r.get("pace") else []
        cases.append(Launches.of(row_name(r), r["strategy"], runs, paces))
    return cases, rows


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def report(name: str, result: dict, errors: list[float]) -> str:
    """The text table of one run's ``validation.noise.floors``, with the rows whose error
    (``errors``: the run's own, per row, fractions) stands beyond their scatter."""
    kind = "paced by each launch's probe" if result["paced"] else "one number per row"
    lines = [f"{name}: a perfect model ({kind}), {result['draws']} bootstrap draws of the "
             f"launches",
             f"  {'family':13s} {'rows':>4s} {'median':>7s} {'worst':>7s}   draws meeting "
             f"median<=5% / worst<=15% / both"]
    for fam, s in result["families"].items():
        lines.append(f"  {fam:13s} {s['rows']:4d} {_pct(s['median']):>7s} {_pct(s['worst']):>7s}"
                     f"   {_pct(s['meets_median']):>6s} / {_pct(s['meets_worst']):>6s} / "
                     f"{_pct(s['meets_both']):>6s}")
    top = result["rows_p90"][:5]
    lines.append("  |error| a row exceeds in 10% of draws: "
                 + "; ".join(f"{t['row']} {_pct(t['p90'])}" for t in top))
    lines.append("  " + beyond_line(result["names"], errors, result["p90"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="validation --out folders with runs/")
    p.add_argument("--draws", type=int, default=DRAWS, help=f"bootstrap draws (default {DRAWS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    a = p.parse_args(argv)
    if a.draws < 1:
        raise UserError(f"--draws {a.draws}: give at least 1")
    results: dict[str, dict] = {}
    errors: dict[tuple[str, bool], list[float]] = {}
    for out in a.runs:
        cases, rows = read_run(out)
        # Each perfect model is set beside the run's errors of its kind: the paced
        # prediction's (rel_err of a --pace probe run) or the unpaced one's.
        errors[(str(out), True)] = [float(r["rel_err"]) for r in rows]
        errors[(str(out), False)] = [float(r.get("rel_err_unpaced") or r["rel_err"])
                                     for r in rows]
        results[str(out)] = {"unpaced": floors(cases, False, a.draws, a.seed)}
        if all(c.paces for c in cases):
            results[str(out)]["paced"] = floors(cases, True, a.draws, a.seed)
    if a.json:
        print(json.dumps(results, indent=1))
        return 0
    print("\n\n".join(report(out, res, errors[(out, res["paced"])])
                      for out, by in results.items() for res in by.values()))
    return 0


if __name__ == "__main__":
    run_main(main)
