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
  arrival with an earlier deadline can still make it late.

The router knows each request's service time on each replica when it routes it: the
per-request latency is the deterministic simulated one (``ServiceTable``), so this is what a
real router with the same latency table would know. Batching is not modelled (README, "Serving").

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
    service_s: float

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
                  max_misses: int | None = None) -> ServeRun:
    """Serve ``requests`` (sorted by arrival) on replicas of ``replica_gpus`` GPUs each.
    ``service(r, req)`` is the seconds replica ``r`` takes for ``req`` (``inf``: it cannot
    run it), or a table ``service[r][class]`` of them (deterministic service: each class's
    usable replicas are then listed once, not looked up per request); ``slo(req)`` the
    request's SLO in seconds (deadline = arrival + SLO).

    With ``max_misses`` the run stops as soon as more requests than that are known to miss
    their SLO (dropped, or starting too late to finish in time): enough to know that the
    attainment is below a target, and far cheaper in overload. The run returned is then
    partial (``ServeRun.stopped``)."""
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

    def arrivals():
        for req in requests:
            if req.arrival_s > env.now:
                yield env.timeout(req.arrival_s - env.now)
            deadline = req.arrival_s + slo(req)
            r, s = choose_replica(jsq, options(req), held, finish, queued, env.now)
            if r >= 0 and policy.admission:
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
            state["queued"] += 1
            if rep.wake is not None and not rep.wake.triggered:
                rep.wake.succeed()

    def replica(r: int):
        rep = reps[r]
        while True:
            if not rep.heap:
                rep.wake = env.event()
                yield rep.wake
            _, _, _, req, s, deadline = heapq.heappop(rep.heap)
            account()
            queued[r] -= s
            state["queued"] -= 1
            state["idle_gpus"] -= replica_gpus[r]
            start = env.now
            finish[r] = start + s
            if start + s > deadline * (1 + 1e-12):
                missed()
            yield env.timeout(s)
            account()
            held[r] -= 1
            state["idle_gpus"] += replica_gpus[r]
            busy[r] += s
            record(Served(req, r, start, env.now, deadline, s))

    env.process(arrivals())
    for r in range(len(reps)):
        env.process(replica(r))
    if requests:
        env.run(until=stop)
    served.sort(key=lambda x: x.request.index)
    return ServeRun(served, list(replica_gpus), busy, total_gpus_queued[0],
                    stopped=len(served) < len(requests))
