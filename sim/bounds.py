"""Latency lower bounds: what no simulation of a configuration can beat, without running one.

The planner's search (``sim.search``) skips a candidate when its bound already shows that it
cannot enter the rows shown; the serving search (``sim.replicas``) orders its options by it.
Each bound below follows from the engine's rules (``sim.engine``), never from a fit, so it
holds for every schedule, topology, cost model and host model (``tests/test_bounds.py``):

- **A rank, op after op.** A rank runs its ops in order: a compute op holds it for at least its
  cost (overlap slowdown only adds), a blocking collective for at least ``collective_min_s``
  after the rank arrives, and a ``Wait`` ends no earlier than its asynchronous collective,
  which starts no earlier than the rank issued it (Ring attention: the projections, then the
  longer of the attention and the K,V rotation). Each step's ops give an increment from the
  step's start; the rank's latency is at least their sum.
- **The host.** With a host clock, the CPU issues a rank's ops one after the other and no op
  ends before it is issued (``sim.host``): at every step boundary the rank has used at least
  the host seconds of every op before it, and still has every later step's increment to run.
- **Links.** Every byte crosses each edge of its route, and the flows on an edge share its
  capacity (max-min fair, never more): the whole run lasts at least any edge's bytes over its
  capacity, and one collective call at least its latency plus its busiest edge's bytes over
  that edge's capacity (``collective_min_s``: an all-to-all among eight GPUs through host
  memory puts fourteen of its flows on each GPU's PCIe link).
- **One patch's path.** Each stage works on a patch after the stage before has sent its
  hidden states, and stage 0 on the next step's patch after the last stage has sent the
  latent back, so the run lasts at least one patch's work on every stage, step after step,
  plus the transfers between them (``chain``).

Steps after the warmup are identical but for the last, so a short schedule (warm, steady and
last step) is built once per configuration for all its warmup counts and its steps weighted.
Only one chain of stage peers is built (any subset of ranks still bounds from below; the ranks
of a stage run the same shapes): at 64 GPUs building every rank's ops would cost more than
the rest of the search.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from sim.config import ParallelConfig, Workload
from sim.cost import CostModel, CostSpec
from sim.engine import collective_call, ring_merge_seconds
from sim.hardware import GPU
from sim.host import HostModel
from sim.layout import RankLayout
from sim.memory import MemoryBreakdown, memory_per_rank
from sim.schedule import Collective, Compute, OpKind, Recv, Schedule, Send, Wait
from sim.strategies import build_schedule
from sim.topology import Topology

# Compute kinds on the path of one patch through the stages (the step's conditioning, the
# text encode and the VAE decode are not tied to a patch).
_CHAIN_KINDS = frozenset((OpKind.EMBED, OpKind.BLOCKS, OpKind.FINAL, OpKind.SCHEDULER_STEP))
# Messages and collectives on a patch's path (``Tag.what``): hidden states and the latent
# between stages, the sequence-parallel and tensor-parallel collectives inside a stage, the
# CFG halves' gather.
_PATH_TAGS = frozenset(("hidden", "latent", "ulysses", "ring", "tensor", "cfg"))
# Segment keys of the ops outside the diffusion loop: before it (text encode) and after it
# (VAE decode); loop steps are keyed by their index.
BEFORE, AFTER = -1, -2


def collective_alone_s(op: Collective, topo: Topology) -> float:
    """Seconds of ``op`` with the links to itself: its bytes over the narrowest route of the
    group plus the call's latency (``sim.engine.collective_call``, as the engine charges)."""
    pairs, per_flow, latency = collective_call(topo, op.kind, op.group, op.nbytes,
                                               op.asynchronous)
    return op.count * (per_flow / min(topo.route_bandwidth(a, b) for a, b in pairs) + latency)


def collective_edges(op: Collective, topo: Topology) -> tuple[dict[int, float], float]:
    """Bytes ``op`` (all its ``count`` calls, every member's flows) puts on each edge id, and
    its fixed latency, seconds (``sim.engine.collective_call``: the engine starts each call's
    flows after the latency)."""
    pairs, per_flow, latency = collective_call(topo, op.kind, op.group, op.nbytes,
                                               op.asynchronous)
    crossings = Counter(e for a, b in pairs for e in topo.route(a, b))
    total = op.count * per_flow
    return {e: n * total for e, n in crossings.items()}, op.count * latency


