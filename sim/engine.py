"""Discrete-event engine (simpy): runs a schedule on a topology with a cost model.

One simpy process per rank walks its op list: a compute op holds the rank for its cost; a send
starts a transfer and moves on (asynchronous, as ``isend``); a receive waits until its data has
arrived. Transfers are fluid flows over the route's directed edges, shared max-min fairly:
whenever a flow starts or ends every flow's rate is recomputed, so traffic that meets on the
socket link or a NIC slows down for as long as it overlaps. Time is in seconds.
"""

from __future__ import annotations

from collections.abc import Callable

import simpy

from sim.cost import CostModel
from sim.schedule import Collective, Compute, Recv, Schedule, Send
from sim.topology import Topology
from sim.trace import Trace

_EPS_BYTES = 1e-3


class _Flow:
    __slots__ = ("edges", "remaining", "rate", "done")

    def __init__(self, edges: tuple[int, ...], nbytes: float, done: Callable[[], None]) -> None:
        self.edges = edges
        self.remaining = float(nbytes)
        self.rate = 0.0
        self.done = done


class Network:
    """Fluid model of concurrent transfers with max-min fair sharing of every directed edge."""

    def __init__(self, env: simpy.Environment, topo: Topology) -> None:
        self.env = env
        self.topo = topo
        self.capacity = topo.capacity
        self.flows: list[_Flow] = []
        self.last = 0.0
        self.generation = 0

    def transfer(self, src: int, dst: int, nbytes: int, done: Callable[[], None]) -> None:
        """Move ``nbytes`` from rank ``src`` to ``dst``; call ``done`` on arrival."""
        latency = self.topo.route_latency(src, dst)
        edges = self.topo.route(src, dst)

        def start(_: object) -> None:
            self._advance()
            self.flows.append(_Flow(edges, nbytes, done))
            self._reschedule()

        self.env.timeout(latency).callbacks.append(start)

    def _advance(self) -> None:
        dt = self.env.now - self.last
        if dt > 0:
            for f in self.flows:
                f.remaining -= f.rate * dt
        self.last = self.env.now

    def _rates(self) -> None:
        """Progressive filling: repeatedly saturate the edge with the smallest fair share."""
        cap: dict[int, float] = {}
        users: dict[int, list[_Flow]] = {}
        for f in self.flows:
            f.rate = -1.0
            for e in f.edges:
                if e not in cap:
                    cap[e] = self.capacity[e]
                    users[e] = []
                users[e].append(f)
        if len(self.flows) == 1:  # the common case: one flow gets its narrowest edge
            f = self.flows[0]
            f.rate = min(cap.values())
            return
        active = {e: [f for f in fl] for e, fl in users.items()}
        while active:
            edge, share = min(((e, cap[e] / len(fl)) for e, fl in active.items()),
                              key=lambda x: x[1])
            for f in active[edge]:
                f.rate = share
                for e in f.edges:
                    if e in active and e != edge:
                        cap[e] -= share
                        active[e].remove(f)
                        if not active[e]:
                            del active[e]
            del active[edge]

    def _reschedule(self) -> None:
        finished = [f for f in self.flows if f.remaining <= _EPS_BYTES]
        if finished:
            self.flows = [f for f in self.flows if f.remaining > _EPS_BYTES]
        if self.flows:
            self._rates()
            dt = min(f.remaining / f.rate for f in self.flows)
            # The flows due at the wake-up are finished explicitly: with very fast links,
            # now + dt can round to now and the fluid update alone would never reach zero.
            due = [f for f in self.flows if f.remaining / f.rate <= dt * (1 + 1e-9)]
            self.generation += 1
            gen = self.generation

            def wake(_: object) -> None:
                if gen == self.generation:
                    self._advance()
                    for f in due:
                        f.remaining = 0.0
                    self._reschedule()

            self.env.timeout(max(dt, 0.0)).callbacks.append(wake)
        for f in finished:
            f.done()


def simulate(schedule: Schedule, topo: Topology, cost: CostModel,
             rank_offset: int = 0) -> Trace:
    """Run ``schedule`` with ranks placed on the topology's GPUs ``rank_offset..``; returns
    the trace (one row per executed op, times in seconds from the start)."""
    if schedule.world_size + rank_offset > topo.num_gpus:
        raise ValueError(f"schedule needs {schedule.world_size} GPUs, topology has "
                         f"{topo.num_gpus}")
    env = simpy.Environment()
    net = Network(env, topo)
    rows: list[tuple] = []
    mailbox: dict[tuple, simpy.Event] = {}

    def slot(key: tuple) -> simpy.Event:
        ev = mailbox.get(key)
        if ev is None:
            ev = mailbox[key] = env.event()
        return ev

    def rank_proc(rank: int):
        gpu = rank + rank_offset
        for op in schedule.ranks[rank]:
            if isinstance(op, Compute):
                start = env.now
                yield env.timeout(cost.compute_time(op))
                rows.append((rank, op.kind, op.step, op.patch, op.layers[0], op.layers[1],
                             start, env.now, 0, -1, cost.source(op), ""))
            elif isinstance(op, Send):
                ev = slot((rank, op.dst, op.tag))
                start = env.now

                def arrived(ev=ev, op=op, start=start) -> None:
                    rows.append((rank, "send", op.tag.step, op.tag.patch, op.tag.layer,
                                 op.tag.layer, start, env.now, op.nbytes, op.dst, "model",
                                 op.tag.what))
                    ev.succeed(start)

                net.transfer(gpu, op.dst + rank_offset, op.nbytes, arrived)
            elif isinstance(op, Recv):
                start = env.now
                yield slot((op.src, rank, op.tag))
                rows.append((rank, "recv", op.tag.step, op.tag.patch, op.tag.layer,
                             op.tag.layer, start, env.now, op.nbytes, op.src, "model",
                             op.tag.what))
            elif isinstance(op, Collective):
                raise NotImplementedError("collectives are not simulated yet (issue 3)")
            else:
                raise TypeError(f"unknown op {op!r}")

    for r in range(schedule.world_size):
        env.process(rank_proc(r))
    env.run()
    return Trace(rows)
