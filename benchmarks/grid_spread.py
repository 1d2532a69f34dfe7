"""How far the same configuration's measurement moves between validation runs of one machine,
and the errors that leaves any prediction.

    python benchmarks/grid_spread.py RUN RUN [RUN ...] [--json]

Each ``RUN`` is the ``--out`` folder of a ``python -m validation`` run (or its
``validation.csv``), e.g. the quick grids shipped in ``docs/validation-*-quick-epyc-*``. The
runs should share the executor's code and the machine: then a configuration's measured
latency differs between them only by the machine's own noise.

For every configuration measured in two runs or more it prints its measured latencies (each
run's median over its launches), their spread (largest over smallest, minus one) and the
**floor**: the smallest worst-case relative error any single number can have against all of
them, ``(max - min) / (max + min)``, reached by the number ``2 max min / (max + min)``. A
deterministic simulator predicts one number per configuration, so on some run it is off by at
least the floor, however good its model.

Per run it then scores the **median oracle**, a predictor that knew every run's measurement and
answers each configuration with their median (in-sample, so its errors are a lower bound of
what a model fitted to nothing could do), beside the run's own prediction (``predicted_s``):
median and worst |error| over the run's rows, all rows and per family, as ``python -m
validation`` reports them. Exit status 2 with one line when a run is not a validation output.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from sim.cli import run_main
from sim.errors import UserError

KEY = ("model", "resolution", "nproc", "strategy", "patches", "warmup")
NEEDED = (*KEY, "measured_s", "predicted_s")


def read_run(path: Path) -> dict[tuple[str, ...], tuple[float, float]]:
    """(measured, predicted) seconds by configuration of one validation run (a ``--out``
    folder or its ``validation.csv``)."""
    table = path / "validation.csv" if path.is_dir() else path
    if not table.is_file():
        raise UserError(f"{path}: no validation.csv there; give the --out folder of a "
                        f"python -m validation run or its validation.csv")
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = [c for c in NEEDED if rows and c not in rows[0]]
    if not rows or missing:
        raise UserError(f"{table}: not a validation table (no rows, or no column "
                        f"{', '.join(missing)})")
    out = {}
    for r in rows:
        try:
            out[tuple(r[k] for k in KEY)] = (float(r["measured_s"]), float(r["predicted_s"]))
        except ValueError as e:
            raise UserError(f"{table}: a row's measured_s or predicted_s is not a number "
                            f"({e})") from e
    return out


def floor(values: list[float]) -> float:
    """Smallest worst relative error one number can have against all of ``values``."""
    lo, hi = min(values), max(values)
    return (hi - lo) / (hi + lo)


def name(key: tuple[str, ...]) -> str:
    """``pixart-tiny 256px n=2 tensor M=1 W=1``."""
    model, res, n, strategy, m, w = key
    return f"{model} {res}px n={n} {strategy} M={m} W={w}"


def summarize(errors: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Median and worst |error| of every family in ``errors`` and of all of them."""
    every = [e for es in errors.values() for e in es]
    out = {}
    for fam, es in [("all", every), *sorted(errors.items())]:
        a = [abs(e) for e in es]
        out[fam] = {"rows": len(a), "median": statistics.median(a), "worst": max(a)}
    return out


def analyse(runs: dict[str, dict[tuple[str, ...], tuple[float, float]]]) -> dict:
    """The per-configuration spread and floor, and per run the median oracle's and the run's
    own prediction's errors (``summarize``), over the configurations two or more runs share."""
    keys = sorted({k for r in runs.values() for k in r})
    configs = []
    oracle: dict[tuple[str, ...], float] = {}
    for k in keys:
        meas = [r[k][0] for r in runs.values() if k in r]
        if len(meas) < 2:
            continue
        oracle[k] = statistics.median(meas)
        configs.append({"configuration": name(k), "family": k[3], "runs": len(meas),
                        "measured_s": meas, "spread": max(meas) / min(meas) - 1,
                        "floor": floor(meas)})
    if not configs:
        raise UserError("the runs share no configuration; give runs of the same grid")
    per_run = {}
    for label, r in runs.items():
        med: dict[str, list[float]] = {}
        own: dict[str, list[float]] = {}
        for k, (meas, pred) in r.items():
            if k in oracle:
                med.setdefault(k[3], []).append(oracle[k] / meas - 1)
                own.setdefault(k[3], []).append(pred / meas - 1)
        per_run[label] = {"median_oracle": summarize(med), "own_prediction": summarize(own)}
    return {"configurations": configs, "runs": per_run}


def _pct(x: float) -> str:
    return f"{100 * x:5.1f} %"


def report(result: dict) -> str:
    """The text ``main`` prints."""
    lines = [f"{'configuration':44s} runs  {'measured (ms)':>14s}  spread   floor"]
    configs = sorted(result["configurations"], key=lambda c: -c["floor"])
    for c in configs:
        ms = c["measured_s"]
        lines.append(f"{c['configuration']:44s} {c['runs']:4d}  {1e3 * min(ms):6.1f}-"
                     f"{1e3 * max(ms):<7.1f} {_pct(c['spread'])} {_pct(c['floor'])}")
    floors = [c["floor"] for c in configs]
    lines.append(f"floor over {len(floors)} configurations: median "
                 f"{_pct(statistics.median(floors))}, worst {_pct(max(floors))}; above 10 %: "
                 f"{sum(f > 0.10 for f in floors)}, above 15 %: {sum(f > 0.15 for f in floors)}")
    lines.append("")
    lines.append("per run, median / worst |error| of the median oracle -> of the run's own "
                 "prediction:")
    for label, r in result["runs"].items():
        lines.append(f"  {label}")
        for fam, o in r["median_oracle"].items():
            p = r["own_prediction"][fam]
            lines.append(f"    {fam:13s} {o['rows']:2d} rows: {_pct(o['median'])} / "
                         f"{_pct(o['worst'])} -> {_pct(p['median'])} / {_pct(p['worst'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path,
                   help="validation --out folders (or their validation.csv), two or more")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    a = p.parse_args(argv)
    if len(a.runs) < 2:
        raise UserError("give two validation runs or more: a spread needs two measurements")
    runs = {}
    for path in a.runs:
        label = (path if path.is_dir() else path.parent).name or str(path)
        if label in runs:
            raise UserError(f"{path}: run {label} given twice")
        runs[label] = read_run(path)
    result = analyse(runs)
    print(json.dumps(result, indent=1) if a.json else report(result))
    return 0


if __name__ == "__main__":
    run_main(main)
