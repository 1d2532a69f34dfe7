"""``validation.csv``: one row per configuration with measured and predicted seconds, the
relative error, how much of the loop the ranks spent computing (measured CPU share and
predicted busy share) and the per-op error summary; the error per strategy family."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from sim.evaluate import Prediction
from sim.schedule import OpKind
from sim.trace import Trace, join_traces, op_error_summary
from validation.grid import Case

CSV_COLUMNS = ("model", "resolution", "steps", "nproc", "strategy", "patches", "warmup",
               "measured_s", "measured_runs", "measured_iqr", "predicted_s", "rel_err",
               "cpu_share", "predicted_busy_share", "op_errors", "cost_sources")


def busy_share(pred: Prediction) -> float:
    """The fraction of the predicted loop the ranks spend in compute ops, averaged over the
    ranks (the prediction's counterpart of the measured ``cpu_share``)."""
    world = pred.config.gpus
    busy = [0.0] * world
    for r in pred.trace.rows:
        if r.op in OpKind.COMPUTE:
            busy[r.rank] += r.duration_s
    return sum(busy) / world / pred.latency_s


def result_rows(cases: list[Case]) -> list[dict]:
    """The rows of validation.csv for ``cases`` (measured and predicted): seconds; errors as
    fractions."""
    rows = []
    for c in cases:
        meas = statistics.median(c.measured)
        q = statistics.quantiles(c.measured, n=4) if len(c.measured) > 1 else [meas] * 3
        pred = statistics.median(c.predicted)
        summary = op_error_summary(join_traces(Trace.read_csv(c.trace_path),
                                               c.prediction.trace))
        rows.append({
            "model": c.model, "resolution": c.resolution, "steps": c.steps, "nproc": c.nproc,
            "strategy": c.family, "patches": c.patches, "warmup": c.warmup, "measured_s": meas,
            "measured_runs": len(c.measured),
            # Interquartile range of the measured runs over their median: how far apart the
            # middle half of the runs lie (the extremes of 30 short runs say little).
            "measured_iqr": (q[2] - q[0]) / meas,
            "predicted_s": pred, "rel_err": pred / meas - 1,
            # Compute-thread CPU seconds over loop seconds (median over launches): below the
            # predicted busy share, the ranks lost time not computing (waiting for data, or
            # runnable while other threads held the cores); above it, compute ran longer.
            "cpu_share": statistics.median(c.cpu_share) if c.cpu_share else float("nan"),
            "predicted_busy_share": busy_share(c.prediction),
            "op_errors": json.dumps({k: round(v["rel_err"], 4) for k, v in summary.items()}),
            "cost_sources": json.dumps(c.prediction.cost_sources),
        })
    return rows


FAMILIES = ("serial", "pipefusion", "ulysses", "ring", "tensor", "cfg", "distrifusion")


def family_summary(rows: list[dict]) -> list[dict]:
    """Per strategy family present in ``rows`` (``result_rows``; ``FAMILIES`` order, then any
    other): its configuration count, median and worst absolute relative error (fractions),
    and the row of the worst."""
    out = []
    names = [f for f in FAMILIES if any(r["strategy"] == f for r in rows)]
    names += sorted({r["strategy"] for r in rows} - set(names))
    for name in names:
        mine = [r for r in rows if r["strategy"] == name]
        errs = [abs(r["rel_err"]) for r in mine]
        out.append({"family": name, "configs": len(mine), "median": statistics.median(errs),
                    "worst": max(errs), "worst_row": mine[errs.index(max(errs))]})
    return out


def row_name(r: dict) -> str:
    """A result row for people: ``pixart-tiny 256px n=2 M=4`` or ``pixart-small 512px
    ulysses2``."""
    where = f"{r['model']} {r['resolution']}px"
    if r["strategy"] in ("serial", "pipefusion"):
        return f"{where} n={r['nproc']} M={r['patches']} W={r['warmup']}"
    return f"{where} {r['strategy']}{r['nproc']}"


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` (``result_rows``) as validation.csv to ``path`` (the caller makes the
    write atomic)."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerows(rows)
