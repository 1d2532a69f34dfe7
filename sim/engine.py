"""Discrete-event engine: runs a schedule on a topology with a cost model.

One process per rank walks its op list: a compute op holds the rank for its cost; a send
starts a transfer and moves on (asynchronous, as ``isend``); a receive waits until its data has
arrived. Transfers are fluid flows over the route's directed edges, shared max-min fairly
(``sim.network``): whenever a flow starts or ends every flow's rate is recomputed, so traffic
that meets on the socket link or a NIC slows down for as long as it overlaps. Time is in
seconds. The event loop is ``sim.des`` (simpy's order of events, less of its cost).
"""

from __future__ import annotations

from collections.abc import Callable

from sim import des
from sim.cost import CostModel
from sim.des import Environment, Event, paused_gc
from sim.host import HostModel
from sim.nccl import protocol
from sim.network import Network, _Flow  # noqa: F401  (_Flow re-exported for tests)
from sim.schedule import (
    Collective,
    Compute,
    Op,
    OpKind,
    Recv,
    Schedule,
    ScheduleError,
    Send,
    Tag,
    Wait,
    deadlock_message,
)
from sim.symmetry import Orbit, shift_classes
from sim.topology import Topology
from sim.trace import CopiedTrace, Trace, TraceRow


# Ring algorithms (NCCL's default for these sizes) take n-1 steps per phase; all-to-all is a
# direct exchange launched as one grouped step. A ring's steps move equal chunks over the same
# routes, so the engine runs them as one flow of the summed bytes per ring edge and charges
# the per-step latency once per step: identical under steady sharing, far fewer events.
def collective_plan(kind: str, n: int, nbytes: float) -> tuple[str, float, int]:
    """(pattern, bytes per flow, latency steps) of a collective over ``n`` ranks whose input
    is ``nbytes`` per rank. Bytes per flow are also the bytes each rank sends."""
    if kind == OpKind.ALL_REDUCE:  # reduce-scatter then all-gather, each n-1 steps of nbytes/n
        return "ring", 2.0 * (n - 1) / n * nbytes, 2 * (n - 1)
    if kind == OpKind.REDUCE_SCATTER:
        return "ring", (n - 1) / n * nbytes, n - 1
    if kind in (OpKind.ALL_GATHER, OpKind.RING_KV):  # every rank's block travels n-1 hops
        return "ring", (n - 1) * nbytes, n - 1
    if kind == OpKind.ALL_TO_ALL:  # each rank sends nbytes/n to every other rank
        return "direct", nbytes / n, 1
    raise ValueError(f"unknown collective {kind!r}")


def collective_flows(kind: str, group: tuple[int, ...] | list[int], nbytes: float
                     ) -> tuple[list[tuple[int, int]], float, int]:
    """The point-to-point flows (src, dst) a collective over ``group`` runs, the bytes each
    carries and the number of latency steps (see ``collective_plan``)."""
    g = list(group)
    n = len(g)
    pattern, per_flow, lat_steps = collective_plan(kind, n, nbytes)
    if pattern == "ring":
        pairs = [(g[i], g[(i + 1) % n]) for i in range(n)]
    else:
        pairs = [(a, b) for a in g for b in g if a != b]
    return pairs, per_flow, lat_steps


# The GPU memory traffic of the sequence-parallel wrappers themselves (yunchang, which xDiT's
# USP runs), charged on NCCL clusters at the GPU's memory bandwidth. Around each Ulysses
# all-to-all two contiguous copies (before the call and after it) each read and write the
# whole message: 4 bytes moved per byte sent. (On NVLink such copies cost 38-43 % of the
# all-to-all, pytorch #178066; this gives 41-50 % at 32-256 MB on A100 and H100 SXM.) After
# each ring step the partial output is merged into the running one in fp32: a cast (d bytes
# read, 4 written), out - out_b (8 read, 4 written), times the weight (4 read, 4 written),
# and out minus that (8 read, 4 written), i.e. 36 + d bytes per output element of d bytes.
ULYSSES_COPY_BYTES_PER_BYTE = 4
RING_MERGE_BYTES_PER_ELEMENT = 36


def ring_merge_seconds(topo: Topology, op: Collective, dtype_bytes: int) -> float:
    """GPU seconds of the merges of partial outputs one ring rotation ``op`` leads to
    (``op.count`` rotations of ``len(op.group) - 1`` steps; ``op.nbytes`` carries a rank's K
    and V, as many elements each as its output), 0 where the topology has no GPU memory
    bandwidth (CPU processes: their profiles time what they run)."""
    if not topo.memory_bandwidth:
        return 0.0
    elements = op.nbytes / (2 * dtype_bytes)
    per_step = (RING_MERGE_BYTES_PER_ELEMENT + dtype_bytes) * elements
    return op.count * (len(op.group) - 1) * per_step / topo.memory_bandwidth


