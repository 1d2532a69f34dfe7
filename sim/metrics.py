"""Metrics derived from a trace: latency and its split, busy and bubble fractions, exposed
communication, bytes per step. Works on simulated and measured traces alike (seconds, bytes).

Exposed communication is time a rank is held by data on the wire: the in-flight part of each
receive, every blocking collective, and every wait on an asynchronous one. Bubbles are the
rest of its idle time (waiting for work that has not been done yet)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import reduce
from itertools import groupby
from operator import add as add_float
from operator import itemgetter

from sim.cost.base import SOURCES
from sim.schedule import OpKind
from sim.trace import CopiedTrace, ExtendedTrace, Trace, TraceRow


@dataclass
class Metrics:
    """What a run cost. Fractions are of ``world_size x loop_s``; bytes per step are those a
    rank sends in one steady-state step (pipelined, not the last)."""

    latency_s: float
    text_encode_s: float
    loop_s: float
    vae_decode_s: float
    busy_fraction: list[float]
    bubble_fraction: float
    exposed_comm_s: list[float]
    bytes_per_step: list[int]

    @property
    def comm_bytes_per_step(self) -> int:
        """Bytes sent in one steady-state step by the busiest rank."""
        return max(self.bytes_per_step, default=0)

    def as_dict(self) -> dict:
        return {
            "latency_s": self.latency_s,
            "text_encode_s": self.text_encode_s,
            "loop_s": self.loop_s,
            "vae_decode_s": self.vae_decode_s,
            "busy_fraction": self.busy_fraction,
            "bubble_fraction": self.bubble_fraction,
            "exposed_comm_s": max(self.exposed_comm_s, default=0.0),
            "exposed_comm_s_per_rank": self.exposed_comm_s,
            "bytes_per_step_per_rank": self.bytes_per_step,
            "comm_bytes_per_step": self.comm_bytes_per_step,
        }


def compute_metrics(trace: Trace, world_size: int, steps: int, warmup: int) -> Metrics:
    """Metrics of ``trace`` for a run of ``steps`` steps of which ``warmup`` synchronous. An
    ``ExtendedTrace`` is measured on its short rows, each repeated row counted as often as it
    repeats, and a ``CopiedTrace`` on its simulated rows, a copied rank taking its
    representative's sums (the same sums as over the full rows, without building them)."""
    short = trace.short if isinstance(trace, ExtendedTrace) else trace
    repeated, copies = (trace.step, trace.copies) if isinstance(trace, ExtendedTrace) \
        else (None, 0)
    # The VAE decode is summed over every rank: a copied one is left to the full rows.
    copied = short if isinstance(short, CopiedTrace) and not (
        OpKind.VAE_DECODE in map(_OP, short.source) and any(
            op == OpKind.VAE_DECODE and rank in short.copies
            for rank, op in map(_RANK_OP, short.source))) else None
    latency = trace.end_s
    text_end = 0.0
    vae = 0
    busy = [0.0] * world_size
    exposed = [0.0] * world_size
    send_start: dict[tuple, float] = {}
    recvs: list[TraceRow] = []
    sent_by_step: dict[tuple[int, int], int] = defaultdict(int)
    kinds = _KINDS
    repeats = 1 + copies  # the weight of a row of the repeated step

    def add(rows: list[TraceRow]) -> None:
        """Each row's share of the sums, each row's op looked up once: this runs over every
        row of every planner candidate's trace. The sums add the same terms in the same
        (row) order as a loop per quantity would, so they are the same floats."""
        nonlocal text_end, vae
        # Fields by index (``TraceRow`` order: rank 0, op 1, step 2, patch 3, layer_first 4,
        # start_s 6, end_s 7, nbytes 8, peer 9, tag 11), read only where a kind needs them:
        # unpacking every field of every row cost a quarter of this loop.
        for row in rows:
            op = row[1]
            kind = kinds.get(op)
            if kind is None:  # a kind this module does not know: compute, or asynchronous
                kind = _ASYNC if op.endswith(OpKind.ASYNC_SUFFIX) else _BUSY
            if kind == _BUSY:
                busy[row[0]] += (row[7] - row[6]) * (repeats if row[2] == repeated else 1)
            elif kind == _BLOCKING:
                # A blocking collective holds its rank while its data is on the wire.
                rank = row[0]
                sent_by_step[(rank, row[2])] += row[8]
                exposed[rank] += (row[7] - row[6]) * (repeats if row[2] == repeated else 1)
            elif kind == _SEND:
                rank, _, step, patch, layer, _, start, _, nbytes, peer, _, tag = row
                send_start[(rank, peer, step, patch, layer, tag)] = start
                sent_by_step[(rank, step)] += nbytes
            elif kind == _RECV:
                recvs.append(row)
            elif kind == _ASYNC:
                sent_by_step[(row[0], row[2])] += row[8]
            elif kind == _WAIT:
                exposed[row[0]] += (row[7] - row[6]) * (repeats if row[2] == repeated else 1)
            elif kind == _TEXT:
                if row[7] > text_end:
                    text_end = row[7]
            elif kind == _VAE:
                vae += row[7] - row[6]

    if copied is None:
        add(short.rows)
    else:
        add(copied.simulated)
        # A copy's rows are its representative's rows of ``source``, relabelled. Where they
        # are all its rows, the copy has the representative's sums so far; an image with
        # rows of its own (``split``) goes on adding the representative's terms, in order,
        # to its own sums (``reduce`` adds left to right, as the loop would). Messages are
        # listed, relabelled, for the receives' exposure below.
        # Each representative's rows, in order (a stable sort by rank, in C, instead of a
        # pass over every row per representative).
        by_rank = {rank: list(rows) for rank, rows in groupby(sorted(copied.source, key=_RANK),
                                                             _RANK)}
        for rep, members in copied.copies.items():
            rows = by_rank.get(rep, [])
            messages = [row for row in rows if row[1] in _P2P]
            if any(m in copied.split for m, _ in members):
                busy_terms, exposed_terms, sent = _terms(rows, repeated, copies)
            for m, perm in members:
                if m in copied.split:
                    busy[m] = reduce(add_float, busy_terms, busy[m])
                    exposed[m] = reduce(add_float, exposed_terms, exposed[m])
                    for step, n in sent.items():
                        sent_by_step[(m, step)] += n
                else:
                    busy[m], exposed[m] = busy[rep], exposed[rep]
                    for (rank, step), n in list(sent_by_step.items()):
                        if rank == rep:
                            sent_by_step[(m, step)] = n
                for row in messages:
                    peer = row.peer if perm is None else perm[row.peer]
                    if row.op == OpKind.SEND:
                        send_start[(m, peer, row.step, row.patch, row.layer_first,
                                    row.tag)] = row.start_s
                    else:
                        recvs.append(row.on_rank(m, peer))
    for rank, _, step, patch, layer, _, start, end, _, peer, _, tag in recvs:
        s = send_start.get((peer, rank, step, patch, layer, tag))
        # ``max(start, s)`` and ``max(0.0, ...)`` as comparisons (the same values, no call).
        in_flight_from = s if s is not None and s > start else start
        wire = end - in_flight_from
        exposed[rank] += (wire if wire > 0.0 else 0.0) * (repeats if step == repeated else 1)
    loop = max(latency - text_end - vae, 1e-30)
    idle = sum(loop - b - e for b, e in zip(busy, exposed))
    # The repeated step's copies send what it sends: the short run's steady steps have the
    # same maximum as the full run's.
    run_steps = steps - copies
    steady = [t for t in range(warmup, run_steps - 1)] or list(range(run_steps))
    per_step = [max((sent_by_step.get((rank, t), 0) for t in steady), default=0)
                for rank in range(world_size)]
    return Metrics(
        latency_s=latency, text_encode_s=text_end, loop_s=loop, vae_decode_s=vae,
        busy_fraction=[b / loop for b in busy],
        bubble_fraction=max(0.0, idle / (world_size * loop)),
        exposed_comm_s=exposed, bytes_per_step=per_step,
    )


