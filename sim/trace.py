"""The trace table shared by simulator and executor: one row per executed op.

Columns (DESIGN.md): rank, op, step, patch, layer_first, layer_last, start_s, end_s, nbytes,
peer, source, plus ``tag`` (what a message carried: hidden, text, skip, latent). Times are
seconds from the start of the run. ``op`` is a compute kind, ``send`` or ``recv``; a send row
lasts from its issue to the data's arrival, a receive row from its posting to the arrival.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

COLUMNS = ("rank", "op", "step", "patch", "layer_first", "layer_last", "start_s", "end_s",
           "nbytes", "peer", "source", "tag")
COMM_OPS = ("send", "recv", "wait")


def is_comm(op: str) -> bool:
    """Whether a trace ``op`` is communication (point-to-point, collective or a wait)."""
    return op in COMM_OPS or op.startswith(("all_", "reduce_", "ring_"))


_INT = {"rank", "step", "patch", "layer_first", "layer_last", "nbytes", "peer"}
_FLOAT = {"start_s", "end_s"}


@dataclass
class Trace:
    """Rows of the trace table, each a tuple in ``COLUMNS`` order."""

    rows: list[tuple] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def dicts(self) -> list[dict]:
        """Rows as dicts keyed by column name."""
        return [dict(zip(COLUMNS, r)) for r in self.rows]

    @property
    def end_s(self) -> float:
        """Time the last op ended, seconds."""
        return max((r[7] for r in self.rows), default=0.0)

    def write_csv(self, path: str | Path) -> None:
        """Write the table as CSV with a header row."""
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(COLUMNS)
            for r in sorted(self.rows, key=lambda r: (r[6], r[0])):
                w.writerow(r)

    @classmethod
    def read_csv(cls, path: str | Path) -> Trace:
        """Read a table written by ``write_csv`` (by the simulator or the executor)."""
        rows = []
        with open(path, newline="") as fh:
            for d in csv.DictReader(fh):
                rows.append(tuple(int(d[c]) if c in _INT else float(d[c]) if c in _FLOAT
                                  else d.get(c, "") for c in COLUMNS))
        return cls(rows)

    def to_chrome(self) -> dict:
        """Chrome / Perfetto trace events: pid = rank, tid = compute (0) or comm (1)."""
        events = []
        for d in self.dicts():
            comm = is_comm(d["op"])
            arrow = "->" if d["op"] == "send" else "<-"
            p2p = d["op"] in ("send", "recv")
            name = f"{d['op']} {d['tag']} {arrow} {d['peer']}" if p2p else d["op"]
            events.append({
                "name": name, "ph": "X", "pid": d["rank"], "tid": 1 if comm else 0,
                "ts": d["start_s"] * 1e6, "dur": (d["end_s"] - d["start_s"]) * 1e6,
                "args": {k: d[k] for k in ("step", "patch", "layer_first", "layer_last",
                                           "nbytes", "peer", "source")},
            })
        for rank in sorted({d["rank"] for d in self.dicts()}):
            events.append({"name": "process_name", "ph": "M", "pid": rank,
                           "args": {"name": f"rank {rank}"}})
            for tid, label in ((0, "compute"), (1, "comm")):
                events.append({"name": "thread_name", "ph": "M", "pid": rank, "tid": tid,
                               "args": {"name": label}})
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def write_chrome(self, path: str | Path) -> None:
        """Write the Chrome / Perfetto JSON trace."""
        Path(path).write_text(json.dumps(self.to_chrome()))


def join_traces(measured: Trace, predicted: Trace) -> list[dict]:
    """Pair the rows of two traces of the same schedule on (rank, op, step, patch, layers,
    tag); each pair gives both durations (s) and the relative error of the prediction."""
    def key(r: tuple) -> tuple:
        return (r[0], r[1], r[2], r[3], r[4], r[5], r[11])

    pred = {}
    for r in predicted.rows:
        pred.setdefault(key(r), r)
    out = []
    for r in measured.rows:
        p = pred.get(key(r))
        if p is None:
            continue
        m_d, p_d = r[7] - r[6], p[7] - p[6]
        out.append({"rank": r[0], "op": r[1], "step": r[2], "patch": r[3],
                    "layer_first": r[4], "layer_last": r[5], "tag": r[11],
                    "measured_s": m_d, "predicted_s": p_d,
                    "rel_err": (p_d / m_d - 1) if m_d > 0 else float("nan")})
    return out


def op_error_summary(pairs: list[dict]) -> dict[str, dict[str, float]]:
    """Per op kind: count, summed measured and predicted seconds, relative error of the sums."""
    out: dict[str, dict[str, float]] = {}
    for p in pairs:
        d = out.setdefault(p["op"], {"count": 0, "measured_s": 0.0, "predicted_s": 0.0})
        d["count"] += 1
        d["measured_s"] += p["measured_s"]
        d["predicted_s"] += p["predicted_s"]
    for d in out.values():
        d["rel_err"] = d["predicted_s"] / d["measured_s"] - 1 if d["measured_s"] > 0 else 0.0
    return out
