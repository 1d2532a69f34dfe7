"""Metrics derived from a trace: latency and its split, busy and bubble fractions, exposed
communication, bytes per step. Works on simulated and measured traces alike (seconds, bytes).

Exposed communication is time a rank is held by data on the wire: the in-flight part of each
receive, every blocking collective, and every wait on an asynchronous one. Bubbles are the
rest of its idle time (waiting for work that has not been done yet)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from sim.cost.profile import SOURCES
from sim.schedule import COLLECTIVE_KINDS
from sim.trace import Trace

OUTSIDE_LOOP = ("text_encode", "vae_decode")


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
    """Metrics of ``trace`` for a run of ``steps`` steps of which ``warmup`` synchronous."""
    latency = trace.end_s
    text_end = max((r[7] for r in trace.rows if r[1] == "text_encode"), default=0.0)
    vae = sum(r[7] - r[6] for r in trace.rows if r[1] == "vae_decode")
    loop = max(latency - text_end - vae, 1e-30)
    busy = [0.0] * world_size
    exposed = [0.0] * world_size
    sends = {}
    sent_by_step: dict[tuple[int, int], int] = defaultdict(int)
    for r in trace.rows:
        rank, op = r[0], r[1]
        if op == "send":
            sends[(rank, r[9], r[2], r[3], r[4], r[11])] = r
            sent_by_step[(rank, r[2])] += r[8]
        elif op.endswith("_async"):
            sent_by_step[(rank, r[2])] += r[8]
        elif op in COLLECTIVE_KINDS:
            # A blocking collective holds its rank for as long as its data is on the wire.
            sent_by_step[(rank, r[2])] += r[8]
            exposed[rank] += r[7] - r[6]
        elif op == "wait":
            exposed[rank] += r[7] - r[6]
        elif op != "recv" and op not in OUTSIDE_LOOP:
            busy[rank] += r[7] - r[6]
    for r in trace.rows:
        if r[1] == "recv":
            s = sends.get((r[9], r[0], r[2], r[3], r[4], r[11]))
            in_flight_from = max(r[6], s[6]) if s else r[6]
            exposed[r[0]] += max(0.0, r[7] - in_flight_from)
    idle = sum(loop - b - e for b, e in zip(busy, exposed))
    steady = [t for t in range(warmup, steps - 1)] or list(range(steps))
    per_step = [max((sent_by_step.get((rank, t), 0) for t in steady), default=0)
                for rank in range(world_size)]
    return Metrics(
        latency_s=latency, text_encode_s=text_end, loop_s=loop, vae_decode_s=vae,
        busy_fraction=[b / loop for b in busy],
        bubble_fraction=max(0.0, idle / (world_size * loop)),
        exposed_comm_s=exposed, bytes_per_step=per_step,
    )


def source_summary(rows: Iterable) -> dict[str, dict[str, int]]:
    """Per compute kind, how many ops took their time from each source, from a trace (a
    ``sim.trace.Trace`` or its rows): e.g. ``{"blocks": {"measured": 8, "interpolated": 4}}``.
    Communication rows are skipped."""
    if isinstance(rows, Trace):
        rows = rows.rows
    out: dict[str, Counter] = {}
    for r in rows:
        kind, source = r[1], r[10]
        if kind in ("send", "recv") or source not in SOURCES:
            continue
        out.setdefault(kind, Counter())[source] += 1
    return {k: dict(sorted(c.items(), key=lambda kv: SOURCES.index(kv[0])))
            for k, c in sorted(out.items())}