def collective_min_s(op: Collective, topo: Topology) -> float:
    """Seconds no run of ``op`` can beat, whatever else shares the links: its latency plus its
    busiest edge's bytes over that edge's capacity (every flow of a call starts after the
    latency, and the flows on an edge together never get more than its capacity). At least
    ``collective_alone_s``; more where the group's own flows meet on an edge."""
    loads, latency = collective_edges(op, topo)
    cap = topo.capacity
    return latency + max(b / cap[e] for e, b in loads.items())


# A rank's clocks over part of a run as a max-plus matrix (``tT, tc, cT, cc``): from a GPU
# clock ``T0`` and a CPU clock ``c0`` at its start, the GPU clock at its end is at least
# ``max(T0 + tT, c0 + tc)`` and the CPU clock at least ``max(T0 + cT, c0 + cc)``.
Clocks = tuple[float, float, float, float]
_NONE = float("-inf")
IDENTITY: Clocks = (0.0, _NONE, _NONE, 0.0)


def then(a: Clocks, b: Clocks) -> Clocks:
    """``a`` followed by ``b`` (max-plus product)."""
    atT, atc, acT, acc = a
    btT, btc, bcT, bcc = b
    return (max(btT + atT, btc + acT), max(btT + atc, btc + acc),
            max(bcT + atT, bcc + acT), max(bcT + atc, bcc + acc))


def repeat(a: Clocks, n: int) -> Clocks:
    """``a`` ``n`` times in a row (by squaring; in closed form when ``a`` leaves no CPU
    clock, as a patch's path from one stage to the next does)."""
    if n <= 1:
        return a if n == 1 else IDENTITY
    tT, tc, cT, cc = a
    if cT == _NONE and cc == _NONE:
        return (n * tT, (n - 1) * tT + tc, _NONE, _NONE)
    out = IDENTITY
    while n > 0:
        if n & 1:
            out = then(out, a)
        a = then(a, a)
        n >>= 1
    return out


class _Run:
    """The engine's rules for one rank's ops (``sim.engine.simulate``, ``sim.host.issue``)
    with every other rank, message and link infinitely fast, as a ``Clocks`` from the start:
    each rule is a max of sums, so the clocks are lower bounds of any run. ``lead`` is how far
    the CPU may run ahead of the GPU (``HostModel.max_lead_s``; 0 without a host clock)."""

    __slots__ = ("tT", "tc", "cT", "cc", "lead", "hosted", "issued")

    def __init__(self, lead: float, hosted: bool) -> None:
        self.tT, self.tc, self.cT, self.cc = IDENTITY
        self.lead = lead
        self.hosted = hosted
        self.issued: dict = {}  # asynchronous collectives: tag -> earliest end (tT, tc)

    def clocks(self) -> Clocks:
        return (self.tT, self.tc, self.cT, self.cc)

    def _cap(self) -> None:
        """The CPU is never further ahead than the launch queue allows (before every op)."""
        lead = self.lead
        if self.tT - lead > self.cT:
            self.cT = self.tT - lead
        if self.tc - lead > self.cc:
            self.cc = self.tc - lead

    def compute(self, g: float, h: float, pieces: int) -> None:
        """``g`` GPU seconds issued in ``pieces`` by ``h`` host seconds."""
        if self.hosted:
            self._cap()
            issue = max(h / pieces + g, h + g / pieces)
            self.tT, self.tc = max(self.tT + g, self.cT + issue), max(self.tc + g,
                                                                      self.cc + issue)
            self.cT += h
            self.cc += h
        else:
            self.tT += g
            self.tc += g

    def send(self, h: float) -> None:
        """A send: the GPU moves on once it is issued."""
        if self.hosted:
            self._cap()
            self.cT += h
            self.cc += h
            self.tT, self.tc = max(self.tT, self.cT), max(self.tc, self.cc)

    def collective(self, h: float, count: int, floor: float, tag: object | None) -> None:
        """A collective of ``count`` calls, at least ``floor`` seconds once the rank is in
        (it is once the first call is issued): blocking (``tag`` None), or asynchronous and
        awaited by a later ``wait(tag)``. A blocking one returns no earlier than the CPU has
        issued all its calls."""
        if self.hosted:
            self._cap()
            first = h / count
            self.tT, self.tc = max(self.tT, self.cT + first), max(self.tc, self.cc + first)
            self.cT += h
            self.cc += h
        if tag is not None:
            self.issued[tag] = (self.tT + floor, self.tc + floor)
        else:
            self.tT, self.tc = max(self.tT + floor, self.cT), max(self.tc + floor, self.cc)

    def wait(self, h: float, tag: object) -> None:
        """A receive (``tag`` None) or a wait: ends no earlier than issued, nor than the
        asynchronous collective ``tag`` when this run issued it."""
        if self.hosted:
            self._cap()
            self.cT += h
            self.cc += h
            self.tT, self.tc = max(self.tT, self.cT), max(self.tc, self.cc)
        end = self.issued.pop(tag, None) if tag is not None else None
        if end is not None:
            self.tT, self.tc = max(self.tT, end[0]), max(self.tc, end[1])


