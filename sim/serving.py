"""The serving simulation: requests arrive, a router sends each to a replica's queue, each
replica serves one request at a time (simpy; one generator for the arrivals and one per
replica, as the engine has one per rank).

Policies:

- router ``jsq`` (join the shortest queue: fewest requests waiting or in service; ties to the
  replica that serves the request fastest), ``lwl`` (least work left: the replica where the
  request would finish first, counting the work queued there and its own service time on that
  replica, so heterogeneous replicas are compared fairly), ``pools`` (each class has its own
  replicas, ``Policy.pools``; least work left inside the pool);
- queue discipline ``fcfs`` or ``edf`` (earliest deadline first; a deadline is arrival + SLO);
  service is never preempted;
- admission control: a request whose predicted finish (work ahead of it in the chosen queue
  plus its own service) is past its deadline is dropped at arrival, so it costs no GPU time.
  Under EDF the prediction counts only the queued requests with earlier deadlines, so a later
  arrival with an earlier deadline can still make it late;
- batching (``Batching``, off by default): a replica that becomes free takes the request at
  the head of its queue plus up to ``limit - 1`` more queued requests of the same class, in
  queue order, and serves them as one batch whose service time is the engine's latency of
  that batch; every request of the batch starts and finishes with it. It never waits for a
  batch to fill. With batching, least work left counts a replica's queued work as the time
  it needs to drain its queue in the batches it would form (per class, full batches of the
  limit and one remainder: exact when nothing else arrives) and a request's own work as what
  it adds to that (the next batch of its class grows by one, or a new batch starts), so that
  a queue of same-class requests that batch together is not counted as if served one by
  one; admission control predicts the finish of the batch the request would join by forming
  the replica's batches from its queue in order, as the replica would.

The router knows each request's service time on each replica when it routes it: the
per-request latency is the deterministic simulated one (``ServiceTable``), so this is what a
real router with the same latency table would know.

Torch-free.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import simpy

from sim.arrivals import Request
from sim.errors import UserError

ROUTERS = ("jsq", "lwl", "pools")
QUEUES = ("fcfs", "edf")


@dataclass(frozen=True)
class Policy:
    """How requests are routed and queued. ``pools`` (router ``pools`` only) lists, per
    class index, the replica indices that serve it."""

    router: str = "lwl"
    queue: str = "fcfs"
    admission: bool = False
    pools: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        if self.router not in ROUTERS:
            raise UserError(f"unknown router '{self.router}'; choose one of {', '.join(ROUTERS)}")
        if self.queue not in QUEUES:
            raise UserError(f"unknown queue discipline '{self.queue}'; choose fcfs or edf")
        if self.router == "pools" and self.pools is None:
            raise UserError("router pools needs a class -> replicas assignment (--pools)")


@dataclass
class Served:
    """What happened to one request (seconds from the start of the run). ``replica`` is -1
    for a dropped request (admission control, or no replica able to run its class), whose
    start and finish are NaN."""

    request: Request
    replica: int
    start_s: float
    finish_s: float
    deadline_s: float
    service_s: float  # of the batch it was served in
    batch: int = 1  # requests served together with it, itself included

    @property
    def dropped(self) -> bool:
        return self.replica < 0

    @property
    def latency_s(self) -> float:
        """Arrival to finish (queueing plus service)."""
        return self.finish_s - self.request.arrival_s

    @property
    def wait_s(self) -> float:
        """Queueing delay: arrival to start of service."""
        return self.start_s - self.request.arrival_s

    @property
    def good(self) -> bool:
        """Served within its SLO (a dropped request never is). The deadline is compared with
        a relative tolerance, since arrival + latency and arrival + SLO round differently."""
        return not self.dropped and self.finish_s <= self.deadline_s * (1 + 1e-12)


@dataclass
class ServeRun:
    """One simulated run: each request's outcome (in arrival order), each replica's GPUs and
    busy seconds, and the GPU-seconds spent idle while some request waited in a queue."""

    served: list[Served]
    replica_gpus: list[int]
    busy_s: list[float]
    idle_while_queued_gpu_s: float
    stopped: bool = False  # ended early by ``max_misses``: not every request is in ``served``

    @property
    def start_s(self) -> float:
        """First arrival."""
        return min((s.request.arrival_s for s in self.served), default=0.0)

    @property
    def end_s(self) -> float:
        """Last finish, or last arrival if later (dropped requests finish nothing)."""
        ends = [s.finish_s for s in self.served if not s.dropped]
        ends += [s.request.arrival_s for s in self.served]
        return max(ends, default=0.0)


@dataclass(frozen=True)
class Batching:
    """Batching of same-class requests: ``limit[r][c]`` is the most requests of class ``c``
    replica ``r`` serves as one batch (1: no batching; below the user's maximum where a larger
    batch does not fit in the replica's memory), ``latency(r, c, b)`` the seconds a batch of
    ``b`` requests of class ``c`` takes on replica ``r`` (for ``b`` = 1 the service time)."""

    limit: Sequence[Sequence[int]]
    latency: Callable[[int, int, int], float]

    def drain_s(self, r: int, c: int, n: int) -> float:
        """Seconds replica ``r`` needs for ``n`` queued requests of class ``c`` in the batches
        it forms: full batches of the limit, then one of the rest."""
        k = self.limit[r][c]
        full, rest = divmod(n, k)
        out = full * self.latency(r, c, k) if full else 0.0
        return out + (self.latency(r, c, rest) if rest else 0.0)


class _Replica:
    """One replica's queue (the work it holds lives in ``simulate_pool``'s per-replica lists,
    which the router reads)."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, float, int, Request, float, float]] = []
        self.wake: simpy.Event | None = None


