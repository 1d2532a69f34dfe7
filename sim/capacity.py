"""Capacity of a serving pool and the search over pool splits.

Capacity at target ``x`` is the highest arrival rate (requests per second) at which a
fraction ``x`` of the requests finish within their SLO, found by bisection on the rate with
one seeded stream stretched to each rate (common random numbers, ``sim.arrivals``). Attainment
from a finite run is nearly, not strictly, monotone in the rate; the bisection returns a rate
that met the target, within a relative tolerance of one that did not.

An analytic bound caps the bisection and prunes the search: a request of class ``c`` holds a
replica for at least ``m_c`` seconds (its isolated latency on the fastest replica allowed to
serve it), only classes with ``m_c`` within their SLO can count as good, and ``R`` replicas
offer at most ``R`` replica-seconds per second; so with a fraction ``x`` good, ``rate x
(cheapest way to make x of the requests good)`` cannot exceed ``R``. A split whose bound is
below the capacities already found cannot enter the ranking and is never simulated.

With batching (``Split.max_batch`` > 1) the bound stays an upper bound: a batch of ``b``
requests of class ``c`` holds its replica for the engine's latency of that batch, ``L(b)``, so
each of its requests holds at least ``L(b) / b``; a good request's batch took at most its
SLO, so ``m_c`` becomes the least ``L(b) / b`` over the replicas allowed to serve the class and
the batches they can form (memory) with ``L(b)`` within the SLO. Every ``L(b)`` comes from the
engine (``ServiceTable.batch_latency``), none from an assumed scaling.

A split may carry a measured pace per replica and class (``Split.pace``): replica ``r`` then
takes ``pace[r][c]`` times the engine's latency for every request and batch of class ``c``, in
the runs and in the bound alike (``m_c`` is the least paced latency).

Torch-free.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from sim.arrivals import Request, scaled
from sim.config import ParallelConfig, validate
from sim.errors import UserError
from sim.replicas import ReplicaGroup, ServiceTable
from sim.serving import Batching, Policy, ServeRun, simulate_pool

# Bisection stops when the bracket is this narrow relative to its lower end.
REL_TOL = 0.02
# Below this fraction of the bound a pool is taken to be unloaded (its attainment is that of
# isolated requests): if it misses the target even there, the capacity is 0.
IDLE_FRACTION = 1e-6


@dataclass(frozen=True)
class Split:
    """A pool split: replica groups with their configurations, a router and, for router
    ``pools``, the group index serving each class."""

    groups: tuple[ReplicaGroup, ...]
    router: str
    class_groups: tuple[int, ...] | None = None
    max_batch: int = 1  # most same-class requests a replica serves as one batch
    # Per replica (``replicas()`` order) and request class: its service times of that class
    # are the engine's times this factor, e.g. a real replica's measured reference time over
    # its predicted one. ``None``: every replica runs at the engine's pace.
    pace: tuple[tuple[float, ...], ...] | None = None

    def paces(self, classes: int) -> list[tuple[float, ...]]:
        """Each replica's factor per class on the engine's service times (1 without
        ``pace``)."""
        if self.pace is not None:
            return list(self.pace)
        return [(1.0,) * classes] * sum(g.count for g in self.groups)

    def replicas(self) -> list[tuple[int, ParallelConfig]]:
        """(group index, configuration) of every replica, group by group."""
        assert all(g.config is not None for g in self.groups)
        return [(i, g.config) for i, g in enumerate(self.groups)  # type: ignore[misc]
                for _ in range(g.count)]

    def label(self, names: list[str] | None = None) -> str:
        """``2x4 + 4x1`` (the split, without configurations)."""
        return " + ".join(f"{g.count}x{g.gpus}" for g in self.groups)

    def router_label(self, names: list[str]) -> str:
        """``lwl``, or ``pools(2048->x4, 1024->x1)``; `` batch<=4`` appended with batching."""
        batch = f" batch<={self.max_batch}" if self.max_batch > 1 else ""
        if self.class_groups is None:
            return self.router + batch
        return "pools(" + ", ".join(f"{n}->x{self.groups[g].gpus}"
                                    for n, g in zip(names, self.class_groups)) + ")" + batch


@dataclass
class ServeModel:
    """Everything a run needs besides the split and the rate: the latency table, each
    class's SLO (seconds), the queue discipline and admission control, and the request
    stream at unit rate (or a trace at its own rate ``trace_rate``)."""

    table: ServiceTable
    slo_s: list[float]
    queue: str
    admission: bool
    stream: list[Request]
    trace_rate: float | None = None  # requests per second of a replayed trace; None: unit
    runs: int = field(default=0)  # pool simulations run

    @property
    def shares(self) -> list[float]:
        """Each class's share of the stream's requests (its weight, up to sampling)."""
        counts = [0] * len(self.table.classes)
        for r in self.stream:
            counts[r.cls] += 1
        return [n / len(self.stream) for n in counts]

    def _slo(self, req: Request) -> float:
        return req.slo_s if req.slo_s is not None else self.slo_s[req.cls]

    def policy(self, split: Split) -> Policy:
        pools = None
        if split.class_groups is not None:
            reps = split.replicas()
            pools = tuple(tuple(r for r, (g, _) in enumerate(reps) if g == cg)
                          for cg in split.class_groups)
        return Policy(split.router, self.queue, self.admission, pools)

    def run(self, split: Split, rate: float | None, max_misses: int | None = None
            ) -> ServeRun:
        """Serve the stream on ``split`` at ``rate`` requests per second (``None``: the
        trace as recorded); ``max_misses`` as in ``simulate_pool``."""
        base = self.trace_rate or 1.0
        stream = self.stream if rate is None else scaled(self.stream, base / rate)
        reps = split.replicas()
        table = self.table
        # A pace of 1 multiplies exactly: without one the times are the table's, bit for bit.
        n = len(table.classes)
        lat = [[p[c] * table.latency(cfg, c) for c in range(n)]
               for (_, cfg), p in zip(reps, split.paces(n))]
        self.runs += 1
        return simulate_pool(stream, [cfg.gpus for _, cfg in reps],
                             lat, self._slo, self.policy(split),
                             max_misses, self.batching(split))

    def batching(self, split: Split) -> Batching | None:
        """The batching of ``split``'s replicas (``None`` without): each replica's batch
        limit per class (``split.max_batch``, lower where a batch that large does not fit in
        memory) and the engine's batch latencies."""
        if split.max_batch <= 1:
            return None
        table, n = self.table, len(self.table.classes)
        cfgs = [cfg for _, cfg in split.replicas()]
        limit = [[max(1, table.batch_limit(cfg, c, split.max_batch)) for c in range(n)]
                 for cfg in cfgs]
        pace = split.paces(n)
        return Batching(limit, lambda r, c, b: pace[r][c] * table.batch_latency(cfgs[r], c, b))

    def meets(self, split: Split, rate: float, target: float) -> bool:
        """Whether at least ``target`` of the requests finish within SLO at ``rate``
        requests per second (the run stops once too many have missed to reach it)."""
        n = len(self.stream)
        allowed = math.floor(n * (1 - target) + 1e-9)  # misses that still leave target good
        run = self.run(split, rate, max_misses=allowed)
        return not run.stopped and sum(1 for s in run.served if s.good) >= target * n - 1e-9

    def bound(self, split: Split, target: float) -> float:
        """An arrival rate (requests per second) above which attainment ``target`` is
        impossible in steady state (see the module docstring); 0 when even unloaded the
        classes that can meet their SLO weigh less than ``target``."""
        reps = split.replicas()
        cheapest = []
        table = self.table
        for c, share in enumerate(self.shares):
            allowed = [(cfg, p[c]) for (g, cfg), p in zip(reps, split.paces(len(table.classes)))
                       if split.class_groups is None or split.class_groups[c] == g]
            # A replayed trace may carry per-request SLOs: then any class might be good.
            any_slo = self.trace_rate is not None
            if split.max_batch <= 1:
                m = min((p * table.latency(cfg, c) for cfg, p in allowed), default=math.inf)
                good = m <= self.slo_s[c] or (any_slo and math.isfinite(m))
            else:
                per = [p * table.batch_latency(cfg, c, b) / b for cfg, p in allowed
                       for b in range(1, table.batch_limit(cfg, c, split.max_batch) + 1)
                       if any_slo or p * table.batch_latency(cfg, c, b) <= self.slo_s[c]]
                m = min(per, default=math.inf)
                good = math.isfinite(m)
            if good:
                cheapest.append((m, share))
        cheapest.sort()
        need, cost = target, 0.0
        for m, w in cheapest:
            take = min(w, need)
            cost += take * m
            need -= take
            if need <= 1e-12:
                break
        if need > 1e-12 or cost <= 0:
            return 0.0
        return len(reps) / cost

    def capacity(self, split: Split, target: float, bound: float | None = None,
                 floor: float | None = None) -> float | None:
        """Highest rate (requests per second) found with attainment >= ``target``; 0 when
        even an unloaded pool misses it. With ``floor``, ``None`` when the split misses the
        target at ``floor`` already (its capacity is below it: one run instead of a
        bisection)."""
        hi = self.bound(split, target) if bound is None else bound
        if hi <= 0:
            return 0.0  # unloaded, the classes that can be on time weigh less than target
        if floor is not None:
            if floor >= hi or not self.meets(split, floor, target):
                return None
            lo = floor
        else:
            lo = 0.0
        if self.meets(split, hi, target):
            return hi
        if lo == 0.0:
            # Halve down from the bound until the target is met (the bound is usually within
            # a small factor of the capacity); a rate a millionth of it is an idle pool.
            idle = hi * IDLE_FRACTION
            lo = hi / 2
            while not self.meets(split, lo, target):
                hi, lo = lo, lo / 2
                if lo < idle:
                    return 0.0
        while hi - lo > REL_TOL * lo:
            mid = (lo + hi) / 2
            if self.meets(split, mid, target):
                lo = mid
            else:
                hi = mid
        return lo


