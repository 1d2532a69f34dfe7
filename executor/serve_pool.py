"""The replicas of ``executor.serve`` and its dispatcher: the worker processes of each replica
(``executor.serve_worker``), their warm-up, and the replay of a trace on them with the
simulation's router and queue order (``sim.serving.choose_replica`` and ``queue_key``).

Times are ``time.monotonic()`` seconds (one clock for every process of the host on Linux).
"""

from __future__ import annotations

import heapq
import math
import multiprocessing as mp
import os
import queue
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.queues import Queue

from sim.arrivals import Request
from sim.config import ParallelConfig
from sim.serving import Served, choose_replica, queue_key

# Seconds between the last warm-up run and the origin: the workers are waiting by then.
LEAD_S = 0.2


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now (a replica's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Replica:
    """The dispatcher's view of one replica: its processes' inboxes, its queue (heap of
    ``queue_key`` + request), the estimated work it holds, and the request in service."""

    processes: int
    inboxes: list[Queue]
    heap: list = field(default_factory=list)
    queued_work_s: float = 0.0
    busy: bool = False
    est_finish_s: float = -math.inf  # dispatch time + estimated service of the current one
    current: int = -1  # request id in service
    # (start, finish, CPU seconds) of the request in service, one per process reported
    reports: list[tuple[float, float, float, float]] = field(default_factory=list)

    def send(self, request_id: int, cls: int) -> None:
        for q in self.inboxes:
            q.put((request_id, cls))
        self.busy = True
        self.current = request_id
        self.reports = []


class ReplicaFailed(Exception):
    """A replica's process reported an error, died, or went silent past the timeout."""


class Pool:
    """The replica processes and the one queue they report on."""

    def __init__(self, configs: list[ParallelConfig], argvs: list[list[list[str]]],
                 timeout: float) -> None:
        ctx = mp.get_context("spawn")
        self.timeout = timeout
        self.outbox: Queue = ctx.Queue()
        self.procs: list[tuple[int, int, mp.process.BaseProcess]] = []
        self.replicas: list[Replica] = []
        # One torch thread per process, set before the children import torch.
        os.environ["OMP_NUM_THREADS"] = "1"
        from executor.serve_worker import serve_rank

        for r, cfg in enumerate(configs):
            port = free_port() if cfg.gpus > 1 else 0
            inboxes = []
            for rank in range(cfg.gpus):
                inbox = ctx.Queue()
                proc = ctx.Process(target=serve_rank, daemon=True,
                                   args=(r, rank, cfg.gpus, port, argvs[r], inbox, self.outbox))
                proc.start()
                self.procs.append((r, rank, proc))
                inboxes.append(inbox)
            self.replicas.append(Replica(cfg.gpus, inboxes))

    def receive(self, wait_s: float | None) -> tuple | None:
        """The next report, waiting at most ``wait_s`` seconds (``None``: up to the timeout,
        then ``ReplicaFailed``); ``None`` when ``wait_s`` passed quietly. A report of an error
        or a process that died raises ``ReplicaFailed``."""
        limit = self.timeout if wait_s is None else wait_s
        end = time.monotonic() + limit
        while True:
            left = end - time.monotonic()
            try:
                msg = self.outbox.get(timeout=max(0.0, min(left, 1.0)))
            except queue.Empty:
                for r, rank, proc in self.procs:
                    if proc.exitcode is not None:
                        raise ReplicaFailed(f"replica {r} rank {rank}: the process exited "
                                            f"(status {proc.exitcode})") from None
                if time.monotonic() >= end:
                    if wait_s is None:
                        raise ReplicaFailed(f"no replica reported for {self.timeout:g} s "
                                            f"(--timeout)") from None
                    return None
                continue
            if msg[0] == "error":
                raise ReplicaFailed(f"replica {msg[1]} rank {msg[2]}: {msg[3]}")
            return msg

    def close(self) -> None:
        """Stop every process (asked first, then terminated)."""
        for rep in self.replicas:
            for q in rep.inboxes:
                q.put(None)
        for _, _, proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


def _complete(rep: Replica, msg: tuple
              ) -> tuple[int, float, float, tuple[float, float]] | None:
    """Record a ``done`` report; once every process of the replica has reported, the request
    id, its start (first process) and finish (last process), monotonic seconds, and the CPU
    seconds of its busiest process with its longest loop (seconds)."""
    _, _, _, request_id, start, finish, cpu, loop = msg
    if request_id != rep.current:
        raise ReplicaFailed(f"replica reported request {request_id} while serving "
                            f"{rep.current}")
    rep.reports.append((start, finish, cpu, loop))
    if len(rep.reports) < rep.processes:
        return None
    rep.busy = False
    return (request_id, min(r[0] for r in rep.reports), max(r[1] for r in rep.reports),
            (max(r[2] for r in rep.reports), max(r[3] for r in rep.reports)))


def time_classes(pool: Pool, classes: int, untimed: int, timed: int) -> list[list[list[float]]]:
    """Run every class ``untimed`` times untimed, then ``timed`` rounds of every class in turn,
    timed, on every replica (the replicas in parallel, as they compute side by side while
    serving); returns the timed runs' seconds per replica and class (a request's service as
    the dispatcher sees it: first process's start to last process's finish)."""
    out: list[list[list[float]]] = [[[] for _ in range(classes)] for _ in pool.replicas]
    order = [(c, False) for c in range(classes) for _ in range(untimed)]
    order += [(c, True) for _ in range(timed) for c in range(classes)]
    for c, keep in order:
        for rep in pool.replicas:
            rep.send(-1 - c, c)
        waiting = len(pool.replicas)
        while waiting:
            msg = pool.receive(None)
            r = msg[1]
            done = _complete(pool.replicas[r], msg)
            if done is not None:
                waiting -= 1
                if keep:
                    out[r][c].append(done[2] - done[1])
    return out


def replay(pool: Pool, stream: list[Request], slos: list[float], service: list[list[float]],
           router: str, discipline: str
           ) -> tuple[list[Served], list[float], dict[int, tuple[float, float]], float]:
    """Serve ``stream`` (sorted by arrival; ``slos`` per request, seconds) on the pool;
    returns each request's outcome (by index), each replica's busy seconds, each request's
    CPU seconds (busiest process) and loop seconds (longest), and the largest delay between
    an arrival and the dispatcher seeing it (seconds)."""
    reps = pool.replicas
    jsq = router == "jsq"
    options = [[(r, service[r][c]) for r in range(len(reps))] for c in range(len(service[0]))]
    by_index = {req.index: req for req in stream}
    pending = deque(stream)
    served: dict[int, Served] = {}
    cpu: dict[int, tuple[float, float]] = {}
    busy = [0.0] * len(reps)
    origin = time.monotonic() + LEAD_S
    lags = []

    def now() -> float:
        return time.monotonic() - origin

    while len(served) < len(stream):
        t = now()
        while pending and pending[0].arrival_s <= t:
            req = pending.popleft()
            lags.append(t - req.arrival_s)
            r, s = choose_replica(jsq, options[req.cls],
                                  [len(rep.heap) + rep.busy for rep in reps],
                                  [rep.est_finish_s for rep in reps],
                                  [rep.queued_work_s for rep in reps], t)
            deadline = req.arrival_s + slos[req.index]
            heapq.heappush(reps[r].heap, (*queue_key(discipline, req, deadline), s))
            reps[r].queued_work_s += s
        for rep in reps:
            if not rep.busy and rep.heap:
                *_, index, s = heapq.heappop(rep.heap)
                rep.queued_work_s -= s
                rep.est_finish_s = now() + s
                rep.send(index, by_index[index].cls)
        wait = max(0.0, pending[0].arrival_s - now()) if pending else None
        if wait is None and not any(rep.busy for rep in reps):
            raise ReplicaFailed("requests are left but no replica is serving")
        msg = pool.receive(wait)
        if msg is None or msg[0] != "done":
            continue
        r = msg[1]
        done = _complete(reps[r], msg)
        if done is None:
            continue
        index, start, finish, cpu[index] = done
        req = by_index[index]
        start, finish = start - origin, finish - origin
        busy[r] += finish - start
        served[index] = Served(req, r, start, finish, req.arrival_s + slos[index],
                               finish - start)
    return [served[req.index] for req in sorted(stream, key=lambda q: q.index)], busy, cpu, \
        max(lags, default=0.0)