def collective_call(topo: Topology, kind: str, group: tuple[int, ...] | list[int],
                    nbytes: float, asynchronous: bool = False
                    ) -> tuple[list[tuple[int, int]], float, float]:
    """The flows one call of a collective runs on ``topo`` (GPU indices in ``group``), the
    bytes each flow moves and the call's fixed latency, seconds.

    Where a link profile timed this collective at this group size on the links its flows
    cross (``Topology.measured_collective``; an asynchronous call takes the timing with the
    ranks busy, ``<kind>_async``, when there is one), the call alone lasts exactly the
    measured time: the flows keep their bytes, so concurrent traffic still slows them, and the
    latency is what the measurement leaves beyond the wire time (when the wire alone would
    take longer, the flows carry the bytes the measured time moves at the route's rate).
    Otherwise the model: on NCCL clusters the latency and protocol follow NCCL's model
    (``sim.nccl``) and an all-to-all through host memory moves its bytes at the many-to-many
    efficiency; between CPU processes (gloo) every latency step costs the route's latency."""
    pairs, per_flow, lat_steps = collective_flows(kind, group, nbytes)
    names = (kind + OpKind.ASYNC_SUFFIX, kind) if asynchronous else (kind,)
    measured = topo.measured_collective(names, group, pairs, nbytes)
    if measured is not None:
        wire = per_flow / min(topo.route_bandwidth(a, b) for a, b in pairs)
        if wire <= measured:
            return pairs, per_flow, measured - wire
        return pairs, per_flow * measured / wire, 0.0
    if not topo.nccl:
        return pairs, per_flow, max(topo.route_latency(a, b) for a, b in pairs) * lat_steps
    if kind == OpKind.ALL_TO_ALL:
        per_flow /= topo.all_to_all_efficiency(group)
    bandwidth = min(topo.route_bandwidth(a, b) for a, b in pairs)
    latency, factor = protocol(kind, len(group), per_flow, bandwidth, topo.link == "nvlink",
                               topo.net_hop_latency(group))
    if kind == OpKind.ALL_TO_ALL and topo.memory_bandwidth:  # its layout copies
        latency += ULYSSES_COPY_BYTES_PER_BYTE * nbytes / topo.memory_bandwidth
    return pairs, per_flow * factor, latency


def collective_host(host_time: Callable[[int, int, float], float], op: Collective, rank: int,
                    offset: int) -> float:
    """Seconds of its own time rank ``rank`` spends on the messages of the collective ``op``
    on a CPU transport: every message it sends and every one it receives costs it the
    measured host time per message of a collective (``host_time``:
    ``Topology.route_host_coll``, both directions on one process group), as a
    point-to-point message costs its own. A ring's step sends one chunk to the next member
    and receives one from the previous; a direct exchange sends one to and receives one from
    every other member."""
    group = op.group
    n = len(group)
    if n <= 1:
        return 0.0
    pattern, per_flow, steps = collective_plan(op.kind, n, op.nbytes)
    me = group.index(rank)
    gpu = rank + offset
    if pattern == "ring":
        chunk = per_flow / steps
        nxt, prev = group[(me + 1) % n] + offset, group[me - 1] + offset
        one = host_time(gpu, nxt, chunk) + host_time(prev, gpu, chunk)
        return op.count * steps * one
    return op.count * sum(host_time(gpu, p + offset, per_flow) + host_time(p + offset, gpu,
                                                                           per_flow)
                          for p in group if p != rank)


def collective_bytes_sent(kind: str, n: int, nbytes: float, count: int = 1) -> float:
    """Bytes one member sends in ``count`` collectives of ``kind`` (input ``nbytes``)."""
    if n <= 1:
        return 0.0
    pattern, per_flow, _ = collective_plan(kind, n, nbytes)
    return count * per_flow * (n - 1 if pattern == "direct" else 1)


class _Rendezvous:
    __slots__ = ("arrived", "nbytes", "event", "start", "end", "group", "plan", "env", "op")

    def __init__(self, env: Environment, group: tuple[int, ...], silent: bool = False) -> None:
        self.arrived = 0
        self.nbytes = 0
        # None: no process can wait for it (an image collective only its representative
        # started, which waits for its own): its end is recorded, no event is queued.
        self.event = None if silent else env.event()
        self.start = 0.0
        self.end = 0.0
        self.group = group
        self.plan: tuple | None = None
        self.env = env
        self.op: Collective | None = None  # the collective, as the last member listed it

    def finish(self) -> None:
        """The collective's transfers have all arrived."""
        self.end = self.env.now
        if self.event is not None:
            self.event.succeed()


class _Asymmetric(Exception):
    """An image rank's message or collective did not end when its original's did (the
    links are not symmetric for it): the shortcut of ``shift_classes`` does not hold."""