def queue_key(queue: str, req: Request, deadline_s: float) -> tuple[float, float, int]:
    """Where ``req`` sits in a replica's queue (smallest first): FCFS by arrival, EDF by
    deadline (seconds) then arrival; ties by the request's index. Shared by the simulation
    and the executor's dispatcher (``executor.serve``)."""
    return (deadline_s if queue == "edf" else req.arrival_s, req.arrival_s, req.index)


def choose_replica(jsq: bool, options: Sequence[tuple[int, float]], held: Sequence[int],
                   finish_s: Sequence[float], queued_work_s: Sequence[float], now: float
                   ) -> tuple[int, float]:
    """The router's choice among ``options`` ((replica, service seconds of the request
    there)) at time ``now``: with ``jsq`` the fewest requests ``held`` (queued or in service),
    ties to the faster service, then the lower index; otherwise (least work left) the replica
    where the request would finish first: the rest of the request in service (it ends at
    ``finish_s``; at or before ``now`` when idle), the queued work (``queued_work_s``) and its
    own service, ties to the lower index. Returns (replica, service seconds), (-1, NaN) with
    no option. Shared by the simulation and the executor's dispatcher (``executor.serve``)."""
    best_r, best_s = -1, math.nan
    best_a = best_b = math.inf
    for r, t in options:
        if jsq:
            a, b = held[r], t
            if a < best_a or (a == best_a and b < best_b):
                best_r, best_s, best_a, best_b = r, t, a, b
        else:
            left = finish_s[r] - now
            a = (left if left > 0.0 else 0.0) + queued_work_s[r] + t
            if a < best_a:
                best_r, best_s, best_a = r, t, a
    return best_r, best_s


