"""``validation.csv``: one row per configuration with measured and predicted seconds, the
relative error and the per-op error summary."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from sim.trace import Trace, join_traces, op_error_summary
from validation.grid import Case

CSV_COLUMNS = ("model", "resolution", "steps", "nproc", "ulysses", "patches", "warmup",
               "measured_s",
               "measured_runs", "measured_iqr", "predicted_s", "rel_err", "op_errors",
               "cost_sources")


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
            "ulysses": c.ulysses, "patches": c.patches, "warmup": c.warmup, "measured_s": meas,
            "measured_runs": len(c.measured),
            # Interquartile range of the measured runs over their median: how far apart the
            # middle half of the runs lie (the extremes of 30 short runs say little).
            "measured_iqr": (q[2] - q[0]) / meas,
            "predicted_s": pred, "rel_err": pred / meas - 1,
            "op_errors": json.dumps({k: round(v["rel_err"], 4) for k, v in summary.items()}),
            "cost_sources": json.dumps(c.prediction.cost_sources),
        })
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` (``result_rows``) as validation.csv to ``path`` (the caller makes the
    write atomic)."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerows(rows)
