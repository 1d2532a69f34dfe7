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

import multiprocessing as mp
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from math import inf
from typing import Any

from sim.config import ParallelConfig, Workload, check_warmup, validate
from sim.cost import CostSpec
from sim.errors import RunFailed, UserError
from sim.evaluate import Prediction, evaluate, lower_bounds
from sim.hardware import GPU
from sim.topology import Topology

# One unit of work for a process: the configurations share the workload, cluster and costs.
_Job = tuple[Workload, list[ParallelConfig], GPU, Topology, float, CostSpec]


def patch_candidates(n: int, rows: int) -> list[int]:
    """Patch counts worth trying with ``n`` stages: powers of two and multiples of ``n`` up
    to ``4n``, never more than the latent's token rows."""
    if n == 1:
        return [1]
    ms = {1 << k for k in range(0, 8) if (1 << k) <= 4 * n} | {k * n for k in range(1, 5)}
    return sorted(m for m in ms if m <= rows)


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
                for mm in patch_candidates(p, rows):
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


def _evaluate_chunk(job: _Job) -> list[Prediction]:
    wl, cfgs, gpu, topo, scale, spec = job
    cost = spec.build(wl, gpu, scale)  # one cache for the whole chunk
    return [evaluate(wl, c, gpu, topo, cost, scale, fast=True, spec=spec).without_trace()
            for c in cfgs]


def _bound_chunk(job: _Job) -> list[tuple[float, bool, float]]:
    wl, cfgs, gpu, topo, scale, spec = job
    cost = spec.build(wl, gpu, scale)
    return [(lb, max(m.total for m in mem) > gpu.memory_bytes, max(m.total for m in mem))
            for lb, mem in lower_bounds(wl, cfgs, gpu, topo, cost)]


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

    def lower_bound(self, cfg: ParallelConfig) -> float | None:
        """The lower bound the search computed for ``cfg`` (seconds), if any."""
        return next((c.lower_bound_s for c in self.considered if c.config == cfg), None)

    def skipped(self) -> list[Candidate]:
        """The candidates that were not simulated, by lower bound."""
        return sorted((c for c in self.considered if not c.simulated),
                      key=lambda c: (c.oom, c.lower_bound_s))


