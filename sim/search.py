"""The planner's search: every valid configuration, simulated (or pruned) and ranked by latency.

Configurations searched, on N of the GPUs for every divisor N of the GPU count (leftover GPUs
could serve other requests): serial; every hybrid cfg x pipefusion x ulysses x ring x tensor
whose degrees multiply to N (pure strategies included); DistriFusion (with and without CFG
parallel). PipeFusion gets patch counts M among powers of two and multiples of its degree up
to 4x; configurations with stale context (PipeFusion with M > 1, DistriFusion) get every
warmup count asked for, the others (serial, Ulysses, ring, tensor, CFG, PipeFusion with M = 1
and their hybrids) appear once, with the smallest; a count outside 0..steps is refused
(``sim.config.check_warmup``), never silently dropped. Configurations that do not fit in
memory are ranked after those that do and never recommended.

Torch-free; ``sim.plan`` and ``sim.compare`` present what it finds.
"""

from __future__ import annotations

import heapq
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from math import inf
from typing import Any

from sim.bounds import OpCosts, lower_bounds, refinements
from sim.config import ParallelConfig, Workload, check_warmup, validate
from sim.cost import CostSpec
from sim.errors import RunFailed, UserError
from sim.evaluate import Prediction, evaluate
from sim.hardware import GPU
from sim.topology import Topology

# What every unit of work shares: the workload, the GPU, the cluster, the factor on compute
# costs and the cost spec. Set once per process (a worker inherits it when forked, else gets it
# pickled once): a 1,024-GPU topology is 6 MB, too much to send with every chunk.
_Shared = tuple[Workload, GPU, Topology, float, CostSpec]
_SHARED: list = [None, None, None]  # [the shared tuple, its cost model, its op costs]
# One unit of work for a process: configurations to bound or simulate.
_Job = list[ParallelConfig]


def _share(shared: _Shared) -> None:
    _SHARED[:] = [shared, None, None]


def _shared() -> tuple[Workload, GPU, Topology, float, CostSpec, Any]:
    """The shared inputs and their cost model (built on first use: one cache per process)."""
    (wl, gpu, topo, scale, spec), cost, _ = _SHARED
    if cost is None:
        cost = _SHARED[1] = spec.build(wl, gpu, scale)
    return wl, gpu, topo, scale, spec, cost


def _op_costs() -> OpCosts:
    """The bounds' memoised op costs of the shared inputs (one per process, kept across
    jobs: the same collectives recur in many candidates)."""
    if _SHARED[2] is None:
        wl, gpu, topo, scale, spec, cost = _shared()
        _SHARED[2] = OpCosts(topo, cost)
    return _SHARED[2]


