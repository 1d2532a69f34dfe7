"""``validation.csv``: one row per configuration with measured and predicted seconds, the
relative error, how much of the loop the ranks spent computing (measured CPU share and
predicted busy share) and the per-op error summary; the error per strategy family."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pandas as pd

from sim.evaluate import Prediction
from sim.schedule import OpKind
from sim.trace import Trace
from validation.compare import join_traces, op_error_summary
from validation.grid import Case

CSV_COLUMNS = ("model", "resolution", "steps", "nproc", "strategy", "patches", "warmup",
               "measured_s", "measured_runs", "measured_iqr", "predicted_s", "rel_err",
               "cpu_share", "predicted_busy_share", "op_errors", "cost_sources", "pace",
               "predicted_unpaced_s", "rel_err_unpaced", "noise_p90")


def busy_share(pred: Prediction) -> float:
    """The fraction of the predicted loop the ranks spend in compute ops, averaged over the
    ranks (the prediction's counterpart of the measured ``cpu_share``)."""
    world = pred.config.gpus
    busy = [0.0] * world
    for r in pred.trace.rows:
        if r.op in OpKind.COMPUTE:
            busy[r.rank] += r.duration_s
    return sum(busy) / world / pred.latency_s


def trace_pairs(cases: list[Case]) -> list[pd.DataFrame]:
    """Per case (measured and predicted), its last measured trace joined op by op with its
    prediction's (``validation.compare.join_traces``)."""
    return [join_traces(Trace.read_csv(c.trace_path), c.prediction.trace) for c in cases]


def result_rows(cases: list[Case], pairs: list[pd.DataFrame],
                noise_p90: list[float]) -> list[dict]:
    """The rows of validation.csv for ``cases`` (measured and predicted) and their ``pairs``
    (``trace_pairs``): seconds; errors as fractions. ``noise_p90``, per case, the |error| a
    perfect model exceeds in a tenth of the bootstrap draws of its launches
    (``validation.noise.floors``)."""
    rows = []
    for c, joined, p90 in zip(cases, pairs, noise_p90):
        meas = statistics.median(c.measured)
        q = statistics.quantiles(c.measured, n=4) if len(c.measured) > 1 else [meas] * 3
        pred = statistics.median(c.predicted)
        unpaced = statistics.median(c.unpaced) if c.unpaced else pred
        per_op = op_error_summary(joined).rel_err
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
            # float(): numpy's round is not Python's (correctly rounded) one.
            "op_errors": json.dumps({k: round(float(v), 4) for k, v in per_op.items()}),
            "cost_sources": json.dumps(c.prediction.cost_sources),
            # --pace probe: each launch's measured pace (executor.pace), and the prediction
            # without it (the expected slowest process); otherwise empty, and the same.
            "pace": json.dumps([round(p, 4) for p in c.paces]),
            "predicted_unpaced_s": unpaced,
            "rel_err_unpaced": unpaced / meas - 1,
            "noise_p90": p90,
        })
    return rows


FAMILIES = ("serial", "pipefusion", "ulysses", "ring", "tensor", "cfg", "distrifusion")


def family_summary(rows: list[dict]) -> pd.DataFrame:
    """Per strategy family present in ``rows`` (``result_rows``), indexed by family in
    ``FAMILIES`` order, then any other: ``configs`` (how many), ``median`` and ``worst``
    absolute relative error (fractions) and ``worst_row``, the index in ``rows`` of the worst
    (the first, on a tie)."""
    table = pd.DataFrame(rows)
    found = set(table.strategy)
    order = [f for f in FAMILIES if f in found] + sorted(found - set(FAMILIES))
    errs = table.rel_err.abs().groupby(table.strategy)
    return errs.agg(configs="size", median="median", worst="max", worst_row="idxmax") \
        .loc[order].rename_axis("family")


def run_spread(rows: list[dict]) -> tuple[float, float, int]:
    """How far apart the measured runs of ``rows`` (``result_rows``) lie: the median and the
    widest ``measured_iqr`` (interquartile range over the median run, a fraction) and the index
    in ``rows`` of the widest (the first, on a tie). An error no larger than a row's own
    spread says little about the model; printed beside the errors so a noisy machine shows."""
    spreads = [r["measured_iqr"] for r in rows]
    widest = max(range(len(spreads)), key=spreads.__getitem__)  # max keeps the first of ties
    return statistics.median(spreads), spreads[widest], widest


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