def simulate(schedule: Schedule, topo: Topology, cost: CostModel,
             rank_offset: int = 0, host: HostModel | None = None,
             mirrors: bool = True, shifts: bool = True,
             orbits: dict[int, Orbit] | None = None) -> Trace:
    """Run ``schedule`` with ranks placed on the topology's GPUs ``rank_offset..``; returns
    the trace (one row per executed op, times in seconds from the start).

    With a ``host`` model each rank also has a CPU clock: every op costs the CPU its host
    seconds to issue, the CPU runs ahead of the GPU, and no op starts before it is issued
    (``sim.host``). Without one (or an inactive one) ops start as soon as the GPU is free.

    Raises ``ScheduleError`` when the run shows the schedule broken: a rank cannot finish
    (deadlock: each stuck rank is named with the op it is blocked on), a message is never
    received, an asynchronous collective is never waited for or a ``Wait`` has no collective.
    These checks cost nothing on the way; ``build_schedule`` has already run the full
    ``Schedule.validate`` (sizes and shapes too) on the schedules it returns.

    With ``mirrors`` (the default) ranks whose op lists are equal and hold no point-to-point
    message (the members of a pure Ulysses, ring, tensor or CFG group, but for the rank that
    decodes the image) are simulated once: such ranks start together, run ops of equal cost,
    and meet only in collectives, which end at one instant for every member, so their
    timelines are equal. The representative's arrival at a collective counts for its whole
    class, the collective's flows still cross the topology as every member's, and its rows
    are copied to each mirror rank afterwards. ``mirrors=False`` simulates every rank (the
    tests check that both give the same trace).

    With ``mirrors`` and ``shifts`` (the default), ranks that run the images of another
    rank's ops under a shift of their ring, Ulysses, tensor, CFG or patch coordinates
    (``sim.symmetry.shift_classes``: the ranks of one hybrid stage, which send to their own
    peers and talk in their own groups) are simulated once too, and their traffic still
    runs: the representative sends each image's messages and joins each image's collectives
    when it does its own. An image rank's timeline equals its original's as long as every
    image message and collective ends when the original does and costs the same alone; the
    run checks that (to 1e-9 relative) and, should one differ (links that are not
    symmetric), simulates again without the shortcut. CPU transports (host time per
    message, per route) never take it.

    ``orbits``: ``shift_classes`` of ``schedule``, when the caller has them already."""
    if schedule.world_size + rank_offset > topo.num_gpus:
        raise ValueError(f"schedule needs {schedule.world_size} GPUs, topology has "
                         f"{topo.num_gpus}")
    with paused_gc():
        if mirrors and shifts and not any(topo.host) and not any(topo.host_coll):
            images = orbits if orbits is not None else shift_classes(schedule.ranks,
                                                                      schedule.layout)
            if images:
                try:
                    return _run(schedule, topo, cost, rank_offset, host, {}, images)
                except (_Asymmetric, ScheduleError):
                    pass  # a broken schedule is named by the run below
        return _run(schedule, topo, cost, rank_offset, host,
                    mirror_classes(schedule.ranks) if mirrors else {}, {})