@dataclass
class RankProfile:
    """One rank's share of a schedule as ``Clocks``: ``clocks`` per segment (a loop step's
    index, or ``BEFORE`` / ``AFTER`` the loop), all its ops; ``slots`` per (step, patch) of
    the ops on one patch's path (compute of that patch, its blocking collectives, the
    asynchronous ones it waits for, its sends), followed by ``sent``: the uncontended
    transfer of the hidden states or latent that carry the patch on, seconds."""

    clocks: dict[int, Clocks] = field(default_factory=dict)
    slots: dict[tuple[int, int], Clocks] = field(default_factory=dict)
    sent: dict[tuple[int, int], float] = field(default_factory=dict)
    # Per segment, its ops reduced to what ``_pipeline_bound`` replays (pipelines only).
    events: dict[int, list[tuple]] = field(default_factory=dict)


@dataclass
class ScheduleProfile:
    """What the bounds need of a (partial) schedule: each built rank's ``RankProfile`` and the
    bytes over capacity (seconds) each segment puts on each edge, counting every collective
    call once (all its members' flows) and every send of a built rank."""

    ranks: dict[int, RankProfile]
    edges: dict[int, dict[int, float]]
    lead: float = 0.0  # how far a CPU may run ahead of its GPU, seconds
    hosted: bool = False  # whether ranks have a host clock


class OpCosts:
    """Per-op seconds on one topology and cost model, memoised: the same collectives recur on
    every step and rank, and across the candidates of a search."""

    def __init__(self, topo: Topology, cost: CostModel) -> None:
        self.topo = topo
        self.cost = cost
        self._coll: dict[tuple, tuple[float, dict[int, float]]] = {}
        self._send: dict[tuple[int, int, int], tuple[float, tuple[int, ...]]] = {}

    def collective(self, op: Collective) -> tuple[float, dict[int, float]]:
        """(``collective_min_s``, seconds its bytes take on each edge at full capacity)."""
        key = (op.kind, op.group, op.nbytes, op.count, op.asynchronous)
        got = self._coll.get(key)
        if got is None:
            loads, latency = collective_edges(op, self.topo)
            cap = self.topo.capacity
            busy = {e: b / cap[e] for e, b in loads.items()}
            got = self._coll[key] = (latency + max(busy.values()), busy)
        return got

    def send(self, src: int, op: Send) -> tuple[float, tuple[int, ...]]:
        """(uncontended seconds of ``op`` from ``src``, its route's edge ids)."""
        key = (src, op.dst, op.nbytes)
        got = self._send.get(key)
        if got is None:
            topo = self.topo
            got = self._send[key] = (
                topo.route_latency(src, op.dst) + op.nbytes / topo.route_bandwidth(src, op.dst),
                topo.route(src, op.dst))
        return got