def enumerate_splits(gpus: int, widths: list[int], classes: int,
                     routers: tuple[str, ...]) -> list[tuple[tuple[tuple[int, int], ...],
                                                           str, tuple[int, ...] | None]]:
    """Splits of ``gpus`` GPUs into replicas of the given widths: every homogeneous one and
    every one of two widths, as ((count, width), ...), router, class -> group (router
    ``pools`` only, heterogeneous splits only: every assignment using both groups)."""
    shapes: list[tuple[tuple[int, int], ...]] = []
    for k in widths:
        if gpus % k == 0:
            shapes.append(((gpus // k, k),))
    for k1, k2 in itertools.combinations(sorted(widths), 2):
        for b in range(1, gpus // k2 + 1):
            rest = gpus - b * k2
            if rest > 0 and rest % k1 == 0:
                shapes.append(((b, k2), (rest // k1, k1)))
    out = []
    for shape in shapes:
        for router in routers:
            if router != "pools":
                out.append((shape, router, None))
            elif len(shape) == 2 and classes >= 2:
                for assign in itertools.product((0, 1), repeat=classes):
                    if len(set(assign)) == 2:
                        out.append((shape, router, assign))
    return out


@dataclass
class Candidate:
    """One split's result: its capacity (requests per second; ``None`` when pruned by its
    bound) and the bound."""

    split: Split
    bound: float
    capacity: float | None = None


def search_splits(model: ServeModel, splits: list[Split], target: float, top: int,
                  progress: Callable[[int, int], None] | None = None
                  ) -> tuple[list[Candidate], int, int]:
    """Capacities of ``splits`` at ``target``, best first (then the skipped ones, capacity
    ``None``), how many were skipped by their
    bound and how many by one run: splits are tried in order of their bound; once ``top``
    capacities are found, a split whose bound is below the ``top``-th is skipped, and one
    that misses the target at that rate is dropped after that one run (neither can enter
    the first ``top`` rows, which thus equal an exhaustive search's up to the bisection's
    tolerance). ``progress(done, total)`` is called after each split."""
    cands = [Candidate(s, model.bound(s, target)) for s in splits]
    cands.sort(key=lambda c: -c.bound)
    found: list[float] = []
    pruned = missed = 0
    for i, cand in enumerate(cands):
        floor = found[top - 1] if len(found) >= top else None
        if floor is not None and cand.bound <= floor:
            pruned += 1
        else:
            cap = model.capacity(cand.split, target, cand.bound, floor)
            if cap is None:
                missed += 1
            else:
                cand.capacity = cap
                found = sorted(found + [cap], reverse=True)
        if progress:
            progress(i + 1, len(cands))
    done = [c for c in cands if c.capacity is not None]
    done.sort(key=lambda c: (-(c.capacity or 0.0), -c.bound, c.split.label()))
    return done + [c for c in cands if c.capacity is None], pruned, missed


def resolve_groups(table: ServiceTable, groups: list[ReplicaGroup]) -> tuple[ReplicaGroup, ...]:
    """Groups with every configuration filled in (the best for the mix where not given);
    raises ``UserError`` when a width has no configuration serving every class."""
    out = []
    for g in groups:
        if g.config is not None:
            errors = []
            for wl in table.workloads:
                try:
                    validate(wl, g.config)
                except UserError as e:
                    errors.append(str(e))
            if len(errors) == len(table.workloads):
                raise UserError(f"--replicas {g.label()}: {errors[0]}")
        cfg = g.config or table.best_config(g.gpus)
        if cfg is None:
            raise UserError(f"no configuration of a {g.gpus}-GPU replica serves every class "
                            f"({', '.join(table.names)}): each runs out of memory or does not "
                            f"apply to some size; choose other replica widths")
        out.append(ReplicaGroup(g.count, g.gpus, cfg))
    return tuple(out)
