"""A measured trace and the simulated trace of the same schedule, compared op by op (pandas,
which the validation layer has with the executor's extra)."""

from __future__ import annotations

import pandas as pd

from sim.trace import Trace

# What identifies an op of a schedule in both traces.
KEY = ["rank", "op", "step", "patch", "layer_first", "layer_last", "tag"]


def join_traces(measured: Trace, predicted: Trace) -> pd.DataFrame:
    """One row per measured op that the prediction also ran (paired on ``KEY``; of several
    predicted rows with one key, the first), in the measured trace's order: ``KEY``, the two
    durations ``measured_s`` and ``predicted_s`` (seconds) and ``rel_err``, the prediction's
    relative error (NaN where the measured op took no time).

    >>> from sim.trace import Trace, TraceRow
    >>> m = Trace([TraceRow(0, "blocks", 0, -1, 0, 27, 0.0, 0.5, 0, -1, "measured", "")])
    >>> p = Trace([TraceRow(0, "blocks", 0, -1, 0, 27, 0.1, 0.7, 0, -1, "roofline", "")])
    >>> round(float(join_traces(m, p).loc[0, "rel_err"]), 6)
    0.2
    """
    def durations(trace: Trace, name: str) -> pd.DataFrame:
        f = trace.to_frame()
        return f[KEY].assign(**{name: f.end_s - f.start_s})

    pairs = durations(measured, "measured_s").merge(
        durations(predicted, "predicted_s").drop_duplicates(KEY), on=KEY)
    return pairs.assign(rel_err=(pairs.predicted_s / pairs.measured_s - 1)
                        .where(pairs.measured_s > 0))


def op_error_summary(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per op kind of ``pairs`` (``join_traces``; the index, in order of first appearance):
    ``count``, the summed ``measured_s`` and ``predicted_s`` (seconds) and ``rel_err``, the
    relative error of the sums (0 where nothing was measured)."""
    ops = pairs.groupby("op", sort=False).agg(
        count=("op", "size"), measured_s=("measured_s", "sum"),
        predicted_s=("predicted_s", "sum"))
    return ops.assign(rel_err=(ops.predicted_s / ops.measured_s - 1).where(ops.measured_s > 0,
                                                                             0.0))