def profile(sched: Schedule, topo: Topology, cost: CostModel,
            host: HostModel | None = None,
            only: frozenset[int] | None = None, replay: bool = True,
            costs: OpCosts | None = None) -> ScheduleProfile:
    """``ScheduleProfile`` of the ranks ``sched`` holds ops for (a partial schedule built with
    ``only`` leaves the others empty), or of ``only`` those; with ``replay``, the events
    ``_pipeline_bound`` replays. ``costs`` (for ``topo`` and ``cost``) may be shared by the
    schedules of several candidates: their collectives and sends recur."""
    costs = costs or OpCosts(topo, cost)
    hosted = host is not None and host.active
    lead = host.max_lead_s if hosted else 0.0
    cap = topo.capacity
    edges: dict[int, dict[int, float]] = {}
    seen: set[tuple] = set()  # (tag, group, occurrence) of collectives already on the edges
    ranks: dict[int, RankProfile] = {}
    # A patch's path matters only through several stages (one stage's path is part of its
    # rank's ops, which the rank's clocks already hold).
    stages = sched.layout.stages if sched.layout is not None else 1
    pipelined = stages > 1 and (only is None or len(only) == stages)
    record = pipelined and replay
    for rank, ops in enumerate(sched.ranks):
        if not ops or (only is not None and rank not in only):
            continue
        prof = ranks[rank] = RankProfile()
        clocks, slots, sent = prof.clocks, prof.slots, prof.sent
        listed: Counter = Counter()  # this rank's occurrences of each (tag, group)
        events = prof.events
        seg, run = BEFORE, _Run(lead, hosted)  # the current segment and its clocks so far
        slot, path = None, _Run(lead, hosted)  # the current patch slot and its clocks so far
        merge = 0.0  # the ring's merges the next compute op carries (sim.engine, exactly)
        carry = 0.0  # and the ring's host seconds, issued with it
        for op in ops:
            kind = type(op)
            if kind is Recv and op.tag.what == "latent":
                # Left out (a lower bound may leave ops out): a step's latent receives
                # depend on the step before, so a template's step would not match every step
                # it stands for (a W=0 run's first step receives nothing). The replay waits
                # for the latent when the step before sent it, without its host time.
                if record:
                    events.setdefault(seg, []).append((2, 0.0, "latent", op.tag.patch))
                continue
            tag = None if kind is Compute else op.tag
            step = op.step if tag is None else tag.step
            # Segments follow the rank's order: before the loop, its steps (a wait for the
            # step before stays in the current step), after it.
            if step < 0:
                step = BEFORE if seg == BEFORE else AFTER
            elif seg == AFTER or (seg >= 0 and step < seg):
                step = seg
            if step != seg:
                clocks[seg] = then(clocks.get(seg, IDENTITY), run.clocks())
                seg, run = step, _Run(lead, hosted)
            # The op's patch slot, when it is on a patch's path (receives are left out: they
            # only wait, and a lower bound may leave ops out).
            key = None
            if pipelined:
                if kind is Compute:
                    if op.kind in _CHAIN_KINDS:
                        key = (op.step, op.patch)
                elif kind is not Recv and tag.what in _PATH_TAGS:
                    key = (tag.step, tag.patch)
                if key is not None and key != slot:
                    if slot is not None:
                        slots[slot] = then(slots.get(slot, IDENTITY), path.clocks())
                    slot, path = key, _Run(lead, hosted)
            h = host.seconds(op) if hosted else 0.0
            if record:
                trail = events.setdefault(seg, [])
            if kind is Compute:
                g = cost.compute_time(op)
                if merge:
                    g, merge = g + merge, 0.0
                if carry:
                    h, carry = h + carry, 0.0
                pieces = host.granularity(op) if hosted else 1
                run.compute(g, h, pieces)
                if key is not None:
                    path.compute(g, h, pieces)
                if record:
                    trail.append((0, h, g, pieces))
            elif kind is Collective:
                if len(op.group) <= 1:
                    continue
                floor, busy = costs.collective(op)
                if op.kind == OpKind.RING_KV:
                    merge += ring_merge_seconds(topo, op, sched.dtype_bytes)
                    carry, h = carry + h, 0.0
                occurrence = (tag, op.group)
                listed[occurrence] += 1
                meeting = (*occurrence, listed[occurrence])
                if meeting not in seen:  # every member lists it: its flows count once
                    seen.add(meeting)
                    on = edges.setdefault(seg, {})
                    for e, s in busy.items():
                        on[e] = on.get(e, 0.0) + s
                awaited = tag if op.asynchronous else None
                run.collective(h, op.count, floor, awaited)
                if key is not None:
                    path.collective(h, op.count, floor, awaited)
                if record:
                    trail.append((3, h, op.count, floor, awaited))
            elif kind is Send:
                alone, route = costs.send(rank, op)
                on = edges.setdefault(seg, {})
                for e in route:
                    on[e] = on.get(e, 0.0) + op.nbytes / cap[e]
                run.send(h)
                if key is not None:
                    path.send(h)
                    if tag.what in ("hidden", "latent"):
                        sent[key] = sent.get(key, 0.0) + alone
                if record:
                    trail.append((1, h, tag.what, tag.patch, alone))
            elif kind is Wait:
                run.wait(h, tag)
                if key is not None:
                    path.wait(h, tag)
                if record:
                    trail.append((4, h, tag))
            elif kind is Recv:
                run.wait(h, None)
                if record:
                    trail.append((2, h, tag.what, tag.patch))
            else:
                raise TypeError(f"unknown op {op!r}")
        clocks[seg] = then(clocks.get(seg, IDENTITY), run.clocks())
        if slot is not None:
            slots[slot] = then(slots.get(slot, IDENTITY), path.clocks())
    return ScheduleProfile(ranks, edges, lead, hosted)