def simulate_pool(requests: list[Request], replica_gpus: list[int],
                  service: Callable[[int, Request], float] | Sequence[Sequence[float]],
                  slo: Callable[[Request], float], policy: Policy,
                  max_misses: int | None = None, batching: Batching | None = None
                  ) -> ServeRun:
    """Serve ``requests`` (sorted by arrival) on replicas of ``replica_gpus`` GPUs each.
    ``service(r, req)`` is the seconds replica ``r`` takes for ``req`` (``inf``: it cannot
    run it), or a table ``service[r][class]`` of them (deterministic service: each class's
    usable replicas are then listed once, not looked up per request); ``slo(req)`` the
    request's SLO in seconds (deadline = arrival + SLO).

    With ``max_misses`` the run stops as soon as more requests than that are known to miss
    their SLO (dropped, or starting too late to finish in time): enough to know that the
    attainment is below a target, and far cheaper in overload. The run returned is then
    partial (``ServeRun.stopped``). ``batching``: see the module docstring (``None``: one
    request at a time)."""
    env = simpy.Environment()
    reps = [_Replica() for _ in replica_gpus]
    # Per replica: requests held (queued or in service), finish time of the one in service,
    # service seconds queued.
    held = [0] * len(reps)
    finish = [-math.inf] * len(reps)
    queued = [0.0] * len(reps)
    served: list[Served] = []
    busy = [0.0] * len(reps)
    total_gpus_queued = [0.0]  # idle GPU-seconds while a request waits somewhere
    state = {"last": 0.0, "queued": 0, "idle_gpus": sum(replica_gpus), "misses": 0}
    stop = env.event()
    if batching is not None and all(k <= 1 for row in batching.limit for k in row):
        batching = None  # one request at a time: the unbatched bookkeeping, exactly
    n_classes = 1 + max((req.cls for req in requests), default=0)
    counts = [[0] * n_classes for _ in reps]  # queued requests per replica and class

    def missed() -> None:
        state["misses"] += 1
        if max_misses is not None and state["misses"] > max_misses and not stop.triggered:
            stop.succeed()

    def record(outcome: Served) -> None:
        served.append(outcome)
        # The replicas wait forever for more work; the run ends with the last request.
        if len(served) == len(requests) and not stop.triggered:
            stop.succeed()

    def account() -> None:
        # Called before every change of who is busy or how many wait: integrates idle GPUs
        # over the time some request waited.
        now = env.now
        if state["queued"] > 0:
            total_gpus_queued[0] += (now - state["last"]) * state["idle_gpus"]
        state["last"] = now

    def allowed(req: Request) -> Sequence[int]:
        return policy.pools[req.cls] if policy.pools is not None else range(len(reps))

    per_class: dict[int, list[tuple[int, float]]] = {}

    def options(req: Request) -> list[tuple[int, float]]:
        """(replica, service seconds) of the replicas that may and can serve ``req``."""
        if callable(service):
            pairs = [(r, service(r, req)) for r in allowed(req)]
            return [(r, t) for r, t in pairs if math.isfinite(t)]
        if req.cls not in per_class:
            per_class[req.cls] = [(r, service[r][req.cls]) for r in allowed(req)
                                  if math.isfinite(service[r][req.cls])]
        return per_class[req.cls]

    jsq = policy.router == "jsq"

    def work_left(r: int) -> float:
        """Seconds until replica ``r`` could start a request served after all it holds."""
        return max(0.0, finish[r] - env.now) + queued[r]

    def ahead_of(r: int, deadline: float) -> float:
        """Seconds of work replica ``r``'s EDF queue serves before a request with
        ``deadline``."""
        ahead = sum(item[4] for item in reps[r].heap if item[0] <= deadline)
        return max(0.0, finish[r] - env.now) + ahead

    def batched_choice(req: Request) -> tuple[int, float]:
        """Least work left with batching: queued work as drain time, the request's own as
        what it adds to it (module docstring). Returns (replica, its service seconds
        alone)."""
        assert batching is not None
        opts = options(req)
        if jsq:
            return choose_replica(True, opts, held, finish, queued, env.now)
        c = req.cls
        drain = [0.0] * len(reps)
        added = []
        for r, _ in opts:
            drain[r] = sum(batching.drain_s(r, k, n) for k, n in enumerate(counts[r]) if n)
            n = counts[r][c]
            added.append((r, batching.drain_s(r, c, n + 1) - batching.drain_s(r, c, n)))
        r, _ = choose_replica(False, added, held, finish, drain, env.now)
        return r, next((t for q, t in opts if q == r), math.nan)

    def batched_finish(r: int, item: tuple) -> float:
        """When the batch that ``item`` (a queue entry) would join on replica ``r`` finishes,
        forming batches from the queue in order as the replica does, with nothing else
        arriving, seconds."""
        assert batching is not None
        pending = sorted([*reps[r].heap, item], key=lambda x: x[:3])
        t = env.now + max(0.0, finish[r] - env.now)
        taken = [False] * len(pending)
        for i, head in enumerate(pending):
            if taken[i]:
                continue
            c = head[3].cls
            k = batching.limit[r][c]
            members = []
            for j in range(i, len(pending)):
                if not taken[j] and pending[j][3].cls == c:
                    members.append(j)
                    if len(members) == k:
                        break
            for j in members:
                taken[j] = True
            t += batching.latency(r, c, len(members))
            if any(pending[j] is item for j in members):
                return t
        return t  # not reached: the item is in ``pending``

    def arrivals():
        for req in requests:
            if req.arrival_s > env.now:
                yield env.timeout(req.arrival_s - env.now)
            deadline = req.arrival_s + slo(req)
            if batching is None:
                r, s = choose_replica(jsq, options(req), held, finish, queued, env.now)
            else:
                r, s = batched_choice(req)
            if r >= 0 and policy.admission and batching is not None:
                entry = (*queue_key(policy.queue, req, deadline), req, s, deadline)
                if batched_finish(r, entry) > deadline * (1 + 1e-12):
                    r = -1
            elif r >= 0 and policy.admission:
                ahead = ahead_of(r, deadline) if policy.queue == "edf" else work_left(r)
                if env.now + ahead + s > deadline * (1 + 1e-12):
                    r = -1
            if r < 0:
                record(Served(req, -1, math.nan, math.nan, deadline, math.nan))
                missed()
                continue
            account()
            rep = reps[r]
            heapq.heappush(rep.heap, (*queue_key(policy.queue, req, deadline), req, s,
                                      deadline))
            queued[r] += s
            held[r] += 1
            counts[r][req.cls] += 1
            state["queued"] += 1
            if rep.wake is not None and not rep.wake.triggered:
                rep.wake.succeed()

    def replica(r: int):
        rep = reps[r]
        while True:
            if not rep.heap:
                rep.wake = env.event()
                yield rep.wake
            head = heapq.heappop(rep.heap)
            members = [head]
            c = head[3].cls
            if batching is not None and batching.limit[r][c] > 1:
                # The head plus the next requests of its class, in queue order.
                same = [item for item in rep.heap if item[3].cls == c]
                if same:
                    more = heapq.nsmallest(batching.limit[r][c] - 1, same)
                    chosen = {item[3].index for item in more}
                    rep.heap = [item for item in rep.heap if item[3].index not in chosen]
                    heapq.heapify(rep.heap)
                    members += more
            b = len(members)
            account()
            for _, _, _, req, s, _ in members:
                queued[r] -= s
                counts[r][req.cls] -= 1
            state["queued"] -= b
            state["idle_gpus"] -= replica_gpus[r]
            start = env.now
            s = head[4] if b == 1 else batching.latency(r, c, b)  # type: ignore[union-attr]
            finish[r] = start + s
            for item in members:
                if start + s > item[5] * (1 + 1e-12):
                    missed()
            yield env.timeout(s)
            account()
            held[r] -= b
            state["idle_gpus"] += replica_gpus[r]
            busy[r] += s
            for _, _, _, req, _, deadline in members:
                record(Served(req, r, start, env.now, deadline, s, b))

    env.process(arrivals())
    for r in range(len(reps)):
        env.process(replica(r))
    if requests:
        env.run(until=stop)
    served.sort(key=lambda x: x.request.index)
    return ServeRun(served, list(replica_gpus), busy, total_gpus_queued[0],
                    stopped=len(served) < len(requests))