def _terms(rows: list[TraceRow], repeated: int | None, copies: int
           ) -> tuple[list[float], list[float], dict[int, int]]:
    """What ``rows`` add to their rank's busy and exposed sums (before receives), in order,
    and bytes sent per step (as ``compute_metrics`` counts them; no VAE row among them)."""
    busy: list[float] = []
    exposed: list[float] = []
    sent: dict[int, int] = defaultdict(int)
    repeats = 1 + copies
    for row in rows:  # fields by index, as in ``compute_metrics``
        op = row[1]
        kind = _KINDS.get(op)
        if kind is None:
            kind = _ASYNC if op.endswith(OpKind.ASYNC_SUFFIX) else _BUSY
        if kind == _BUSY:
            busy.append((row[7] - row[6]) * (repeats if row[2] == repeated else 1))
        elif kind == _BLOCKING or kind == _WAIT:
            if kind == _BLOCKING:
                sent[row[2]] += row[8]
            exposed.append((row[7] - row[6]) * (repeats if row[2] == repeated else 1))
        elif kind == _SEND or kind == _ASYNC:
            sent[row[2]] += row[8]
    return busy, exposed, sent


_OP = itemgetter(1)
_RANK = itemgetter(0)
# ``compute_metrics`` and ``_terms`` read rows by index: the fields where they expect them.
assert TraceRow._fields[:4] == ("rank", "op", "step", "patch") and \
    TraceRow._fields[6:9] == ("start_s", "end_s", "nbytes")