# A run as segments in order: (segment key of the short schedule, copies in the run, warm).
Run = list[tuple[int, int, bool]]


def _rank_bound(prof: RankProfile, run: Run) -> float:
    """The GPU clock at the end of ``run`` for one rank, both clocks starting at 0."""
    total = IDENTITY
    for s, n, _ in run:
        if n and s in prof.clocks:
            total = then(total, repeat(prof.clocks[s], n))
    return max(total[0], total[1])


def _edge_bound(edges: dict[int, dict[int, float]], run: Run) -> float:
    """The busiest edge's seconds at full capacity over the whole run."""
    total: dict[int, float] = {}
    for s, n, _ in run:
        for e, busy in edges.get(s, {}).items():
            total[e] = total.get(e, 0.0) + n * busy
    return max(total.values(), default=0.0)


def _chain_bound(sched: Schedule, prof: ScheduleProfile, run: Run) -> float:
    """The longest path of one patch through the pipeline, seconds, along the chain of stage
    peers ``prof`` holds (its ranks, in stage order): stage 0's ops before the loop, then for
    every step of ``run`` the patch's ops on every stage (``RankProfile.slots``) and the
    transfers between them, then the last stage's ops after the loop. Each part waits for the
    one before (hidden states from the stage before, the latent from the step before), so no
    run is shorter. A stage's CPU clock is not carried to the next stage (only its lead cap
    binds there)."""
    chain = [prof.ranks[r] for r in sorted(prof.ranks)]
    if not chain or sched.layout is None or len(chain) != sched.layout.stages:
        return 0.0
    steps = [(step, copies, warm) for step, copies, warm in run if step >= 0 and copies]
    paths: dict[tuple[int, int], Clocks] = {}

    def path(key: tuple[int, int]) -> Clocks:
        one = paths.get(key)
        if one is None:
            one = IDENTITY
            for r in chain:
                # Over to the next stage: the transfer, and a CPU clock known only from the
                # GPU's (the lead cap).
                one = then(then(one, r.slots.get(key, IDENTITY)),
                           (r.sent.get(key, 0.0), _NONE, _NONE, _NONE))
            paths[key] = one
        return one

    # Patches of equal size take equal paths: each distinct path is followed once.
    routes = {tuple(path((step, -1 if warm else j)) for step, _, warm in steps)
              for j in range(sched.patches)}
    start = chain[0].clocks.get(BEFORE, IDENTITY)
    end = chain[-1].clocks.get(AFTER, IDENTITY)
    best = 0.0
    for route in routes:
        total = start
        for one, (_, copies, _) in zip(route, steps):
            total = then(total, repeat(one, copies))
        total = then(total, end)
        best = max(best, total[0], total[1])
    return best


