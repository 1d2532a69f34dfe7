"""Metrics derived from a trace: latency and its split, busy and bubble fractions, exposed
communication, bytes per step. Works on simulated and measured traces alike (seconds, bytes).

Exposed communication is time a rank is held by data on the wire: the in-flight part of each
receive, every blocking collective, and every wait on an asynchronous one. Bubbles are the
rest of its idle time (waiting for work that has not been done yet)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from sim.cost.base import SOURCES
from sim.schedule import OpKind
from sim.trace import ExtendedTrace, Trace, TraceRow


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
    repeats (the same sums as over the full rows, without building them)."""
    rows = trace.rows if not isinstance(trace, ExtendedTrace) else trace.short.rows
    repeated, copies = (trace.step, trace.copies) if isinstance(trace, ExtendedTrace) \
        else (None, 0)
    latency = trace.end_s
    text_end = max((r.end_s for r in rows if r.op == OpKind.TEXT_ENCODE), default=0.0)
    vae = sum(r.end_s - r.start_s for r in rows if r.op == OpKind.VAE_DECODE)
    loop = max(latency - text_end - vae, 1e-30)
    busy = [0.0] * world_size
    exposed = [0.0] * world_size
    sends: dict[tuple, TraceRow] = {}
    sent_by_step: dict[tuple[int, int], int] = defaultdict(int)
    # Local names: this loop runs over every row of every planner candidate's trace.
    send, recv, wait, suffix = OpKind.SEND, OpKind.RECV, OpKind.WAIT, OpKind.ASYNC_SUFFIX
    collectives, outside = OpKind.COLLECTIVES, OpKind.OUTSIDE_LOOP
    for r in rows:
        rank, op = r.rank, r.op
        w = 1 + copies if r.step == repeated else 1
        if op == send:
            sends[(rank, r.peer, r.step, r.patch, r.layer_first, r.tag)] = r
            sent_by_step[(rank, r.step)] += r.nbytes
        elif op.endswith(suffix):
            sent_by_step[(rank, r.step)] += r.nbytes
        elif op in collectives:
            # A blocking collective holds its rank for as long as its data is on the wire.
            sent_by_step[(rank, r.step)] += r.nbytes
            exposed[rank] += (r.end_s - r.start_s) * w
        elif op == wait:
            exposed[rank] += (r.end_s - r.start_s) * w
        elif op != recv and op not in outside:
            busy[rank] += (r.end_s - r.start_s) * w
    for r in rows:
        if r.op == recv:
            s = sends.get((r.peer, r.rank, r.step, r.patch, r.layer_first, r.tag))
            in_flight_from = max(r.start_s, s.start_s) if s else r.start_s
            w = 1 + copies if r.step == repeated else 1
            exposed[r.rank] += max(0.0, r.end_s - in_flight_from) * w
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


def source_summary(rows: Trace | Iterable[TraceRow]) -> dict[str, dict[str, int]]:
    """Per compute kind, how many ops took their time from each source, from a trace (a
    ``sim.trace.Trace`` or its rows): e.g. ``{"blocks": {"measured": 8, "interpolated": 4}}``.
    Communication rows are skipped."""
    counts: Counter = Counter()
    if isinstance(rows, ExtendedTrace):
        b = rows.step
        by_step = Counter((r.op, r.source, r.step == b) for r in rows.short.rows)
        for (op, source, repeated), n in by_step.items():
            counts[(op, source)] += n * (1 + rows.copies if repeated else 1)
    else:
        counts.update((r.op, r.source) for r in (rows.rows if isinstance(rows, Trace)
                                                  else rows))
    out: dict[str, dict[str, int]] = {}
    for (kind, source), n in counts.items():
        if kind in (OpKind.SEND, OpKind.RECV) or source not in SOURCES:
            continue
        out.setdefault(kind, {})[source] = n
    return {k: dict(sorted(c.items(), key=lambda kv: SOURCES.index(kv[0])))
            for k, c in sorted(out.items())}