_RANK_OP = itemgetter(0, 1)
_P2P = frozenset((OpKind.SEND, OpKind.RECV))


# What each trace ``op`` adds to (``compute_metrics``): compute keeps its rank busy, a
# blocking collective or a wait exposes communication, an asynchronous collective or a send
# counts bytes, a receive's exposure is worked out once its send is known.
_BUSY, _BLOCKING, _SEND, _RECV, _ASYNC, _WAIT, _TEXT, _VAE = range(8)
_KINDS: dict[str, int] = {
    **{k: _BUSY for k in OpKind.COMPUTE},
    OpKind.SEND: _SEND, OpKind.RECV: _RECV, OpKind.WAIT: _WAIT,
    OpKind.TEXT_ENCODE: _TEXT, OpKind.VAE_DECODE: _VAE,
    **{k: _BLOCKING for k in OpKind.COLLECTIVES},
    **{k + OpKind.ASYNC_SUFFIX: _ASYNC for k in OpKind.COLLECTIVES},
}


_OP_SOURCE = itemgetter(1, 10)  # TraceRow's op and source
_OP_SOURCE_STEP = itemgetter(1, 10, 2)
_RANK_OP_SOURCE_STEP = itemgetter(0, 1, 10, 2)


def source_summary(rows: Trace | Iterable[TraceRow]) -> dict[str, dict[str, int]]:
    """Per compute kind, how many ops took their time from each source, from a trace (a
    ``sim.trace.Trace`` or its rows): e.g. ``{"blocks": {"measured": 8, "interpolated": 4}}``.
    Communication rows are skipped."""
    counts: Counter = Counter()
    if isinstance(rows, Trace):
        short = rows.short if isinstance(rows, ExtendedTrace) else rows
        # Counted in C per (op, source, step), then weighted by the rows each one stands
        # for: the repeated step's copies, a copied rank's rows.
        if isinstance(short, CopiedTrace):
            # ``source`` is the tail of ``simulated``: counted once, with its rank, each
            # row for itself and its copies.
            head = short.simulated[:len(short.simulated) - len(short.source)]
            by_step = Counter(map(_OP_SOURCE_STEP, head))
            n_copies = {r: len(c) for r, c in short.copies.items()}
            for (rank, op, source, step), n in Counter(map(_RANK_OP_SOURCE_STEP,
                                                           short.source)).items():
                by_step[(op, source, step)] += n * (1 + n_copies.get(rank, 0))
        else:
            by_step = Counter(map(_OP_SOURCE_STEP, short.rows))
        b, w = (rows.step, 1 + rows.copies) if isinstance(rows, ExtendedTrace) else (None, 1)
        for (op, source, step), n in by_step.items():
            counts[(op, source)] += n * w if step == b else n
    else:
        counts.update(map(_OP_SOURCE, rows))
    out: dict[str, dict[str, int]] = {}
    for (kind, source), n in counts.items():
        if kind in (OpKind.SEND, OpKind.RECV) or source not in SOURCES:
            continue
        out.setdefault(kind, {})[source] = n
    return {k: dict(sorted(c.items(), key=lambda kv: SOURCES.index(kv[0])))
            for k, c in sorted(out.items())}