def _pipeline_bound(prof: ScheduleProfile, run: Run) -> float:
    """The engine's rules replayed step after step on the chain of stage peers ``prof`` holds
    (every stage), each stage receiving the hidden states of a patch when the stage before
    sent them plus their uncontended transfer, and stage 0 the latent the last stage sent in
    the step before, with nothing else in the way (other ranks, links shared): a lower bound
    that sees the pipeline fill and drain, the warmup's full-image steps passing through every
    stage in turn, and how a stage's CPU lead and its waits combine. 0 without events."""
    chain = [prof.ranks[r] for r in sorted(prof.ranks)]
    if not chain or not chain[0].events:
        return 0.0
    lead, hosted = prof.lead, prof.hosted
    clock = [[0.0, 0.0] for _ in chain]  # per stage: GPU clock, CPU clock
    latent: dict[int, float] = {}  # patch -> when its latent reaches stage 0 (step before)
    order = [(BEFORE, 1)] + [(s, n) for s, n, _ in run if s >= 0 and n] + [(AFTER, 1)]
    for seg, copies in order:
        for _ in range(copies):
            hidden: dict[int, float] = {}  # patch -> arrival at the next stage
            sent_latent: dict[int, float] = {}
            for r, stage in enumerate(chain):
                T, c = clock[r]
                arrived, hidden = hidden, {}
                issued: dict = {}
                for ev in stage.events.get(seg, ()):
                    code, h = ev[0], ev[1]
                    if hosted and T - lead > c:
                        c = T - lead
                    if code == 0:  # compute
                        g, pieces = ev[2], ev[3]
                        if hosted:
                            T = max(T + g, c + max(h / pieces + g, h + g / pieces))
                            c += h
                        else:
                            T += g
                    elif code == 1:  # send
                        c += h
                        if hosted and c > T:
                            T = c
                        if ev[2] == "hidden":
                            hidden[ev[3]] = T + ev[4]
                        elif ev[2] == "latent":
                            sent_latent[ev[3]] = T + ev[4]
                    elif code == 2:  # receive
                        c += h
                        if hosted and c > T:
                            T = c
                        source = arrived if ev[2] == "hidden" else (
                            latent if ev[2] == "latent" else {})
                        T = max(T, source.get(ev[3], T))
                    elif code == 3:  # collective
                        count, floor, awaited = ev[2], ev[3], ev[4]
                        if hosted:
                            T = max(T, c + h / count)
                            c += h
                        if awaited is not None:
                            issued[awaited] = T + floor
                        else:
                            T = max(T + floor, c) if hosted else T + floor
                    else:  # wait
                        c += h
                        if hosted and c > T:
                            T = c
                        T = max(T, issued.pop(ev[2], T))
                clock[r] = [T, c]
            latent = sent_latent
    return max(T for T, _ in clock)


def bound_of(sched: Schedule, prof: ScheduleProfile, run: Run) -> float:
    """The lower bound (seconds) of a run made of ``run``'s segments of ``sched``: the largest
    of the rank, host, link, patch-path and pipeline bounds (module docstring)."""
    best = max((_rank_bound(p, run) for p in prof.ranks.values()), default=0.0)
    return max(best, _edge_bound(prof.edges, run), _chain_bound(sched, prof, run),
               _pipeline_bound(prof, run))


def latency_lower_bound(wl: Workload, cfg: ParallelConfig, gpu: GPU, topo: Topology,
                        cost: CostModel | None = None, scale: float = 1.0,
                        spec: CostSpec | None = None) -> tuple[float, list[MemoryBreakdown]]:
    """A latency no simulation of ``cfg`` (planner mode) can beat, seconds, without running
    the engine (module docstring), and the memory per rank (which needs no simulation)."""
    return lower_bounds(wl, [cfg], gpu, topo, cost or (spec or CostSpec()).build(wl, gpu, scale),
                        template=False)[0]


def _bound_ranks(cfg: ParallelConfig, ends: bool = False) -> frozenset[int]:
    """The ranks whose ops the bounds sum: one chain of stage peers, the one that holds the
    VAE decode (first CFG half, first sequence position); with ``ends``, only its first and
    last stages."""
    layout = RankLayout.of(cfg)
    chain = layout.group(layout.rank(stage=layout.stages - 1), "stage")
    return frozenset((chain[0], chain[-1]) if ends else chain)


