"""The fluid network the engine moves data over: concurrent transfers as flows over directed
edges, shared max-min fairly, rates recomputed whenever a flow starts or ends (seconds,
bytes, bytes/s). ``sim.engine`` starts messages and collectives on it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sim.topology import Topology

if TYPE_CHECKING:  # simpy is imported by sim.engine.simulate, which builds the environment
    import simpy

_EPS_BYTES = 1e-3


class _Flow:
    __slots__ = ("edges", "remaining", "rate", "done")

    def __init__(self, edges: tuple[int, ...], nbytes: float, done: Callable[[], None]) -> None:
        self.edges = edges
        self.remaining = float(nbytes)
        self.rate = 0.0
        self.done = done


Parts = tuple[tuple[int, Callable[[], None]], ...]  # (flows, called once they are through)


class _Solo:
    """A bundle of flows running alone on an idle network (see ``Network``): started at
    ``start``; ``plan`` is its evolution, worked out once per (routes, bytes, parts)."""

    __slots__ = ("start", "routes", "nbytes", "plan", "parts", "called")

    def __init__(self, start: float, routes: tuple[tuple[int, ...], ...], nbytes: float,
                 plan: tuple, parts: Parts) -> None:
        self.start = start
        self.routes = routes
        self.nbytes = nbytes
        self.plan = plan
        self.parts = parts
        self.called: set[int] = set()  # parts whose flows are all through


def _counter(n: int, done: Callable[[], None]) -> Callable[[], None]:
    """A callback that calls ``done`` on its ``n``-th call."""
    left = [n]

    def one_done() -> None:
        left[0] -= 1
        if left[0] == 0:
            done()

    return one_done


def _part_flows(routes: tuple[tuple[int, ...], ...], nbytes: float, parts: Parts
                ) -> list[_Flow]:
    """One flow of ``nbytes`` per route, the routes taken part by part in order; each part's
    callback runs once all its flows are through."""
    flows: list[_Flow] = []
    i = 0
    for n, done in parts:
        one_done = done if n == 1 else _counter(n, done)
        flows += [_Flow(edges, nbytes, one_done) for edges in routes[i:i + n]]
        i += n
    return flows


class Network:
    """Fluid model of concurrent transfers with max-min fair sharing of every directed edge.

    A bundle of flows (a collective's transfers, or one message) that starts on an idle
    network runs *solo*: its whole evolution (each phase's rates, length and the flows that
    finish at its end) depends only on its routes and bytes, so it is worked out once per
    (routes, bytes) and the run takes one event, at its end, instead of one per phase (a
    Ulysses all-to-all over PCIe has four or five). Should another transfer start while a
    solo bundle runs, the bundle's state at that instant is read off its plan and its flows
    join the network as ordinary flows. The times are those of the per-phase run up to the
    last bits of a sum (``tests/test_engine_shortcuts.py``).

    A bundle may carry several parts, each with its own callback once its flows are through
    (the engine starts a collective and its images together, or a message and its images):
    one start and one rate computation for all of them."""

    def __init__(self, env: simpy.Environment, topo: Topology) -> None:
        self.env = env
        self.topo = topo
        self.capacity = topo.capacity
        self.flows: list[_Flow] = []
        self.last = 0.0
        self.generation = 0
        # Rates of each set of routes seen (the rates depend on nothing else): steady steps
        # start the same collectives over the same links again and again.
        self._rate_memo: dict[tuple, tuple[float, ...]] = {}
        self._paths: dict[tuple[int, int], tuple[float, tuple[int, ...]]] = {}
        self._solo: _Solo | None = None
        self._solo_plans: dict[tuple, tuple] = {}
        self.solo = True  # False: every bundle runs phase by phase (the tests' reference)

    def _path(self, pair: tuple[int, int]) -> tuple[float, tuple[int, ...]]:
        """(latency, route) from ``pair``'s source GPU to its destination, looked up once."""
        path = self._paths.get(pair)
        if path is None:
            path = self._paths[pair] = (self.topo.route_latency(*pair), self.topo.route(*pair))
        return path

    def transfer(self, src: int, dst: int, nbytes: int, done: Callable[[], None]) -> None:
        """Move ``nbytes`` from rank ``src`` to ``dst``; call ``done`` on arrival."""
        path = self._path((src, dst))
        routes, parts = (path[1],), ((1, done),)
        self.env.timeout(path[0]).callbacks.append(
            lambda _: self._start(routes, nbytes, parts))

    def transfers(self, pairs: list[tuple[int, int]], nbytes: int,
                  dones: list[Callable[[], None]]) -> None:
        """Move ``nbytes`` from ``src`` to ``dst`` for every (src, dst) of ``pairs``, started
        together; call the matching one of ``dones`` on each arrival."""
        by_latency: dict[float, tuple[list, list]] = {}
        for pair, done in zip(pairs, dones):
            path = self._path(pair)
            routes, parts = by_latency.setdefault(path[0], ([], []))
            routes.append(path[1])
            parts.append((1, done))
        for latency, (routes, parts) in by_latency.items():
            self.env.timeout(latency).callbacks.append(
                lambda _, r=tuple(routes), p=tuple(parts): self._start(r, nbytes, p))

    def bundle(self, pairs: list[tuple[int, int]], nbytes: float, latency_s: float,
               done: Callable[[], None]) -> None:
        """Start one flow of ``nbytes`` per (src, dst) pair after ``latency_s``; call ``done``
        once all have arrived (a collective's transfers, started together)."""
        self.bundle_routes(tuple(self.topo.route(a, b) for a, b in pairs), nbytes, latency_s,
                           done)

    def bundle_routes(self, routes: tuple[tuple[int, ...], ...], nbytes: float,
                      latency_s: float, done: Callable[[], None]) -> None:
        """``bundle`` with the routes (edge ids) already looked up."""
        self.bundle_parts(routes, nbytes, latency_s, ((len(routes), done),))

    def bundle_parts(self, routes: tuple[tuple[int, ...], ...], nbytes: float,
                     latency_s: float, parts: Parts) -> None:
        """``bundle_routes`` of several bundles at once: ``parts`` gives, in the order of
        ``routes``, how many flows each has and what to call once they are through."""
        if not routes or nbytes <= 0:
            self.env.timeout(latency_s).callbacks.append(
                lambda _: [done() for _, done in parts])
            return
        self.env.timeout(latency_s).callbacks.append(
            lambda _: self._start(routes, nbytes, parts))

    def _start(self, routes: tuple[tuple[int, ...], ...], nbytes: float, parts: Parts) -> None:
        """Flows of ``nbytes`` on ``routes`` start now; each part's callback once its flows
        have arrived."""
        if self._solo is not None:
            self._unsolo()
        elif not self.flows and self.solo:
            key = (routes, nbytes, tuple([n for n, _ in parts]))
            plan = self._solo_plans.get(key)
            if plan is None:
                plan = self._solo_plans[key] = self._plan_alone(routes, nbytes, parts)
            solo = self._solo = _Solo(self.env.now, routes, nbytes, plan, parts)
            self.last = self.env.now
            total, _, ends = plan
            for end, which in ends:
                def finish(_: object, which: tuple[int, ...] = which,
                           last: bool = end == total) -> None:
                    if self._solo is not solo:
                        return
                    if last:
                        self._solo = None
                        self.last = self.env.now
                    for k in which:
                        solo.called.add(k)
                        parts[k][1]()

                self.env.timeout(end).callbacks.append(finish)
            return
        self._advance()
        self.flows += _part_flows(routes, nbytes, parts)
        self._reschedule()

    def _plan_alone(self, routes: tuple[tuple[int, ...], ...], nbytes: float,
                    parts: Parts) -> tuple:
        """(duration, phases, part ends) of ``routes`` carrying ``nbytes`` each on an idle
        network, by the same arithmetic as ``_reschedule``: each phase is (seconds, (flow
        index, rate) of each flow still running); part ends are (seconds from the start,
        indices of the parts through then), in time order."""
        flows = [_Flow(edges, nbytes, lambda: None) for edges in routes]
        index = {id(f): i for i, f in enumerate(flows)}
        phases = []
        total = 0.0
        through = [0.0] * len(flows)
        while flows:
            self._set_rates(flows)
            dt = max(min(f.remaining / f.rate for f in flows), 0.0)
            due = {id(f) for f in flows if f.remaining / f.rate <= dt * (1 + 1e-9)}
            phases.append((dt, tuple((index[id(f)], f.rate) for f in flows)))
            for f in flows:
                f.remaining = 0.0 if id(f) in due else f.remaining - f.rate * dt
            total += dt
            for f in flows:
                if f.remaining <= _EPS_BYTES:
                    through[index[id(f)]] = total
            flows = [f for f in flows if f.remaining > _EPS_BYTES]
        ends: dict[float, list[int]] = {}
        i = 0
        for k, (n, _) in enumerate(parts):
            ends.setdefault(max(through[i:i + n]), []).append(k)
            i += n
        return total, tuple(phases), tuple((t, tuple(ks)) for t, ks in sorted(ends.items()))

    def _unsolo(self) -> None:
        """Another transfer starts while a solo bundle runs: its flows, with the bytes they
        have left now, become ordinary flows (those already through are left at zero bytes,
        so that the caller's ``_reschedule`` finishes them; parts already called are left
        out)."""
        solo = self._solo
        assert solo is not None
        self._solo = None
        elapsed = self.env.now - solo.start
        flows = _part_flows(solo.routes, solo.nbytes, solo.parts)
        keep = [k not in solo.called for k, (n, _) in enumerate(solo.parts) for _ in range(n)]
        running: set[int] = set()
        t = 0.0
        for dt, rates in solo.plan[1]:
            running = {i for i, _ in rates}
            if t + dt > elapsed:  # this phase is under way
                for i, rate in rates:
                    flows[i].remaining -= rate * (elapsed - t)
                    flows[i].rate = rate
                break
            for i, rate in rates:
                flows[i].remaining -= rate * dt
            t += dt
        else:
            running = set()
        for i, f in enumerate(flows):
            if i not in running:
                f.remaining = 0.0
        self.flows = [f for f, k in zip(flows, keep) if k]
        self.last = self.env.now

    def _advance(self) -> None:
        dt = self.env.now - self.last
        if dt > 0:
            for f in self.flows:
                f.remaining -= f.rate * dt
        self.last = self.env.now

    def _rates(self) -> None:
        """Max-min fair rates of the flows on the network (``_set_rates``)."""
        self._set_rates(self.flows)

    def _set_rates(self, flows: list[_Flow]) -> None:
        """Max-min fair rates by progressive filling: repeatedly saturate the edge with the
        smallest fair share. Flows that share no edge with another (the common case: the
        groups of a hybrid talk on disjoint links) get their narrowest edge at once."""
        capacity = self.capacity
        count: dict[int, int] = {}
        for f in flows:
            for e in f.edges:
                count[e] = count.get(e, 0) + 1
        if len(count) == sum(len(f.edges) for f in flows):  # no edge is shared
            for f in flows:
                f.rate = min(capacity[e] for e in f.edges)
            return
        cap: dict[int, float] = {}
        users: dict[int, list[_Flow]] = {}
        for f in flows:
            f.rate = -1.0
            for e in f.edges:
                if e not in cap:
                    cap[e] = capacity[e]
                    users[e] = []
                users[e].append(f)
        # ``count`` holds, per edge, the flows on it whose rate is not yet fixed; its order
        # (first use) breaks ties between equal shares as the per-edge lists did.
        while count:
            edge = min(count, key=lambda e: cap[e] / count[e])
            share = cap[edge] / count[edge]
            for f in users[edge]:
                if f.rate >= 0.0:
                    continue
                f.rate = share
                for e in f.edges:
                    if e != edge and e in count:
                        cap[e] -= share
                        if count[e] == 1:
                            del count[e]
                        else:
                            count[e] -= 1
            del count[edge]

    def _reschedule(self) -> None:
        finished = [f for f in self.flows if f.remaining <= _EPS_BYTES]
        if finished:
            self.flows = [f for f in self.flows if f.remaining > _EPS_BYTES]
        if self.flows:
            key = tuple([f.edges for f in self.flows])
            rates = self._rate_memo.get(key)
            if rates is None:
                self._rates()
                self._rate_memo[key] = tuple([f.rate for f in self.flows])
            else:
                for f, r in zip(self.flows, rates):
                    f.rate = r
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