def patch_candidates(n: int, rows: int, sp: int = 1) -> list[int]:
    """Patch counts worth trying with ``n`` stages: powers of two and multiples of ``n`` up
    to ``4n``, capped as xDiT caps them: each patch is at least one token row per
    sequence-parallel rank (``sp`` = Ulysses x ring), so at most ``rows // sp`` patches
    (xfuser 0.7.0, ``runtime_state.py``: a patch's height is rounded up to a multiple of
    ``patch_size * sp`` latent rows and the patch count recomputed from it)."""
    if n == 1:
        return [1]
    ms = {1 << k for k in range(0, 8) if (1 << k) <= 4 * n} | {k * n for k in range(1, 5)}
    return sorted(m for m in ms if m <= rows // sp) or [1]


def _factorizations(n: int, parts: int) -> list[tuple[int, ...]]:
    """Ordered ways to write ``n`` as a product of ``parts`` positive integers."""
    if parts == 1:
        return [(n,)]
    return [(d, *rest) for d in range(1, n + 1) if n % d == 0
            for rest in _factorizations(n // d, parts - 1)]


def candidates(wl: Workload, gpus: int, warmups: list[int],
               all_gpus: bool = False, only: int | None = None) -> list[ParallelConfig]:
    """Every configuration the planner simulates for ``gpus`` GPUs (all valid); with
    ``all_gpus`` only those using every GPU, with ``only`` those using exactly that many
    (the serial baseline is always included). ``warmups`` are step counts."""
    if all_gpus:
        only = gpus
    if not warmups:
        raise UserError("--warmup needs at least one step count")
    for w in warmups:
        check_warmup(w, wl.steps)  # refused, never silently dropped by validate below
    warmups = sorted(set(warmups))  # a count given twice would list its candidates twice
    m = wl.model
    rows, _ = m.token_grid(wl.height, wl.width)

    def per_warmup(cfg: ParallelConfig) -> list[ParallelConfig]:
        # Warmup changes nothing without stale context: such a configuration is listed once,
        # with the smallest count asked for; a stale one once per count.
        if cfg.stale:
            return [replace(cfg, warmup=w) for w in warmups]
        return [replace(cfg, warmup=warmups[0])]

    out = [ParallelConfig(1)]
    for n in range(2, gpus + 1):
        if gpus % n or (only is not None and n != only):
            continue
        for c in ((1, 2) if m.cfg else (1,)):
            if n % c:
                continue
            raw = []
            for p, u, r, t in _factorizations(n // c, 4):
                for mm in patch_candidates(p, rows, u * r):
                    raw += per_warmup(ParallelConfig(n, p, mm, cfg=c, ulysses=u, ring=r,
                                                     tensor=t))
            if n // c > 1:
                raw += per_warmup(ParallelConfig(n, cfg=c, distrifusion=n // c))
            for cfg in raw:
                try:
                    validate(wl, cfg)
                except UserError:
                    continue  # e.g. Ulysses not dividing the heads: not a real option
                out.append(cfg)
    return out


def rank(preds: list[Prediction]) -> list[Prediction]:
    """Configurations that fit first, fastest first; then those that do not fit."""
    return sorted(preds, key=lambda p: (p.oom, p.latency_s, p.config.gpus, p.config.patches))


def best_per_family(ranked: list[Prediction], per_family: int) -> list[Prediction]:
    """The best ``per_family`` configurations of each strategy family, families ordered by
    their best latency (fitting ones first)."""
    seen: dict[str, list[Prediction]] = {}
    for p in ranked:
        fam = seen.setdefault(p.config.strategy, [])
        if len(fam) < per_family:
            fam.append(p)
    return [p for fam in seen.values() for p in fam]


# Steps after the warmup of a candidate's first short run (``sim.evaluate.evaluate``). The
# candidates a search simulates are mostly pipelines and DistriFusion near the top, whose
# first steady steps still settle at ``W + 4`` steps (then simulated twice): from 6 on (7
# for DistriFusion), the simulations of the three plans of ``benchmarks/bench_sim.py``
# (PixArt on 8 GPUs, Flux on 16 and 64) do 0.95x, 0.57x and 0.48x the rank-steps (GPUs
# times steps simulated) of starting from 4 (2026-11-30).
PLANNER_SHORT_STEPS = 6


def _evaluate_chunk(job: _Job) -> list[Prediction]:
    """Each configuration simulated, without its trace nor the inputs every process shares
    (a 64-GPU topology pickles to 40 kB; ``_with_shared`` puts them back)."""
    wl, gpu, topo, scale, spec, cost = _shared()
    return [replace(evaluate(wl, c, gpu, topo, cost, scale, fast=True, spec=spec,
                             short_steps=PLANNER_SHORT_STEPS).without_trace(),
                    workload=None, gpu=None, topology=None) for c in job]


def _with_shared(p: Prediction) -> Prediction:
    wl, gpu, topo, *_ = _shared()
    return replace(p, workload=wl, gpu=gpu, topology=topo)


def _bound_chunk(job: _Job) -> list[tuple[float, bool, float]]:
    """(quick lower bound, out of memory, fullest rank's bytes) of each configuration: the
    first of its ``sim.bounds.refinements``, refined by ``_refine_chunk`` when needed."""
    wl, gpu, topo, scale, spec, cost = _shared()
    out = []
    for lb, mem in lower_bounds(wl, job, gpu, topo, cost, ends=True, replay=False,
                                costs=_op_costs()):
        fullest = max(m.total for m in mem)
        out.append((lb, fullest > gpu.memory_bytes, fullest))
    return out


def _refine_chunk(job: _Job, level: int) -> list[float]:
    """The lower bound of each configuration with its ``level``-th refinement."""
    wl, gpu, topo, scale, spec, cost = _shared()
    options = refinements(job[0])[level]
    return [lb for lb, _ in lower_bounds(wl, job, gpu, topo, cost, memory=False,
                                         costs=_op_costs(), **options)]


@dataclass(frozen=True)
class Candidate:
    """One configuration the search considered: its latency lower bound (seconds), whether
    it fits in memory, its fullest rank's memory (bytes), and whether it was simulated."""

    config: ParallelConfig
    lower_bound_s: float
    oom: bool
    memory_bytes: float
    simulated: bool

    def as_dict(self) -> dict:
        """JSON of a candidate the search did not simulate (``sim.plan --json``)."""
        cfg = self.config.as_dict()
        cfg["label"] = self.config.label()
        return {"simulated": self.simulated, "lower_bound_s": self.lower_bound_s,
                "latency_s": None, "oom": self.oom, "memory_gb": self.memory_bytes / 1e9,
                "config": cfg}


@dataclass
class SearchResult:
    """Ranked predictions plus what the search skipped and why."""

    ranked: list[Prediction]
    candidates: int
    pruned: int  # provably slower than every row shown, never simulated
    oom_skipped: int  # do not fit in memory, never simulated
    considered: list[Candidate] = field(default_factory=list)  # every candidate, in order
    # The time limit (seconds), when it stopped the search; what it left out: candidates
    # never bounded (the largest GPU counts: bounds are computed fewest GPUs first), and
    # bounded ones that would have been simulated (neither pruned nor out of memory).
    stopped_at_s: float | None = None
    unbounded: int = 0
    unbounded_gpus: tuple[int, ...] = ()
    unsimulated: int = 0
    best_unsimulated_bound_s: float | None = None  # the lowest bound among those, seconds

    def stop_note(self) -> str | None:
        """One sentence on what a search stopped by its time limit did not cover, and how far
        the recommendation can be from the best of what it bounded; None if it finished."""
        if self.stopped_at_s is None:
            return None
        parts = []
        if self.unbounded:
            counts = self.unbounded_gpus
            span = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
            parts.append(f"{self.unbounded} configurations on {span} GPUs were not searched")
        if self.unsimulated:
            parts.append(f"{self.unsimulated} were bounded but not simulated")
        fitting = [p for p in self.ranked if not p.oom]
        lb = self.best_unsimulated_bound_s
        if fitting and lb is not None and lb < fitting[0].latency_s:
            verdict = (f"one of those not simulated could be up to "
                       f"{fitting[0].latency_s / lb - 1:.0%} faster than the recommendation "
                       f"(its latency lower bound is {lb:.3f} s)")
        elif fitting:
            verdict = ("none of those bounded can beat the recommendation (their latency "
                       "lower bounds are above it)")
        else:
            verdict = "nothing that fits was simulated"
        return (f"stopped by the time limit (--time-limit {self.stopped_at_s:g} s): "
                f"{'; '.join(parts) or 'every candidate was bounded'}; {verdict}. "
                f"--time-limit 0 searches everything")

    def lower_bound(self, cfg: ParallelConfig) -> float | None:
        """The lower bound the search computed for ``cfg`` (seconds), if any."""
        return next((c.lower_bound_s for c in self.considered if c.config == cfg), None)

    def skipped(self) -> list[Candidate]:
        """The candidates that were not simulated, by lower bound."""
        return sorted((c for c in self.considered if not c.simulated),
                      key=lambda c: (c.oom, c.lower_bound_s))


class _Pool:
    """Runs jobs in ``workers`` processes (inline when 1 and no deadline: a deadline needs
    processes, the only work that can be stopped half-way)."""

    def __init__(self, workers: int, shared: _Shared, deadline: float | None = None) -> None:
        self.pool: ProcessPoolExecutor | None = None
        _share(shared)  # inline work, and workers forked from here
        if workers > 1 or deadline is not None:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
            self.pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_share,
                                            initargs=(shared,))
        self.workers = workers
        self.deadline = deadline  # time.monotonic() value; None: no limit
        self.expired = False

    def submit(self, fn: Callable[[_Job], list[Any]], job: _Job) -> Future:
        """``fn(job)`` in a worker, or now when inline (a finished future)."""
        if self.pool is not None:
            return self.pool.submit(fn, job)
        done: Future = Future()
        done.set_result(fn(job))
        return done

    def wait(self, futures: Iterable[Future]) -> set[Future]:
        """The finished ones of ``futures`` once all have finished or the deadline has passed;
        past it the workers are stopped."""
        futures = list(futures)
        if not futures:
            return set()
        left = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        done, _ = wait(futures, timeout=left)
        if len(done) < len(futures):
            done = {f for f in futures if f.done()}  # before the kill fails the running ones
            self.stop()
        return done

    def stop(self) -> None:
        """Out of time: end the workers now, half-done work and all."""
        self.expired = True
        if self.pool is not None:
            # The executor's own shutdown waits for running work; its processes are killed
            # instead (the private table is the only handle on them).
            procs = list(getattr(self.pool, "_processes", {}).values())
            self.pool.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                proc.kill()
            for proc in procs:
                proc.join(5)  # reaped, so none is left behind even for a moment
            # A worker killed while writing its result leaves half a message in the result
            # pipe, and the executor's thread reading it would wait for the rest for ever
            # (and the interpreter for that thread at exit). With the workers dead, closing
            # this process's own writing end lets that read end at once (end of file).
            writer = getattr(getattr(self.pool, "_result_queue", None), "_writer", None)
            if writer is not None:
                writer.close()
            self.pool = None

    def map(self, fn: Callable[[_Job], list[Any]], cfgs: list[ParallelConfig]) -> list[Any]:
        """``fn``'s result for each of ``cfgs``, in order (``None`` for those the deadline
        cut off). Chunks interleave the list, so that the costly configurations spread over
        the workers."""
        if not cfgs or self.expired:
            return [None] * len(cfgs)
        n = max(1, min(len(cfgs), 4 * self.workers)) if self.pool else 1
        futures = [self.submit(fn, cfgs[i::n]) for i in range(n)]
        done = self.wait(futures)
        out: list[Any] = [None] * len(cfgs)
        for i, f in enumerate(futures):
            if f in done:
                out[i::n] = f.result()
        return out

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown()


# Relative slack on a bound before it prunes. Many bounds equal the simulated latency (a serial
# run, pure sequence parallelism) but for rounding, and speed work on the engine may move a
# prediction by up to 0.1 % (issue 14): a bound that close to a row prunes nothing, which
# costs about one simulation more in a 64-GPU search.
BOUND_TOL = 1e-3


class _Shown:
    """The latencies that decide which rows a search shows (seconds): the ``top`` fastest
    that fit, the ``per_family`` fastest of each family, and the fastest on each GPU count,
    overall and without a cold start (``sim.plan`` recommends that one and compares the
    recommendation with the best of the other counts)."""

    def __init__(self, top: int, per_family: int) -> None:
        self.top = top
        self.per_family = per_family
        self.overall: list[float] = []
        self.by_family: dict[str, list[float]] = {}
        self.by_gpus: dict[int, float] = {}
        self.warm_by_gpus: dict[int, float] = {}

    def beats(self, cfg: ParallelConfig, bound_s: float) -> bool:
        """Whether ``cfg``, whose latency is at least ``bound_s``, is provably slower than
        every row it could enter (strictly, so that no tie is left to the order)."""
        lb = bound_s / (1 + BOUND_TOL)
        top, per = self.top, self.per_family
        fam = self.by_family.get(cfg.strategy, [])
        return (len(self.overall) >= top and lb > self.overall[top - 1]
                and (per == 0 or (len(fam) >= per and lb > fam[per - 1]))
                and lb > self.by_gpus.get(cfg.gpus, inf)
                and (cfg.cold_start or lb > self.warm_by_gpus.get(cfg.gpus, inf)))

    def add(self, p: Prediction) -> None:
        """Count a simulated configuration in."""
        if p.oom:
            return
        lat, cfg = p.latency_s, p.config
        self.overall = sorted(self.overall + [lat])[:self.top]
        if self.per_family:
            self.by_family[cfg.strategy] = sorted(self.by_family.get(cfg.strategy, [])
                                                  + [lat])[:self.per_family]
        self.by_gpus[cfg.gpus] = min(self.by_gpus.get(cfg.gpus, inf), lat)
        if not cfg.cold_start:
            self.warm_by_gpus[cfg.gpus] = min(self.warm_by_gpus.get(cfg.gpus, inf), lat)


# Share of the time limit the lower bounds may take; the simulations get the rest.
BOUND_SHARE = 0.5


def search(wl: Workload, gpu: GPU, topo: Topology, warmups: list[int], scale: float = 1.0,
           top: int = 10, per_family: int = 2, exhaustive: bool = False,
           progress: Callable[[str, int, int], None] | None = None,
           workers: int | None = None,
           all_gpus: bool = False, only: int | None = None,
           spec: CostSpec | None = None, time_limit_s: float | None = None) -> SearchResult:
    """Simulate the candidates (planner mode: coarse communication, periodic steps) and rank
    them by latency (seconds). ``warmups`` are step counts, ``scale`` the factor on compute
    costs. Unless ``exhaustive``, a candidate is skipped when a lower bound on its latency
    (``sim.bounds``) already shows it cannot enter the ``top`` overall nor the best
    ``per_family`` of its family (``per_family=0``: no family rows are kept) nor beat the best
    on its GPU count (nor, without a cold start, the best without one on its GPU count:
    ``sim.plan`` recommends that), and candidates that do
    not fit in memory are not simulated (unless nothing fits). The rows shown are therefore
    exactly those an exhaustive search would show, and so is the best of each GPU count.
    Candidates are simulated best bound first, one per worker at a time, each from a quick
    bound (first and last pipeline stages) refined, a step at a time, when it comes up
    unpruned (``sim.bounds.refinements``, ``_refine_chunk``).
    ``progress(what, done, total)`` is told how far the bounds and the simulations are
    (``sim.progress``).

    ``time_limit_s`` (seconds from the call) bounds the search: the lower bounds, fewest
    GPUs first, may take ``BOUND_SHARE`` of it and the simulations, best bound first, the
    rest; work still running then is stopped (worker processes killed) and the result says
    what was left out and how far the recommendation can be from the best of what was
    bounded (``SearchResult.stop_note``)."""
    spec = spec or CostSpec()
    start = time.monotonic()
    cands = candidates(wl, topo.num_gpus, warmups, all_gpus, only)
    workers = workers or (min(os.cpu_count() or 1, 8) if len(cands) > 40 else 1)
    limited = time_limit_s is not None and time_limit_s > 0
    shared = (wl, gpu, topo, scale, spec)
    pool = _Pool(workers, shared, start + BOUND_SHARE * time_limit_s if limited else None)
    try:
        bounds = _bounds(pool, cands, progress)
        unbounded = [c for c, b in zip(cands, bounds) if b is None]
        if unbounded:  # the time limit cut the bounds off: search what was bounded
            cands = [c for c, b in zip(cands, bounds) if b is not None]
            bounds = [b for b in bounds if b is not None]
        if pool.expired:  # its workers were killed: fresh ones for the simulations
            pool.close()
            pool = _Pool(workers, shared, start + time_limit_s)
        pool.deadline = start + time_limit_s if limited else None

        def considered(simulated: set[int]) -> list[Candidate]:
            return [Candidate(c, b[0], b[1], b[2], i in simulated)
                    for i, (c, b) in enumerate(zip(cands, bounds))]

        def stopped(result: SearchResult, left: list[int]) -> SearchResult:
            # What the time limit left out: never bounded, or bounded and due for simulation.
            if pool.expired or unbounded:
                result.stopped_at_s = time_limit_s
                result.unbounded = len(unbounded)
                result.unbounded_gpus = tuple(sorted({c.gpus for c in unbounded}))
                fits = [i for i in left if not bounds[i][1]]
                result.unsimulated = len(fits)
                result.best_unsimulated_bound_s = min((bounds[i][0] for i in fits),
                                                      default=None)
            return result

        if exhaustive:
            preds = [p and _with_shared(p) for p in pool.map(_evaluate_chunk, cands)]
            done = {i for i, p in enumerate(preds) if p is not None}
            return stopped(SearchResult(rank([p for p in preds if p is not None]),
                                        len(cands) + len(unbounded), 0, 0, considered(done)),
                           [i for i in range(len(cands)) if i not in done])
        order = sorted(range(len(cands)), key=lambda i: bounds[i][0])
        fitting = [i for i in order if not bounds[i][1]]
        oom = [i for i in order if bounds[i][1]]
        todo = fitting if fitting else oom[:top]
        # Best bound first: a heap of (bound, order), a quick bound pushed back once refined.
        todo_order = {i: k for k, i in enumerate(todo)}
        queue = [(bounds[i][0], k, i) for k, i in enumerate(todo)]
        # Refinements left per candidate (``sim.bounds.refinements``): the next is taken
        # when it comes up unpruned.
        level = {i: 1 for i in todo if len(refinements(cands[i])) > 1}
        variants: dict[ParallelConfig, list[int]] = {}  # warmup variants of each configuration
        for i in level:
            variants.setdefault(replace(cands[i], warmup=0), []).append(i)
        shown = _Shown(top, per_family)
        preds: list[Prediction] = []
        pruned = 0
        done: set[int] = set()
        running: dict[Future, int] = {}  # simulations started, in order: candidate index
        # One job per worker at a time: each result can prune the next configurations before
        # they start (batches would start work a result would prune).
        while queue or running:
            while queue and len(running) < pool.workers and not pool.expired:
                _, _, i = heapq.heappop(queue)
                if shown.beats(cands[i], bounds[i][0]):
                    pruned += 1
                elif i in level:
                    # Refined with its warmup variants at the same level still queued (one
                    # template for all).
                    at = level[i]
                    queued = {q[2] for q in queue}
                    group = [k for k in variants[replace(cands[i], warmup=0)]
                             if level.get(k) == at and (k == i or k in queued)]
                    for k in group:
                        if at + 1 < len(refinements(cands[k])):
                            level[k] = at + 1
                        else:
                            del level[k]
                    queue = [q for q in queue if q[2] not in group]
                    heapq.heapify(queue)
                    # Here, not in a worker: a refinement takes milliseconds, and this runs
                    # only while a worker is free; in a worker it would hold a slot until
                    # every older job had finished (results are taken in order).
                    for k, lb in zip(group, _refine_chunk([cands[k] for k in group], at)):
                        bounds[k] = (max(lb, bounds[k][0]), *bounds[k][1:])
                        heapq.heappush(queue, (bounds[k][0], todo_order[k], k))
                else:
                    running[pool.submit(_evaluate_chunk, [cands[i]])] = i
            if not running:
                break
            # Results are taken in the order the jobs started, so that what is pruned (and
            # listed as simulated) does not depend on which worker happened to finish first.
            for f in pool.wait([next(iter(running))]):
                done.add(running.pop(f))
                p = _with_shared(f.result()[0])
                preds.append(p)
                shown.add(p)
            if progress:
                progress("configurations simulated or ruled out",
                         len(todo) - len(queue) - len(running),
                         len(todo))
            if pool.expired:
                break
        left = sorted(running.values()) + [q[2] for q in sorted(queue)]
        # What the time limit left: those running when it struck and those not reached
        # (pruning the latter would need the bounds only: not counted).
        return stopped(SearchResult(rank(preds), len(cands) + len(unbounded), pruned,
                                    len(oom) if fitting else 0, considered(done)), left)
    except BrokenProcessPool:
        # A worker died (killed by a signal, or by the kernel when memory ran out): nothing in
        # the input caused it, so exit 1 (a failed run, which may succeed if rerun), not 2.
        raise RunFailed(f"a planner worker process died (killed, or out of memory?) while "
                        f"simulating {len(cands)} configurations on {workers} processes; "
                        f"nothing was recommended. Rerun, or search fewer configurations "
                        f"(--warmup with fewer counts, fewer --gpus)") from None
    except BaseException:
        pool.stop()  # interrupted (a command's time limit, Ctrl-C): no worker outlives it
        raise
    finally:
        pool.close()


def _bounds(pool: _Pool, cands: list[ParallelConfig],
            progress: Callable[[str, int, int], None] | None) -> list[tuple | None]:
    """``_bound_chunk`` of every candidate, one GPU count after the other (the candidates come
    fewest GPUs first, a bound's cost grows with the GPUs, and the workers take the jobs in
    order); ``None`` for every candidate of a GPU count the time limit cut off: "the best on N
    GPUs" must never be the best of an arbitrary part of them. A configuration's warmup
    variants stay in one job (they share one template, ``sim.bounds.lower_bounds``)."""
    counts: list[list[list[int]]] = []  # per GPU count, its jobs (candidate indices)
    for n in dict.fromkeys(c.gpus for c in cands):
        groups: dict[ParallelConfig, list[int]] = {}
        for i, c in enumerate(cands):
            if c.gpus == n:
                groups.setdefault(replace(c, warmup=0), []).append(i)
        parts = max(1, min(len(groups), 2 * pool.workers)) if pool.pool else 1
        jobs: list[list[int]] = [[] for _ in range(parts)]
        for k, members in enumerate(groups.values()):
            jobs[k * parts // len(groups)] += members
        counts.append([j for j in jobs if j])
    futures = [[pool.submit(_bound_chunk, [cands[i] for i in job]) for job in jobs]
               for jobs in counts]
    out: list[tuple | None] = [None] * len(cands)
    finished = 0
    for jobs, fs in zip(counts, futures):
        if pool.expired or len(pool.wait(fs)) < len(fs):
            break
        for job, f in zip(jobs, fs):
            for i, b in zip(job, f.result()):
                out[i] = b
        finished += sum(map(len, jobs))
        if progress:
            progress("configurations bounded", finished, len(cands))
    return out