def refinements(cfg: ParallelConfig) -> list[dict[str, bool]]:
    """The ``lower_bounds`` options that may bound ``cfg`` higher than the one before, quickest
    first: the first and last stages without a replay, every stage, then the replay (a
    pipeline only: without stages there is nothing to add)."""
    if cfg.pipefusion == 1:
        return [dict(ends=True, replay=False)]
    if cfg.pipefusion == 2:  # its ends are every stage
        return [dict(ends=True, replay=False), dict(ends=False, replay=True)]
    return [dict(ends=True, replay=False), dict(ends=False, replay=False),
            dict(ends=False, replay=True)]


def lower_bounds(wl: Workload, cfgs: list[ParallelConfig], gpu: GPU, topo: Topology,
                 cost: CostModel, template: bool = True, ends: bool = False,
                 replay: bool = True, memory: bool = True,
                 costs: OpCosts | None = None) -> list[tuple[float, list[MemoryBreakdown]]]:
    """``latency_lower_bound`` of each of ``cfgs``, seconds, with the memory per rank (an
    empty list without ``memory``: a refined bound needs none).

    Configurations that differ only in their warmup count share one ``template``: a
    three-step schedule with one warmup step holds a warm step, a steady step and the last
    step, and a run with ``W <= S - 2`` warmup steps of ``S`` is ``W`` warm steps,
    ``S - W - 1`` steady ones and the last. Without ``template`` (and for the other runs)
    each gets its own short schedule (``W + 2`` steps, middle step repeated). A template's
    step may hold fewer ops than a step it stands for (the first steady step waits for no
    asynchronous K,V of the step before), never more.

    With ``ends`` only the first and last pipeline stages are built (``refinements``), and
    without ``replay`` the pipeline is not replayed over every step (``_pipeline_bound``, the
    costliest part): quicker, lower bounds, which the planner refines only where it has to.
    ``costs`` (``OpCosts`` of ``topo`` and ``cost``) carries memoised op costs from one call
    to the next."""
    host = HostModel(wl.model, gpu)
    costs = costs or OpCosts(topo, cost)
    out: list[tuple[float, list[MemoryBreakdown]] | None] = [None] * len(cfgs)
    groups: dict[ParallelConfig, list[int]] = {}
    for i, c in enumerate(cfgs):
        # A run without a steady step before its last gets its own short schedule (the
        # template's last step follows a steady one).
        shared = template and c.warmup <= wl.steps - 2
        groups.setdefault(replace(c, warmup=0) if shared else c, []).append(i)
    for base, members in groups.items():
        ranks = _bound_ranks(base, ends)
        if base.warmup == 0 and template and \
                all(cfgs[i].warmup <= wl.steps - 2 for i in members):
            sched = build_schedule(replace(wl, steps=3), replace(base, warmup=1), coarse=True,
                                   only=ranks)
            prof = profile(sched, topo, cost, host, ranks, replay, costs)
            # Memory depends on the warmup only through whether there is one and whether
            # every step is one (``sim.memory.memory_per_rank``): shared by the others.
            mems: dict[tuple[bool, bool], list[MemoryBreakdown]] = {}
            for i in members:
                w = cfgs[i].warmup
                run = [(BEFORE, 1, True), (0, w, True), (1, wl.steps - w - 1, False),
                       (2, 1, False), (AFTER, 1, False)]
                mem: list[MemoryBreakdown] = []
                if memory:
                    key = (w > 0, w < wl.steps)
                    if key not in mems:
                        shape = replace(sched, warmup=w, steps=wl.steps)
                        mems[key] = memory_per_rank(wl, cfgs[i], shape, gpu)
                    mem = mems[key]
                out[i] = (bound_of(sched, prof, run), mem)
            continue
        for i in members:
            cfg = cfgs[i]
            short_steps = min(wl.steps, cfg.warmup + 2)
            sched = build_schedule(replace(wl, steps=short_steps), cfg, coarse=True,
                                   only=ranks)
            repeat = wl.steps - short_steps  # extra copies of the middle step (cfg.warmup)
            middle = cfg.warmup if short_steps - 1 > cfg.warmup else None
            run = [(BEFORE, 1, True)] + [(t, 1 + repeat if t == middle else 1, t < cfg.warmup)
                                         for t in range(short_steps)] + [(AFTER, 1, False)]
            out[i] = (bound_of(sched, profile(sched, topo, cost, host, ranks, replay, costs), run),
                      memory_per_rank(wl, cfg, sched, gpu) if memory else [])
    return out  # type: ignore[return-value]
