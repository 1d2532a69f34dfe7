"""What a point-to-point message took in measured runs, by size: the wire time a link profile's
``p2p`` row should hold.

    python benchmarks/message_delays.py OUT [OUT ...] [--json]

Each ``OUT`` is the ``--out`` folder of a ``python -m validation`` run (its ``traces/``) or one
executor trace CSV. For every message whose receiver was already waiting (its ``recv`` row
began before the sender's ``send`` row), the delay is the time from the start of the send to
the end of the receive: what the message cost the run's critical path, the sender's issue and
the receiver's completion included. Per message size it prints the count and the median and
quartiles of the delays (milliseconds). Messages that arrived while their receiver computed
are left out: their delay is hidden in that compute and the trace cannot show it. Exit status
2 with one line when a path holds no trace.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pandas as pd

from sim.cli import run_main
from sim.errors import UserError

# What pairs a send with its receive in one trace (the rank pair is checked apart).
_MATCH = ["step", "patch", "tag", "layer_first"]


def trace_files(paths: list[Path]) -> list[Path]:
    """The trace CSVs of ``paths`` (validation ``--out`` folders or trace files); a
    ``UserError`` naming the first path that holds none."""
    out: list[Path] = []
    for p in paths:
        found = sorted((p / "traces").glob("*.csv")) if p.is_dir() else \
            ([p] if p.suffix == ".csv" and p.is_file() else [])
        if not found:
            raise UserError(f"{p}: no traces; give the --out folder of a python -m validation "
                            f"run (with its traces/) or an executor trace CSV")
        out += found
    return out


def waited_delays(frame: pd.DataFrame) -> dict[int, list[float]]:
    """Seconds from each send's start to its receive's end, by message bytes, over the
    messages of one trace (``sim.trace.Trace`` columns) whose receiver was already waiting."""
    sends = frame[frame.op == "send"]
    recvs = frame[frame.op == "recv"]
    pairs = sends.merge(recvs, on=_MATCH, suffixes=("_s", "_r"))
    pairs = pairs[(pairs.rank_s == pairs.peer_r) & (pairs.rank_r == pairs.peer_s)
                  & (pairs.start_s_r < pairs.start_s_s)]
    out: dict[int, list[float]] = {}
    for n, d in zip(pairs.nbytes_s, pairs.end_s_r - pairs.start_s_s):
        out.setdefault(int(n), []).append(float(d))
    return out


def summary(paths: list[Path]) -> list[dict]:
    """Per message size over every trace of ``paths``: ``nbytes``, ``count`` and the
    ``median_ms``, ``p25_ms``, ``p75_ms`` of the delays of messages waited for."""
    by: dict[int, list[float]] = {}
    for f in trace_files(paths):
        for n, ds in waited_delays(pd.read_csv(f)).items():
            by.setdefault(n, []).extend(ds)
    rows = []
    for n in sorted(by):
        v = sorted(by[n])
        q = statistics.quantiles(v, n=4) if len(v) > 1 else [v[0], v[0], v[0]]
        rows.append({"nbytes": n, "count": len(v), "median_ms": statistics.median(v) * 1e3,
                     "p25_ms": q[0] * 1e3, "p75_ms": q[2] * 1e3})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", type=Path,
                   help="validation --out folders or executor trace CSVs")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    a = p.parse_args(argv)
    rows = summary(a.paths)
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no message was waited for in these traces (none has point-to-point messages, "
              "or every one arrived while its receiver computed)")
        return 0
    print(f"{'bytes':>10s} {'messages':>8s} {'median':>9s} {'p25':>9s} {'p75':>9s}  (ms)")
    for r in rows:
        print(f"{r['nbytes']:10d} {r['count']:8d} {r['median_ms']:9.3f} {r['p25_ms']:9.3f} "
              f"{r['p75_ms']:9.3f}")
    return 0


if __name__ == "__main__":
    run_main(main)