class _Pool:
    """Runs chunks of work in ``workers`` processes (inline when 1)."""

    def __init__(self, workers: int) -> None:
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
            self.pool = ProcessPoolExecutor(workers, mp_context=ctx)
        self.workers = workers

    def map(self, fn: Callable[[_Job], list[Any]], wl: Workload, cfgs: list[ParallelConfig],
            gpu: GPU, topo: Topology, scale: float, spec: CostSpec,
            contiguous: bool = False) -> list[Any]:
        """``fn``'s result for each of ``cfgs``, in order. Chunks interleave the list (the
        costly configurations spread over the workers) unless ``contiguous`` (neighbours,
        such as the warmup variants of one configuration, stay in one chunk)."""
        if not cfgs:
            return []
        n = max(1, min(len(cfgs), 4 * self.workers)) if self.pool else 1
        if contiguous:
            size = -(-len(cfgs) // n)
            jobs = [(wl, cfgs[i:i + size], gpu, topo, scale, spec)
                    for i in range(0, len(cfgs), size)]
            results = list(self.pool.map(fn, jobs)) if self.pool else [fn(j) for j in jobs]
            return [x for res in results for x in res]
        jobs = [(wl, cfgs[i::n], gpu, topo, scale, spec) for i in range(n)]
        results = list(self.pool.map(fn, jobs)) if self.pool else [fn(j) for j in jobs]
        out: list[Any] = [None] * len(cfgs)
        for i, res in enumerate(results):
            out[i::n] = res
        return out

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown()


def search(wl: Workload, gpu: GPU, topo: Topology, warmups: list[int], scale: float = 1.0,
           top: int = 10, per_family: int = 2, exhaustive: bool = False,
           progress: Callable[[str, int, int], None] | None = None,
           workers: int | None = None,
           all_gpus: bool = False, only: int | None = None,
           spec: CostSpec | None = None) -> SearchResult:
    """Simulate the candidates (planner mode: coarse communication, periodic steps) and rank
    them by latency (seconds). ``warmups`` are step counts, ``scale`` the factor on compute
    costs. Unless ``exhaustive``, a candidate is skipped when a lower bound on its latency
    (``latency_lower_bound``) already shows it cannot enter the ``top`` overall nor the best
    ``per_family`` of its family (``per_family=0``: no family rows are kept) nor beat the best
    on its GPU count (nor, without a cold start, the best without one on its GPU count:
    ``sim.plan`` recommends that), and candidates that do
    not fit in memory are not simulated (unless nothing fits). The rows shown are therefore
    exactly those an exhaustive search would show, and so is the best of each GPU count.
    ``progress(what, done, total)`` is told how far the simulations are (``sim.progress``)."""
    spec = spec or CostSpec()
    cands = candidates(wl, topo.num_gpus, warmups, all_gpus, only)
    workers = workers or (min(os.cpu_count() or 1, 8) if len(cands) > 40 else 1)
    pool = _Pool(workers)
    try:
        bounds = pool.map(_bound_chunk, wl, cands, gpu, topo, scale, spec, contiguous=True)

        def considered(simulated: set[int]) -> list[Candidate]:
            return [Candidate(c, b[0], b[1], b[2], i in simulated)
                    for i, (c, b) in enumerate(zip(cands, bounds))]

        if exhaustive:
            preds = pool.map(_evaluate_chunk, wl, cands, gpu, topo, scale, spec)
            return SearchResult(rank(preds), len(cands), 0, 0,
                                considered(set(range(len(cands)))))
        order = sorted(range(len(cands)), key=lambda i: bounds[i][0])
        fitting = [i for i in order if not bounds[i][1]]
        oom = [i for i in order if bounds[i][1]]
        todo = fitting if fitting else oom[:top]
        preds = []
        overall: list[float] = []
        by_family: dict[str, list[float]] = {}
        # Best latency so far on each GPU count: sim.plan's why line compares the winner with
        # the best of another count, which must be the true best, never a pruned candidate.
        by_gpus: dict[int, float] = {}
        # The same without a cold start (W=0 stale context): sim.plan recommends the best of
        # these over a faster cold-start one and compares it with the others, so they must be
        # the true best too.
        warm_by_gpus: dict[int, float] = {}
        pruned = 0
        batch = 4 * workers
        pos = 0
        done: set[int] = set()
        while pos < len(todo):
            keep = []
            for i in todo[pos:pos + batch]:
                lb, fam = bounds[i][0], cands[i].strategy
                fam_best = by_family.get(fam, [])
                n_best = by_gpus.get(cands[i].gpus)
                if (len(overall) >= top and lb >= overall[top - 1] and
                        (per_family == 0 or (len(fam_best) >= per_family and
                                             lb >= fam_best[per_family - 1])) and
                        n_best is not None and lb >= n_best and
                        (cands[i].cold_start or lb >= warm_by_gpus.get(cands[i].gpus, inf))):
                    pruned += 1
                else:
                    keep.append(cands[i])
                    done.add(i)
            pos += batch
            for p in pool.map(_evaluate_chunk, wl, keep, gpu, topo, scale, spec):
                preds.append(p)
                if not p.oom:
                    overall = sorted(overall + [p.latency_s])[:top]
                    if per_family:
                        fam = p.config.strategy
                        by_family[fam] = sorted(by_family.get(fam, []) +
                                                [p.latency_s])[:per_family]
                    n = p.config.gpus
                    by_gpus[n] = min(by_gpus.get(n, p.latency_s), p.latency_s)
                    if not p.config.cold_start:
                        warm_by_gpus[n] = min(warm_by_gpus.get(n, inf), p.latency_s)
            if progress:
                progress("configurations simulated or ruled out", min(pos, len(todo)), len(todo))
        return SearchResult(rank(preds), len(cands), pruned, len(oom) if fitting else 0,
                            considered(done))
    except BrokenProcessPool:
        # A worker died (killed by a signal, or by the kernel when memory ran out): nothing in
        # the input caused it, so exit 1 (a failed run, which may succeed if rerun), not 2.
        raise RunFailed(f"a planner worker process died (killed, or out of memory?) while "
                        f"simulating {len(cands)} configurations on {workers} processes; "
                        f"nothing was recommended. Rerun, or search fewer configurations "
                        f"(--warmup with fewer counts, fewer --gpus)") from None
    finally:
        pool.close()