def _run(schedule: Schedule, topo: Topology, cost: CostModel, rank_offset: int,
         host: HostModel | None, copies: dict[int, list[int]],
         images: dict[int, Orbit]) -> Trace:
    """``simulate`` with the ranks of ``copies`` (representative -> equal ranks) and of
    ``images`` (representative -> its orbit) simulated by their representative (the images
    of an orbit with a ``prefix`` get their own process from there on)."""
    env = Environment()
    net = Network(env, topo)
    rows: list[TraceRow] = []
    # Rows built inline, as ``TraceRow.for_compute`` and ``TraceRow.for_message`` build
    # them (one call fewer for every op).
    new_row = tuple.__new__
    at = [0] * schedule.world_size  # index of the op each rank is on, to name a deadlock
    weight = [1] * schedule.world_size
    for rep, others in copies.items():
        weight[rep] += len(others)
    mailbox: dict[tuple, Event] = {}  # (src, dst, tag) -> arrival, until received

    def slot(key: tuple) -> Event:
        ev = mailbox.get(key)
        if ev is None:
            ev = mailbox[key] = env.event()
        return ev

    meetings: dict[tuple, _Rendezvous] = {}
    pending: dict[tuple, _Rendezvous] = {}

    # Image ranks (``images``): each one's representative, the shift and its inverse; what
    # the run must show for the shortcut to hold (checked after it): image collectives that
    # start and end with their originals, image messages that arrive with theirs.
    image_of: dict[int, tuple[int, list[int], list[int]]] = {}
    for r, orbit in images.items():
        for m, perm in orbit.images:
            inverse = [0] * len(perm)
            for a, b in enumerate(perm):
                inverse[b] = a
            image_of[m] = (r, perm, inverse)
    same_collective: list[tuple[_Rendezvous, _Rendezvous]] = []
    same_arrival: list[tuple[tuple, float]] = []  # (original's (src, dst, tag), arrival)
    same_route: set[tuple[int, int, int, int]] = set()
    arrived_at: dict[tuple, float] = {}
    image_groups: dict[tuple, tuple[int, ...]] = {}

    def image_group(group: tuple[int, ...], perm: list[int]) -> tuple[int, ...]:
        key = (group, id(perm))
        g = image_groups.get(key)
        if g is None:
            g = image_groups[key] = tuple(sorted(perm[x] for x in group))
        return g

    def deliver(src: int, dst: int, tag: Tag, start: float) -> None:
        """A message has arrived at ``dst``: into its mailbox, or, for an image rank (not
        simulated), checked against the arrival of the message it is the image of."""
        if dst in image_of:
            rep, _, inverse = image_of[dst]
            same_arrival.append(((inverse[src], rep, tag), env.now))
            return
        if image_of or images:
            arrived_at[(src, dst, tag)] = env.now
        slot((src, dst, tag)).succeed(start)

    def meet(op: Collective, group: tuple[int, ...], arrivals: int,
             ready: list[_Rendezvous]) -> _Rendezvous:
        """``arrivals`` members of ``group`` reach collective ``op``; once all are in, it is
        added to ``ready`` (to be launched)."""
        key = (op.tag, group)
        rv = meetings.get(key)
        if rv is None:
            rv = meetings[key] = _Rendezvous(env, group)
        rv.arrived += arrivals
        rv.nbytes = max(rv.nbytes, op.nbytes)
        rv.op = op
        if rv.arrived == len(group):
            del meetings[key]
            ready.append(rv)
        return rv

    joined: dict[tuple, tuple[int, list[tuple[tuple[int, ...], int]]]] = {}

    def joins(rank: int, group: tuple[int, ...], orbit: list[tuple[int, list[int]]]
              ) -> tuple[int, list[tuple[tuple[int, ...], int]]]:
        """The groups a representative and its images join for a collective over
        ``group``, each once with its number of arrivals, and which is the
        representative's own. Listed in the order in which joining them one rank at a time
        (the representative, then each image) completes them: a group is complete once
        its last arrival is in."""
        key = (rank, group)
        got = joined.get(key)
        if got is None:
            seq = [(image_group(group, identity), weight[rank])]
            seq += [(image_group(group, perm), 1) for _, perm in orbit]
            count: dict[tuple[int, ...], int] = {}
            last: dict[tuple[int, ...], int] = {}
            for k, (g, n) in enumerate(seq):
                count[g] = count.get(g, 0) + n
                last[g] = k
            order = sorted(count, key=last.__getitem__)
            got = joined[key] = (order.index(seq[0][0]), [(g, count[g]) for g in order])
        return got

    # Steady steps issue the same collectives over and over: their flows and row fields are
    # worked out once per (kind, group, bytes, count).
    plans: dict[tuple, tuple[tuple[tuple[int, ...], ...], float, float, float]] = {}
    row_fields: dict[tuple, tuple[str, int]] = {}

    def launch_all(op: Collective, ready: list[_Rendezvous]) -> None:
        """``launch`` each of ``ready`` (a collective and its images, all members in); those
        of equal bytes and latency start as one bundle of several parts."""
        if len(ready) == 1:
            launch(ready[0], start=True)
            return
        bundles: dict[tuple, list[_Rendezvous]] = {}
        for rv in ready:
            if launch(rv, start=False):
                bundles.setdefault(rv.plan[1:3], []).append(rv)  # type: ignore[index]
        for (nbytes, latency), rvs in bundles.items():
            routes = tuple(e for rv in rvs for e in rv.plan[0])  # type: ignore[index]
            net.bundle_parts(routes, nbytes, latency,
                             tuple((len(rv.plan[0]), rv.finish) for rv in rvs))  # type: ignore[index]

    def plan_of(op: Collective, group: tuple[int, ...], nbytes: float) -> tuple:
        """(routes, bytes per flow, latency, seconds alone) of ``op`` over ``group`` with
        ``nbytes`` per member, all ``op.count`` calls together."""
        key = (op.kind, group, nbytes, op.count, op.asynchronous)
        plan = plans.get(key)
        if plan is None:
            pairs, per_flow, latency = collective_call(
                topo, op.kind, [r + rank_offset for r in group], nbytes, op.asynchronous)
            bw = min(topo.route_bandwidth(a, b) for a, b in pairs)
            plan = plans[key] = (tuple([topo.route(a, b) for a, b in pairs]), per_flow * op.count,
                                 latency * op.count, op.count * (latency + per_flow / bw))
        return plan

    def launch(rv: _Rendezvous, start: bool) -> bool:
        """All members are in: run the collective's transfers on the topology (``start``)
        or only plan them (True when there are transfers to start)."""
        op = rv.op
        rv.start = env.now
        group = rv.group
        if len(group) == 1:
            rv.finish()
            return False
        plan = rv.plan = plan_of(op, group, rv.nbytes)
        if start:
            net.bundle_routes(plan[0], plan[1], plan[2], rv.finish)
        if op.asynchronous and slowdown > 1.0:  # the members compute meanwhile
            busy(group, env.now + plan[3])
        return True

    def busy(group: tuple[int, ...], until: float) -> None:
        """The GPUs of ``group`` move data until ``until`` (an asynchronous collective's
        transfers alone, from now): compute run meanwhile slows down."""
        for r in group:
            if until > comm_until[r]:
                comm_until[r] = until
                comm_from[r] = env.now

    # A representative and its images whose arrivals alone complete every group they join
    # (a stage's ring and tensor collectives): per (rank, collective) the groups, their
    # plans and bundles, worked out once; the rendezvous start at once, no meeting kept.
    orbit_calls: dict[tuple, tuple | None] = {}

    def orbit_call(rank: int, op: Collective, orbit: list[tuple[int, list[int]]]
                   ) -> tuple | None:
        """(own group's index, [(group, arrivals)], plan per group (None: a group of one),
        bundles as (routes, bytes, latency, ((group index, flows), ...))) of ``op`` joined
        by ``rank`` and its images, as ``launch_all`` would start them; None unless their
        arrivals complete every group."""
        key = (rank, op.kind, op.group, op.nbytes, op.count, op.asynchronous)
        if key in orbit_calls:
            return orbit_calls[key]
        own, joining = joins(rank, op.group, orbit)
        call = None
        if all(n == len(g) for g, n in joining):
            nbytes = max(0, op.nbytes)
            group_plans = [plan_of(op, g, nbytes) if len(g) > 1 else None for g, _ in joining]
            bundles: dict[tuple, list[int]] = {}
            for k, plan in enumerate(group_plans):
                if plan is not None:
                    bundles.setdefault(plan[1:3], []).append(k)
            call = (own, joining, group_plans,
                    [(tuple(e for k in ks for e in group_plans[k][0]), nbytes, latency,
                      tuple((k, len(group_plans[k][0])) for k in ks))
                     for (nbytes, latency), ks in bundles.items()])
        orbit_calls[key] = call
        return call

    def join_orbit(rank: int, op: Collective, orbit: list[tuple[int, list[int]]]
                   ) -> _Rendezvous:
        """``rank`` and its images reach ``op``, each joining its image collective (started
        once all members are in); returns ``rank``'s own."""
        call = orbit_call(rank, op, orbit) if not meetings else None
        if call is None or len(call[1]) == 1:
            ready: list[_Rendezvous] = []
            own, joining = joins(rank, op.group, orbit)
            rvs = [meet(op, g, n, ready) for g, n in joining]
            rv = rvs[own]
            same_collective.extend((rv, other) for other in rvs if other is not rv)
            if ready:
                launch_all(op, ready)
            return rv
        # ``meet`` and ``launch_all`` for every group complete at once, in their order.
        own, joining, group_plans, bundles = call
        now = env.now
        nbytes = max(0, op.nbytes)
        rvs = []
        for k, ((g, n), plan) in enumerate(zip(joining, group_plans)):
            rv = _Rendezvous(env, g, silent=k != own)
            rv.arrived, rv.nbytes, rv.op, rv.start = n, nbytes, op, now
            rvs.append(rv)
            if plan is None:
                rv.finish()
                continue
            rv.plan = plan
            if op.asynchronous and slowdown > 1.0:
                busy(g, now + plan[3])
        rv = rvs[own]
        same_collective.extend([(rv, other) for other in rvs if other is not rv])
        for routes, size, latency, parts in bundles:
            net.bundle_parts(routes, size, latency,
                             tuple([(flows, rvs[k].finish) for k, flows in parts]))
        return rv

    def collective_row(rank: int, op: Collective, rv: _Rendezvous,
                       out: list[TraceRow]) -> None:
        key = (op.kind, op.asynchronous, len(op.group), op.nbytes, op.count)
        fields = row_fields.get(key)
        if fields is None:
            fields = row_fields[key] = (
                op.kind + (OpKind.ASYNC_SUFFIX if op.asynchronous else ""),
                int(collective_bytes_sent(op.kind, len(op.group), op.nbytes, op.count)))
        what, t_step, t_patch, layer = op.tag
        out.append(new_row(TraceRow, (rank, fields[0], t_step, t_patch, layer, layer,
                                      rv.start, env.now, fields[1], -1, "model", what)))

    # Bound once: the loop below runs for every op of every rank.
    timeout, compute_time, source = env.timeout, cost.compute_time, cost.source
    # A rank that would wait for a timeout the loop resumes it from next, with nothing run
    # in between (``sim.des.Environment.idle_until``), moves the clock itself: the same
    # instant (``now + delay``, as the timeout computes it), one event fewer. simpy's loop
    # (the tests' reference) never does.
    idle = env.idle_until if isinstance(env, des.Environment) else _never
    # Host time is charged only on CPU transports; most topologies have none.
    host_time = topo.route_host if any(topo.host) else None
    coll_host_time = topo.route_host_coll if any(topo.host_coll) else host_time

    hosted = host is not None and host.active
    # Compute slows down while its GPU's own transfers run (sim.hardware.OVERLAP_SLOWDOWN).
    # The overlap is taken from each transfer's uncontended duration, issued time onwards.
    slowdown = topo.overlap_slowdown
    serial_ring = not topo.ring_overlaps  # sim.hardware.RING_EXCHANGE_OVERLAPS
    comm_until = [0.0] * schedule.world_size
    comm_from = [0.0] * schedule.world_size  # when the latest such transfer started

    # A compute op of cost g started at ``start`` takes g + (slowdown - 1) x its overlap with
    # the transfers known then, min(g, comm_until - start) (the "gpu time", worked out inline
    # in ``rank_proc``, which runs it for every op).
    # GPU seconds a rank's next compute op carries besides its own: the merges of partial
    # outputs after a ring rotation's steps run on the compute stream with its attention.
    merge = [0.0] * schedule.world_size
    dtype_bytes = schedule.dtype_bytes
    merges: dict[tuple, float] = {}  # ``ring_merge_seconds`` per (bytes, count, group size)
    host_carry = [0.0] * schedule.world_size  # host seconds the next compute op issues too

    def late_slowdown(rank: int, start: float, end: float, seen: float) -> float:
        """Seconds to add to compute run from ``start`` to ``end`` (its end before any
        slowdown, as the gpu time measures the overlap) for transfers of its GPU that started
        while it ran (an asynchronous collective launched by a member arriving after this
        one started computing): the overlap beyond ``seen``, the end of the transfers known
        at its start, which the gpu time already charged. Measured on the slowed end, the
        charge would depend on which member of a collective arrived last at one instant."""
        late = min(end, comm_until[rank]) - max(start, seen, comm_from[rank])
        return (slowdown - 1.0) * late if late > 0 else 0.0

    cpu_ahead: dict[tuple[int, int], float] = {}
    max_lead = host.max_lead_s if hosted else 0.0

    # Compute ops in a row involve no other rank: where no transfer can slow them down (no
    # overlap slowdown on this topology) a run of them takes one timeout, to the end of the
    # last, and each still gets its own row with its exact start and end.
    fuse = slowdown <= 1.0
    host_seconds = host.seconds if hosted else None
    op_s = host.op_s if hosted else 0.0  # ``HostModel.seconds`` of a send, receive or wait
    granularity = host.granularity if hosted else None
    # A compute op's GPU seconds, host seconds, pieces and cost source, per shape: what
    # both cost models key their own caches on (``CostModel``), one lookup instead of four
    # calls for every compute op.
    shapes: dict[tuple, tuple[float, float, int, str]] = {}

    def shape_cost(op: Compute, key: tuple) -> tuple[float, float, int, str]:
        shapes[key] = got = (compute_time(op), host_seconds(op) if hosted else 0.0,
                             granularity(op) if hosted else 1, source(op))
        return got

    identity = list(range(schedule.world_size))

    # Rows of representatives that stand for their images too (copied to them at the end),
    # and the steps whose CPU lead a representative had recorded when its images split off.
    image_rows: list[TraceRow] = []
    split_steps: dict[int, set] = {}
    # Where each representative's images split off (-1: never, they run all of its ops).
    split_at = {r: -1 if all(len(schedule.ranks[m]) == o.prefix for m, _ in o.images)
                and len(schedule.ranks[r]) == o.prefix else o.prefix for r, o in images.items()}

    def rank_proc(rank: int, i: int = 0, cpu: float = 0.0, step: int | None = None):
        """Rank ``rank``'s ops from its ``i``-th on, its CPU clock at ``cpu`` (seconds; when
        it has issued everything so far) and its latest step ``step``."""
        gpu = rank + rank_offset
        orbit, split = (images[rank].images, split_at[rank]) if rank in images else ((), -1)
        out = image_rows if orbit else rows
        ops = schedule.ranks[rank]
        n_ops = len(ops)
        while i < n_ops or (orbit and i == split):
            if i == split and orbit:  # the images' ops differ from here: their own process
                split_steps[rank] = {s for r, s in cpu_ahead if r == rank}
                for m, _ in orbit:
                    del image_of[m]
                    comm_until[m], comm_from[m] = comm_until[rank], comm_from[rank]
                    merge[m], host_carry[m] = merge[rank], host_carry[rank]
                    env.process(rank_proc(m, i, cpu, step))
                orbit, out = (), rows
                continue
            if i == n_ops:
                break
            op = ops[i]
            at[rank] = i
            i += 1
            kind = type(op)
            if kind is Compute:
                now = env.now
                while True:
                    seen = comm_until[rank]
                    # The op's own GPU seconds (one cost lookup), with the ring's merges
                    # it carries; the gpu time adds the overlap slowdown to it.
                    shape = (op.kind, op.layers, op.q_tokens, op.kv_tokens, op.batch,
                             op.part, op.shard)
                    cost_of = shapes.get(shape)
                    if cost_of is None:
                        cost_of = shape_cost(op, shape)
                    c = g = cost_of[0]
                    if merge[rank]:
                        c = g = g + merge[rank]
                        merge[rank] = 0.0
                    if hosted:
                        if now - cpu > max_lead:  # the launch queue is full: the CPU waits
                            cpu = now - max_lead
                        if op.step != step:
                            step = op.step
                            cpu_ahead.setdefault((rank, step), now - cpu)
                        h, pieces = cost_of[1], cost_of[2]
                        if host_carry[rank]:
                            h += host_carry[rank]
                            host_carry[rank] = 0.0
                        # The overlap with transfers counts from when the op starts, once
                        # its first piece is issued.
                        if slowdown > 1.0:
                            t = max(now, cpu + h / pieces)
                            if comm_until[rank] > t:
                                g += (slowdown - 1.0) * min(g, comm_until[rank] - t)
                        late = g - c  # the slowdown charged so far
                        # ``sim.host.issue``, inlined (it runs for every compute op).
                        first = cpu + h / pieces
                        start = first if first > now else now
                        cpu += h
                        g = max(now + g, first + g, cpu + g / pieces) - now
                    else:
                        start = now
                        if slowdown > 1.0 and comm_until[rank] > now:
                            g += (slowdown - 1.0) * min(g, comm_until[rank] - now)
                        late = g - c
                    if fuse:
                        now += g  # the clock after a timeout of g
                    else:
                        if idle(env.now + g):
                            env.now += g
                        else:
                            yield timeout(g)
                        if comm_until[rank] > seen:
                            extra = late_slowdown(rank, start, env.now - late, seen)
                            if extra:
                                if idle(env.now + extra):
                                    env.now += extra
                                else:
                                    yield timeout(extra)
                        now = env.now
                    out.append(new_row(TraceRow, (rank, op.kind, op.step, op.patch,
                                                  op.layers[0], op.layers[1], start, now, 0,
                                                  -1, cost_of[3], "")))
                    if not fuse or i == n_ops or i == split or type(ops[i]) is not Compute:
                        break
                    op = ops[i]
                    at[rank] = i
                    i += 1
                if fuse:
                    delay = now - env.now
                    if idle(env.now + delay):
                        env.now += delay
                    else:
                        yield timeout(delay)
                continue
            if hosted:
                s = op.tag.step  # every op but Compute has a tag
                if env.now - cpu > max_lead:  # the launch queue is full: the CPU waits
                    cpu = env.now - max_lead
                if s != step:
                    step = s
                    cpu_ahead.setdefault((rank, s), env.now - cpu)
                h = host_seconds(op) if kind is Collective else op_s  # p2p, wait: one op
                if kind is Collective and op.kind == OpKind.RING_KV:
                    # A ring step's operators (sends, partial attention, merge, waits) are
                    # issued inside the attention call: the CPU spends them with the
                    # attention that follows, piece by piece (sim.host.RING_STEP_OPS).
                    host_carry[rank] += h
                    h = 0.0
                # A merged collective (``count`` calls, the planner's coarse ops) starts once
                # its first call is issued; it cannot end before its last one is.
                first = cpu + (h / op.count if kind is Collective else h)
                cpu += h
                if first > env.now and kind is not Recv and kind is not Wait:
                    delay = first - env.now  # not issued yet: the GPU waits
                    if idle(env.now + delay):
                        env.now += delay
                    else:
                        yield timeout(delay)
            if kind is Send:
                start = env.now

                def arrived(op=op, start=start, out=out) -> None:
                    what, t_step, t_patch, layer = op.tag
                    out.append(new_row(TraceRow, (rank, OpKind.SEND, t_step, t_patch,
                                                  layer, layer, start, env.now,
                                                  op.nbytes, op.dst, "model", what)))
                    deliver(rank, op.dst, op.tag, start)

                if not orbit:
                    net.transfer(gpu, op.dst + rank_offset, op.nbytes, arrived)
                else:  # with the image ranks' messages
                    pairs = [(gpu, op.dst + rank_offset)]
                    dones = [arrived]
                    for m, perm in orbit:
                        dst = perm[op.dst]
                        same_route.add((rank, op.dst, m, dst))
                        pairs.append((m + rank_offset, dst + rank_offset))
                        dones.append(lambda m=m, dst=dst, tag=op.tag, start=start:
                                     deliver(m, dst, tag, start))
                    net.transfers(pairs, op.nbytes, dones)
                if slowdown > 1.0:
                    a, b = gpu, op.dst + rank_offset
                    until = (env.now + topo.route_latency(a, b)
                             + op.nbytes / topo.route_bandwidth(a, b))
                    if until > comm_until[rank]:
                        comm_until[rank] = until
                        comm_from[rank] = env.now
                own = host_time(gpu, op.dst + rank_offset, op.nbytes) if host_time else 0.0
                if own:  # a CPU transport: issuing takes the sender's own time
                    yield timeout(own)
            elif kind is Recv:
                start = env.now
                key = (op.src, rank, op.tag)
                yield slot(key)
                del mailbox[key]  # what is left at the end was sent and never received
                if hosted and cpu > env.now:  # arrived before the receive was issued
                    yield timeout(cpu - env.now)
                own = host_time(op.src + rank_offset, gpu, op.nbytes) if host_time else 0.0
                if own:  # and completing it the receiver's
                    yield timeout(own)
                what, t_step, t_patch, layer = op.tag
                out.append(new_row(TraceRow, (rank, OpKind.RECV, t_step, t_patch,
                                              layer, layer, start, env.now, op.nbytes,
                                              op.src, "model", what)))
            elif kind is Collective:
                ready: list[_Rendezvous] = []
                if not orbit:
                    rv = meet(op, op.group if not image_of else image_group(op.group,
                                                                            identity),
                              weight[rank], ready)
                    if ready:
                        launch_all(op, ready)
                else:  # with each image rank, joining its image collective
                    rv = join_orbit(rank, op, orbit)
                if op.asynchronous:
                    pending[(rank, op.tag)] = rv
                    rv.event.callbacks.append(lambda _, op=op, rv=rv, out=out:
                                              collective_row(rank, op, rv, out))
                    if op.kind == OpKind.RING_KV:
                        key = (op.nbytes, op.count, len(op.group))
                        m = merges.get(key)
                        if m is None:
                            m = merges[key] = ring_merge_seconds(topo, op, dtype_bytes)
                        merge[rank] += m
                        if serial_ring:
                            yield rv.event  # the exchange first, then the attention
                    own = (collective_host(coll_host_time, op, rank, rank_offset)
                           if coll_host_time else 0.0)
                    if own:  # a CPU transport's threads take this rank's core meanwhile
                        yield timeout(own)
                else:
                    yield rv.event
                    if hosted and cpu > env.now:
                        yield timeout(cpu - env.now)
                    collective_row(rank, op, rv, out)
            elif kind is Wait:
                rv = pending.pop((rank, op.tag), None)
                if rv is None:
                    raise ScheduleError(f"{schedule.where(rank, i - 1)} waits for no asynchronous "
                                        "collective issued before it")
                start = env.now
                yield rv.event
                if hosted and cpu > env.now:
                    yield env.timeout(cpu - env.now)
                what, t_step, t_patch, layer = op.tag
                out.append(new_row(TraceRow, (rank, OpKind.WAIT, t_step, t_patch,
                                              layer, layer, start, env.now, 0, -1,
                                              "model", what)))
            else:
                raise TypeError(f"unknown op {op!r}")
        at[rank] = n_ops

    mirrored = {m for others in copies.values() for m in others} | set(image_of)
    for r in range(schedule.world_size):
        if r not in mirrored:
            env.process(rank_proc(r))
    env.run()
    # ``rank_proc`` refers to itself (an image's own process starts from it), and through
    # it to everything the run kept: unbound, all of it is freed as soon as the run returns
    # instead of waiting for a cycle collection.
    rank_proc = None  # type: ignore[assignment]
    for rep, others in copies.items():
        for m in others:
            at[m] = at[rep]
    if image_of:
        _check_images(topo, rank_offset, same_collective, same_arrival, arrived_at,
                      same_route, meetings)
        for rep, orbit in images.items():
            if rep not in split_steps:
                for m, _ in orbit.images:
                    at[m] = at[rep]
    # The event loop ran dry: a rank still short of its last op waits for something no
    # other rank will ever do.
    stuck = {r: i for r, i in enumerate(at) if i < len(schedule.ranks[r])}
    if stuck:
        raise ScheduleError(deadlock_message(schedule.ranks, stuck))
    for src, dst, tag in mailbox:
        i = next(i for i, op in enumerate(schedule.ranks[src])
                 if isinstance(op, Send) and op.dst == dst and op.tag == tag)
        raise ScheduleError(f"{schedule.where(src, i)}: rank {dst} never receives it")
    for rank, tag in pending:
        i = max(i for i, op in enumerate(schedule.ranks[rank])
                if isinstance(op, Collective) and op.tag == tag)
        raise ScheduleError(f"{schedule.where(rank, i)} is never waited for")
    # The copies' rows are built only if read (``CopiedTrace``): latency and metrics come
    # from the simulated rows.
    if copies:
        cpu_ahead.update({(m, s): v for (r, s), v in list(cpu_ahead.items()) if r in copies
                          for m in copies[r]})
        return CopiedTrace(rows, rows, {r: [(m, None) for m in others]
                                        for r, others in copies.items()},
                           frozenset(), cpu_ahead)
    if images:
        rows += image_rows
        cpu_ahead.update({(m, s): v for (r, s), v in list(cpu_ahead.items()) if r in images
                          and (r not in split_steps or s in split_steps[r])
                          for m, _ in images[r].images})
        return CopiedTrace(rows, image_rows, {r: list(o.images) for r, o in images.items()},
                           frozenset(m for r in split_steps for m, _ in images[r].images),
                           cpu_ahead)
    return Trace(rows, cpu_ahead)


