"""The trace table shared by simulator and executor: one row per executed op.

Columns (``TraceRow``): rank, op, step, patch, layer_first, layer_last, start_s, end_s, nbytes,
peer, source, plus ``tag`` (what a message carried: hidden, text, skip, latent). Times are
seconds from the start of the run. ``op`` is an ``OpKind``: a compute kind, ``send``, ``recv``,
a collective or ``wait``; a send row lasts from its issue to the data's arrival, a receive row
from its posting to the arrival.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

from sim.errors import UserError
from sim.schedule import Compute, OpKind, Tag

# The generated ``__new__`` of a NamedTuple parses its arguments in Python; the builders below
# fill every field themselves, and the planner builds hundreds of thousands of rows.
_new_row = tuple.__new__


class TraceRow(NamedTuple):
    """One executed op. A plain tuple underneath (CSV rows, pickling between processes);
    build one with ``for_compute`` or ``for_message``, the builders engine and executor share."""

    rank: int
    op: str  # an ``OpKind``; an asynchronous collective's adds ``OpKind.ASYNC_SUFFIX``
    step: int
    patch: int
    layer_first: int
    layer_last: int
    start_s: float
    end_s: float
    nbytes: int  # bytes this rank sent (receives: bytes that arrived)
    peer: int  # the other rank of a send or receive, else -1
    source: str  # where the duration came from: a cost source, "model" or "measured"
    tag: str  # ``Tag.what`` of a message or collective, "" for compute

    @classmethod
    def for_compute(cls, rank: int, op: Compute, start_s: float, end_s: float,
                    source: str) -> TraceRow:
        """The row of compute ``op`` on ``rank``, run from ``start_s`` to ``end_s`` (s)."""
        first, last = op.layers
        return _new_row(cls, (rank, op.kind, op.step, op.patch, first, last, start_s, end_s,
                              0, -1, source, ""))

    @classmethod
    def for_message(cls, rank: int, op: str, tag: Tag, start_s: float, end_s: float,
                    nbytes: int = 0, peer: int = -1, source: str = "model") -> TraceRow:
        """The row of communication ``op`` (send, receive, collective or wait) of ``tag`` on
        ``rank``, from ``start_s`` to ``end_s`` (s), moving ``nbytes`` bytes to or from
        ``peer``."""
        layer = tag.layer
        return _new_row(cls, (rank, op, tag.step, tag.patch, layer, layer, start_s, end_s,
                              nbytes, peer, source, tag.what))

    @property
    def duration_s(self) -> float:
        """``end_s - start_s``, seconds."""
        return self.end_s - self.start_s

    def on_rank(self, rank: int, peer: int | None = None) -> TraceRow:
        """This row as run by ``rank`` (a mirror rank's copy of its representative's), with
        ``peer`` as the other end of a message when given."""
        if peer is None:
            return _new_row(TraceRow, (rank, *self[1:]))
        return _new_row(TraceRow, (rank, *self[1:9], peer, *self[10:]))

    def shifted(self, dt: float, step: int) -> TraceRow:
        """This row moved ``dt`` seconds later and relabelled as step ``step``."""
        rank, op, _, patch, first, last, start, end, nbytes, peer, source, tag = self
        return _new_row(TraceRow, (rank, op, step, patch, first, last, start + dt, end + dt,
                                   nbytes, peer, source, tag))


COLUMNS = TraceRow._fields
# A row's end read in C (``max`` over every row of a trace, once per prediction or more).
_END_S = itemgetter(TraceRow._fields.index("end_s"))

_COMM = frozenset((OpKind.SEND, OpKind.RECV, OpKind.WAIT) + OpKind.COLLECTIVES
                  + tuple(k + OpKind.ASYNC_SUFFIX for k in OpKind.COLLECTIVES))


def is_comm(op: str) -> bool:
    """Whether a trace ``op`` is communication (point-to-point, collective or a wait)."""
    return op in _COMM


_INT = {"rank", "step", "patch", "layer_first", "layer_last", "nbytes", "peer"}
_FLOAT = {"start_s", "end_s"}
_OPTIONAL = {"tag"}  # traces written before messages carried a tag
# Smallest valid value of each integer column: -1 marks "none" (no peer; the text encoder's
# step and patch, which precede the loop).
_INT_MIN = {"rank": 0, "step": -1, "patch": -1, "layer_first": -1, "layer_last": -1,
            "nbytes": 0, "peer": -1}


def _parse_row(d: dict[str, str | None], where: str) -> TraceRow:
    """One CSV row as a ``TraceRow``; ``UserError`` starting with ``where`` for a bad value."""
    values: list[Any] = []
    for c in COLUMNS:
        text = d.get(c)
        if c in _INT:
            try:
                v: Any = int(text)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise UserError(f"{where}, column '{c}': {text!r} is not a whole number; the "
                                f"trace is refused") from None
            if v < _INT_MIN[c]:
                raise UserError(f"{where}, column '{c}': {v} is below {_INT_MIN[c]}; the "
                                f"trace is refused")
        elif c in _FLOAT:
            try:
                v = float(text)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise UserError(f"{where}, column '{c}': {text!r} is not a number; the trace "
                                f"is refused") from None
            if not math.isfinite(v) or v < 0:
                raise UserError(f"{where}, column '{c}': {text} is not a finite time >= 0 s; "
                                f"the trace is refused")
        else:
            v = text or ""
        values.append(v)
    row = TraceRow._make(values)
    if row.end_s < row.start_s:
        raise UserError(f"{where}: end_s {row.end_s:g} s is before start_s {row.start_s:g} s; "
                        f"the trace is refused")
    return row


@dataclass
class Trace:
    """The rows of the trace table."""

    rows: list[TraceRow] = field(default_factory=list)
    # (rank, step) -> seconds the rank's CPU had issued ahead of its GPU when the step's
    # first op came up (negative: the GPU waited for it). Filled by the engine's host clock.
    cpu_ahead: dict[tuple[int, int], float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def to_frame(self) -> Any:
        """The rows as a ``pandas.DataFrame``, one column per field of ``TraceRow`` (times
        in seconds); pandas is imported only here (``pip install 'ditsim[api]'``).

        >>> from sim.trace import Trace, TraceRow
        >>> row = TraceRow(0, "blocks", 0, -1, 0, 27, 0.0, 0.25, 0, -1, "roofline", "")
        >>> Trace([row]).to_frame().loc[0, "op"], float(Trace([row]).to_frame().loc[0, "end_s"])
        ('blocks', 0.25)
        """
        from sim.frames import data_frame

        return data_frame(self.rows, COLUMNS)

    def dicts(self) -> list[dict]:
        """Rows as dicts keyed by column name."""
        return [dict(zip(COLUMNS, r)) for r in self.rows]

    @property
    def end_s(self) -> float:
        """Time the last op ended, seconds."""
        return max(map(_END_S, self.rows), default=0.0)

    def write_csv(self, path: str | Path) -> None:
        """Write the table as CSV with a header row."""
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(COLUMNS)
            for r in sorted(self.rows, key=lambda r: (r.start_s, r.rank)):
                w.writerow(r)

    @classmethod
    def read_csv(cls, path: str | Path) -> Trace:
        """Read a table written by ``write_csv`` (by the simulator or the executor). Raises
        ``UserError`` naming the file, the row and the column of the first value that is
        missing, not a number, not finite or out of range (a negative time or count, an end
        before its start): a corrupted trace is refused whole, never joined in part."""
        rows = []
        try:
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                missing = [c for c in COLUMNS if c not in _OPTIONAL and c not in
                           (reader.fieldnames or ())]
                if missing:
                    raise UserError(f"{path}: not a trace CSV (no column "
                                    f"{', '.join(missing)}); the trace is refused")
                for n, d in enumerate(reader, 1):
                    rows.append(_parse_row(d, f"{path}, row {n} (line {reader.line_num})"))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise UserError(f"cannot read trace {path}: {e}") from None
        return cls(rows)

    def to_chrome(self) -> dict:
        """Chrome / Perfetto trace events: pid = rank, tid = compute (0) or comm (1)."""
        events = []
        for d in self.dicts():
            comm = is_comm(d["op"])
            arrow = "->" if d["op"] == OpKind.SEND else "<-"
            p2p = d["op"] in (OpKind.SEND, OpKind.RECV)
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


def simulated_rows(trace: Trace) -> list[TraceRow]:
    """The rows of ``trace`` but the copies a ``CopiedTrace`` builds on demand: every
    distinct time of the run is among them."""
    return trace.simulated if isinstance(trace, CopiedTrace) else trace.rows


class CopiedTrace(Trace):
    """A simulated trace in which some ranks ran copies of a representative's ops (the
    engine simulates mirror ranks and shifted images once, ``sim.engine.simulate``): their
    rows, the representative's relabelled, are built only when someone reads ``rows``.
    Latency, metrics and the periodic check read ``simulated`` and ``copies`` instead; a
    copied row has its representative's times, so they come out the same.

    ``rows`` are ``simulated`` followed, for each row of ``source`` (the tail of
    ``simulated`` that the copies are made of) whose rank has copies, by one row per copy
    ``(rank, perm)``: on ``rank``, with ``perm[peer]`` as its peer (``perm`` None: the same
    peer). Ranks of ``split`` also have rows of their own in ``simulated`` (images whose ops
    differ from some op on: only the first part is a copy)."""

    def __init__(self, simulated: list[TraceRow], source: list[TraceRow],
                 copies: dict[int, list[tuple[int, list[int] | None]]],
                 split: frozenset[int], cpu_ahead: dict[tuple[int, int], float]) -> None:
        # ``rows`` is deliberately not set: __getattr__ builds it on first use.
        self.simulated = simulated
        self.source = source
        self.copies = copies
        self.split = split
        self.cpu_ahead = cpu_ahead

    def __getattr__(self, name: str) -> object:
        if name == "rows":
            rows = self.simulated + self._copied()
            self.__dict__["rows"] = rows
            return rows
        raise AttributeError(name)

    def __reduce__(self) -> tuple:  # pickle the recipe, not the rows
        return (CopiedTrace, (self.simulated, self.source, self.copies, self.split,
                              self.cpu_ahead))

    def _copied(self, only: frozenset[int] | None = None) -> list[TraceRow]:
        """The copied rows, in order (those of the copies in ``only`` alone, when given)."""
        copies, new = self.copies, _new_row
        out: list[TraceRow] = []
        for row in self.source:
            for rank, perm in copies.get(row.rank, ()):
                if only is not None and rank not in only:
                    continue
                if perm is None or row.peer < 0:
                    out.append(new(TraceRow, (rank, *row[1:])))
                else:
                    out.append(new(TraceRow, (rank, *row[1:9], perm[row.peer], *row[10:])))
        return out

    def __len__(self) -> int:
        return len(self.simulated) + sum(len(self.copies.get(r.rank, ())) for r in self.source)

    @property
    def end_s(self) -> float:
        return max(map(_END_S, self.simulated), default=0.0)


class ExtendedTrace(Trace):
    """The trace of a run whose steady steps repeat: a short run's rows plus how to extend
    them, materialised into ``rows`` only when someone reads them (metrics, ``end_s`` and
    source counts work on the short rows directly, so the planner never builds them).

    The short run has steps ``0..step`` with ``step`` a steady step, then a tail of one step
    or more that ends the run; the full run repeats ``step`` ``copies`` more times, each
    ``period`` seconds after the one before, and relabels each tail step ``s`` as ``s +
    copies`` (every step after ``step`` moves by ``copies * period``).
    Rows outside the loop (step -1) but the text encode come after the loop, so they move
    by ``copies * period`` too."""

    def __init__(self, short: Trace, step: int, copies: int, period: float) -> None:
        # ``rows`` is deliberately not set: __getattr__ builds it on first use.
        self.short = short
        self.cpu_ahead = short.cpu_ahead
        self.step = step
        self.copies = copies
        self.period = period

    def __getattr__(self, name: str) -> object:
        if name == "rows":
            rows = self._extend()
            self.__dict__["rows"] = rows
            return rows
        raise AttributeError(name)

    def __reduce__(self) -> tuple:  # pickle the recipe, not the rows
        return (ExtendedTrace, (self.short, self.step, self.copies, self.period))

    def shift(self, row: TraceRow) -> float:
        """Seconds by which ``row`` of the short run moves in the full run (its last copy,
        for rows of the repeated step)."""
        s = row.step
        if s >= self.step or (s < 0 and row.op != OpKind.TEXT_ENCODE):
            return self.copies * self.period
        return 0.0

    def weight(self, row: TraceRow) -> int:
        """How many rows of the full run ``row`` of the short run stands for."""
        return 1 + self.copies if row.step == self.step else 1

    @property
    def end_s(self) -> float:
        # ``shift`` inlined: this runs on every row of every prediction.
        b, text = self.step, OpKind.TEXT_ENCODE
        rows = simulated_rows(self.short)
        still = max((r.end_s for r in rows if 0 <= r.step < b or r.op == text), default=None)
        moved = max((r.end_s for r in rows if r.step >= b or (r.step < 0 and r.op != text)),
                    default=None)
        ends = [e for e in (still, None if moved is None else moved + self.copies * self.period)
                if e is not None]
        return max(ends, default=0.0)

    def __len__(self) -> int:
        return sum(map(self.weight, self.short.rows))

    def _extend(self) -> list[TraceRow]:
        b, extra, period = self.step, self.copies, self.period
        by_step: dict[int, list[TraceRow]] = {}
        for r in self.short.rows:
            by_step.setdefault(r.step, []).append(r)
        rows = [r for r in self.short.rows if 0 <= r.step <= b or r.op == OpKind.TEXT_ENCODE]
        for k in range(1, extra + 1):
            rows.extend(r.shifted(k * period, b + k) for r in by_step[b])
        for s in sorted(t for t in by_step if t > b):  # the tail, after the copies
            rows.extend(r.shifted(extra * period, s + extra) for r in by_step[s])
        rows.extend(r.shifted(extra * period, -1) for r in by_step.get(-1, [])
                    if r.op != OpKind.TEXT_ENCODE)
        return rows