def _check_images(topo: Topology, offset: int,
                  same_collective: list[tuple[_Rendezvous, _Rendezvous]],
                  same_arrival: list[tuple[tuple, float]], arrived_at: dict[tuple, float],
                  same_route: set[tuple[int, int, int, int]], meetings: dict) -> None:
    """Raise ``_Asymmetric`` unless every image collective started and ended with its
    original and cost the same alone, every image message arrived with its original and
    crosses a route as fast and as long, and no collective was left waiting."""
    if meetings:
        raise _Asymmetric("a collective never started")
    for a, b in same_collective:
        if a.plan is not b.plan and a.plan is not None and (
                b.plan is None or a.plan[1:] != b.plan[1:]):
            raise _Asymmetric("an image collective costs another time alone")
        if (a.start != b.start or a.end != b.end) and not (
                _close(a.start, b.start) and _close(a.end, b.end)):
            raise _Asymmetric("an image collective ran at another time")
    for key, t in same_arrival:
        if key not in arrived_at or not _close(arrived_at[key], t):
            raise _Asymmetric("an image message arrived at another time")
    for a, b, c, d in same_route:
        if topo.route_latency(a + offset, b + offset) != topo.route_latency(c + offset,
                                                                            d + offset) \
                or topo.route_bandwidth(a + offset, b + offset) != topo.route_bandwidth(
                    c + offset, d + offset):
            raise _Asymmetric("an image message crosses another kind of route")


def _never(when: float) -> bool:
    """``idle_until`` of an event loop that does not say (simpy's)."""
    return False


def _close(a: float, b: float) -> bool:
    """Equal times but for rounding (events at one instant may run in another order)."""
    return abs(a - b) <= 1e-9 * max(1.0, abs(a))


def mirror_classes(ranks: list[list[Op]]) -> dict[int, list[int]]:
    """Representative rank -> the other ranks whose op lists equal its own, among ranks that
    send and receive no point-to-point message (their flows would differ per rank); only
    classes of two or more ranks are listed."""
    out: dict[int, list[int]] = {}
    reps: list[int] = []
    for r, ops in enumerate(ranks):
        if any(type(op) is Send or type(op) is Recv for op in ops):
            continue
        for rep in reps:
            if ranks[rep] == ops:
                out.setdefault(rep, []).append(r)
                break
        else:
            reps.append(r)
    return out
