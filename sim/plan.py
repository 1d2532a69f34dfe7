"""``python -m sim.plan``: search every valid configuration, rank by latency, recommend one.

Example::

    python -m sim.plan --model pixart --gpus 8 --link pcie

Configurations searched, on N of the GPUs for every divisor N of the GPU count (leftover GPUs
could serve other requests): serial; every hybrid cfg x pipefusion x ulysses x ring x tensor
whose degrees multiply to N (pure strategies included); DistriFusion (with and without CFG
parallel). PipeFusion gets patch counts M among powers of two and multiples of its degree up
to 4x; configurations with stale context (PipeFusion with M > 1, DistriFusion) get every
warmup count asked for (default 0..2). Configurations that do not fit in memory are listed
apart and never recommended.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from sim.cli import (
    add_workload_args,
    calibration_from_args,
    cluster_from_args,
    cost_spec_from_args,
    parser,
    print_json,
    run_main,
    workload_from_args,
    write_output,
)
from sim.config import ParallelConfig, Workload, validate
from sim.cost import CostSpec
from sim.errors import UserError
from sim.evaluate import Prediction, evaluate, latency_lower_bound
from sim.hardware import DEFAULT_GPU, GPU, get_gpu
from sim.topology import Topology, build_topology


def build_parser() -> argparse.ArgumentParser:
    p = parser("python -m sim.plan",
               "Rank every valid parallel configuration by predicted latency.")
    add_workload_args(p)
    p.add_argument("--top", type=int, default=10, help="rows of the ranking to print")
    p.add_argument("--per-family", type=int, default=2,
                   help="best configurations shown for each strategy family")
    p.add_argument("--warmup", default="0,1,2",
                   help="warmup step counts to consider, comma-separated")
    p.add_argument("--exhaustive", action="store_true",
                   help="simulate every candidate (--json always does)")
    p.add_argument("--report", default=None, metavar="FILE",
                   help="write an interactive HTML report (Plotly, opens offline)")
    p.add_argument("--chrome-trace", default=None, metavar="FILE",
                   help="write the recommended configuration's Chrome/Perfetto trace")
    return p


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
    (the serial baseline is always included)."""
    if all_gpus:
        only = gpus
    m = wl.model
    rows, _ = m.token_grid(wl.height, wl.width)
    w_any = min(warmups)  # warmup changes nothing without stale context; show the user's pick
    out = [ParallelConfig(1)]
    for n in range(2, gpus + 1):
        if gpus % n or (only is not None and n != only):
            continue
        for c in ((1, 2) if m.cfg else (1,)):
            if n % c:
                continue
            raw = []
            for p, u, r, t in _factorizations(n // c, 4):
                if p > 1:
                    raw += [ParallelConfig(n, p, mm, w, cfg=c, ulysses=u, ring=r, tensor=t)
                            for mm in patch_candidates(p, rows) for w in
                            (warmups if mm > 1 else [w_any])]
                else:
                    raw.append(ParallelConfig(n, 1, 1, w_any, cfg=c, ulysses=u, ring=r,
                                              tensor=t))
            if n // c > 1:
                raw += [ParallelConfig(n, warmup=w, cfg=c, distrifusion=n // c)
                        for w in warmups]
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


def _evaluate_chunk(args: tuple) -> list[Prediction]:
    wl, cfgs, gpu, topo, scale, spec = args
    cost = spec.build(wl, gpu, scale)  # one cache for the whole chunk
    return [evaluate(wl, c, gpu, topo, cost, scale, fast=True, spec=spec).without_trace()
            for c in cfgs]


def _bound_chunk(args: tuple) -> list[tuple[float, bool]]:
    wl, cfgs, gpu, topo, scale, spec = args
    cost = spec.build(wl, gpu, scale)
    out = []
    for c in cfgs:
        lb, mem = latency_lower_bound(wl, c, gpu, topo, cost, scale)
        out.append((lb, max(m.total for m in mem) > gpu.memory_bytes))
    return out


@dataclass
class PlanResult:
    """Ranked predictions plus what the search skipped and why."""

    ranked: list[Prediction]
    candidates: int
    pruned: int  # provably slower than every row shown, never simulated
    oom_skipped: int  # do not fit in memory, never simulated


class _Pool:
    """Runs chunks of work in ``workers`` processes (inline when 1)."""

    def __init__(self, workers: int) -> None:
        self.pool = None
        if workers > 1:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
            self.pool = ProcessPoolExecutor(workers, mp_context=ctx)
        self.workers = workers

    def map(self, fn, wl, cfgs, gpu, topo, scale, spec) -> list:
        if not cfgs:
            return []
        n = max(1, min(len(cfgs), 4 * self.workers)) if self.pool else 1
        jobs = [(wl, cfgs[i::n], gpu, topo, scale, spec) for i in range(n)]
        results = list(self.pool.map(fn, jobs)) if self.pool else [fn(j) for j in jobs]
        out: list = [None] * len(cfgs)
        for i, res in enumerate(results):
            out[i::n] = res
        return out

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown()


def plan(wl: Workload, gpu: GPU, topo: Topology, warmups: list[int], scale: float = 1.0,
         top: int = 10, per_family: int = 2, exhaustive: bool = False,
         progress: bool = False, workers: int | None = None,
         all_gpus: bool = False, only: int | None = None,
         spec: CostSpec | None = None) -> PlanResult:
    """Simulate the candidates (planner mode: coarse communication, periodic steps) and rank
    them. Unless ``exhaustive``, a candidate is skipped when a lower bound on its latency
    (``latency_lower_bound``) already shows it cannot enter the ``top`` overall nor the best
    ``per_family`` of its family, and candidates that do not fit in memory are not simulated
    (unless nothing fits). The rows shown are therefore exactly those an exhaustive search
    would show."""
    spec = spec or CostSpec()
    cands = candidates(wl, topo.num_gpus, warmups, all_gpus, only)
    workers = workers or (min(os.cpu_count() or 1, 8) if len(cands) > 40 else 1)
    pool = _Pool(workers)
    try:
        if exhaustive:
            preds = pool.map(_evaluate_chunk, wl, cands, gpu, topo, scale, spec)
            return PlanResult(rank(preds), len(cands), 0, 0)
        bounds = pool.map(_bound_chunk, wl, cands, gpu, topo, scale, spec)
        order = sorted(range(len(cands)), key=lambda i: bounds[i][0])
        fitting = [i for i in order if not bounds[i][1]]
        oom = [i for i in order if bounds[i][1]]
        todo = fitting if fitting else oom[:top]
        preds: list[Prediction] = []
        overall: list[float] = []
        by_family: dict[str, list[float]] = {}
        pruned = 0
        batch = 4 * workers
        pos = 0
        while pos < len(todo):
            keep = []
            for i in todo[pos:pos + batch]:
                lb, fam = bounds[i][0], cands[i].strategy
                fam_best = by_family.get(fam, [])
                if (len(overall) >= top and lb >= overall[top - 1] and
                        len(fam_best) >= per_family and lb >= fam_best[per_family - 1]):
                    pruned += 1
                else:
                    keep.append(cands[i])
            pos += batch
            for p in pool.map(_evaluate_chunk, wl, keep, gpu, topo, scale, spec):
                preds.append(p)
                if not p.oom:
                    overall = sorted(overall + [p.latency_s])[:top]
                    fam = p.config.strategy
                    by_family[fam] = sorted(by_family.get(fam, []) + [p.latency_s])[:per_family]
            if progress:
                frac = min(pos, len(todo)) / len(todo)
                sys.stderr.write(f"\rsimulating [{'#' * int(30 * frac):<30}] "
                                 f"{min(pos, len(todo))}/{len(todo)}")
                sys.stderr.flush()
        if progress:
            sys.stderr.write("\r" + " " * 60 + "\r")
        return PlanResult(rank(preds), len(cands), pruned, len(oom) if fitting else 0)
    finally:
        pool.close()


def family(p: Prediction) -> str:
    return p.config.strategy


def describe(p: Prediction) -> str:
    c = p.config
    if c.strategy == "serial":
        return "serial, 1 GPU"
    return f"{c.label()} on {c.gpus} GPUs"


def why(ranked: list[Prediction]) -> str:
    """One line on why the first configuration wins."""
    best = ranked[0]
    if best.oom:
        return "nothing fits in memory: use GPUs with more memory or drop the text encoder " \
               "(--no-text-encoder) if it runs elsewhere"
    serial = next((p for p in ranked if p.config.strategy == "serial"), None)
    parts = []
    if serial is not None and serial is not best:
        parts.append(f"{serial.latency_s / best.latency_s:.2f}x faster than one GPU")
    m = best.metrics
    if best.config.gpus > 1:
        parts.append(f"bubbles {m.bubble_fraction:.0%} of GPU time; of "
                     f"{m.comm_bytes_per_step / 1e6:.1f} MB sent per step only "
                     f"{max(m.exposed_comm_s) * 1e3:.1f} ms in all is not hidden by compute")
    other_n = [p for p in ranked[1:] if not p.oom and p.config.gpus != best.config.gpus]
    if other_n:
        o = other_n[0]
        parts.append(f"{o.latency_s / best.latency_s - 1:.0%} ahead of the best on "
                     f"{o.config.gpus} GPU{'s' if o.config.gpus > 1 else ''} ({describe(o)})")
    same_n = [p for p in ranked[1:] if not p.oom and p.config.gpus == best.config.gpus
              and p.config.patches != best.config.patches]
    if same_n and best.config.pipefusion > 1:
        o = same_n[0]
        parts.append(f"M={best.config.patches} beats M={o.config.patches} by "
                     f"{o.latency_s / best.latency_s - 1:.0%}")
    if best.config.stale and best.config.warmup == 0:
        parts.append("note: W=0 starts from empty K,V buffers, which can hurt image quality; "
                     "--warmup 1,2 keeps the search to warmed-up runs")
    return "; ".join(parts)


def table(ranked: list[Prediction], top: int) -> str:
    """The given configurations as a fixed-width table (speedups against serial)."""
    serial = next((p for p in ranked if p.config.strategy == "serial"), None)
    width = max([len(p.config.label()) for p in ranked[:top]] + [8])
    head = (f"{'#':>3}  {'configuration':<{width}}{'gpus':>5}{'latency s':>11}{'speedup':>9}"
            f"{'mem GB':>8}{'bubble':>8}{'exposed ms':>11}{'MB/step':>10}  fits")
    lines = [head, "-" * len(head)]
    for i, p in enumerate(ranked[:top], 1):
        c = p.config
        speed = serial.latency_s / p.latency_s if serial else float("nan")
        m = p.metrics
        lines.append(
            f"{i if not p.oom else '-':>3}  {c.label():<{width}}{c.gpus:>5}"
            f"{p.latency_s:>11.3f}{speed:>8.2f}x{p.memory_gb:>8.1f}"
            f"{m.bubble_fraction:>8.1%}{max(m.exposed_comm_s) * 1e3:>11.1f}"
            f"{m.comm_bytes_per_step / 1e6:>10.1f}  {'OOM' if p.oom else 'yes'}")
    return "\n".join(lines)


def best_per_family(ranked: list[Prediction], per_family: int) -> list[Prediction]:
    """The best ``per_family`` configurations of each strategy family, families ordered by
    their best latency (fitting ones first)."""
    seen: dict[str, list[Prediction]] = {}
    for p in ranked:
        seen.setdefault(family(p), [])
        if len(seen[family(p)]) < per_family:
            seen[family(p)].append(p)
    return [p for fam in seen.values() for p in fam]


def write_artifacts(args: argparse.Namespace, wl: Workload, gpu: GPU, topo: Topology,
                    warmups: list[int], scale: float, result: PlanResult,
                    spec: CostSpec) -> None:
    """The --report and --chrome-trace files: the recommendation is simulated again in full
    (per-block schedule) for its timeline; the report adds the other link and GPU counts."""
    best = result.ranked[0]
    rec = evaluate(wl, best.config, gpu, topo, scale=scale, spec=spec)
    if args.chrome_trace:
        write_output(args.chrome_trace, rec.trace.write_chrome)
    if not args.report:
        return
    try:
        from reports.plan_report import write_plan_report
    except ImportError:
        raise UserError("reports need plotly: pip install 'ditsim[reports]'") from None
    link_gpu = gpu if gpu.nvlink else get_gpu(DEFAULT_GPU["nvlink"])
    links: dict[str, dict[str, float]] = {}
    for link in ("pcie", "nvlink"):
        lt = build_topology(link_gpu, args.gpus, link, args.nodes, args.inter_node)
        res = result if (link == args.link and link_gpu is gpu) else plan(
            wl, link_gpu, lt, warmups, scale, top=1, per_family=1, spec=spec)
        links[f"{link_gpu.name} {link}"] = {p.config.strategy: p.latency_s
                                            for p in best_per_family(res.ranked, 1) if not p.oom}
    note = "same GPU" if link_gpu is gpu else \
        f"{gpu.name} has no NVLink, so {link_gpu.name} is shown over both"
    by_gpus: dict[str, dict[int, float]] = {}
    for n in [d for d in range(1, topo.num_gpus + 1) if topo.num_gpus % d == 0]:
        res = plan(wl, gpu, topo, warmups, scale, top=1, per_family=1, only=n, spec=spec)
        for p in best_per_family(res.ranked, 1):
            if not p.oom and (p.config.gpus == n):
                by_gpus.setdefault(p.config.strategy, {})[n] = p.latency_s
    intro = (f"{wl.model.name} at {wl.width}x{wl.height}, {wl.steps} steps, {wl.dtype}; "
             f"{topo.num_gpus} x {gpu.name} over {args.link}. Costs: "
             f"{'profile ' + spec.profile if spec.profile else 'analytic roofline'}"
             f"{f' scaled by {scale:.3f}' if scale != 1.0 else ''}. {result.candidates} "
             f"configurations searched.")
    write_output(args.report, lambda p: write_plan_report(
        p, "ditsim plan", intro, result.ranked, rec, best_per_family(result.ranked, 1),
        links, note, by_gpus))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    wl = workload_from_args(args)
    gpu, topo = cluster_from_args(args)
    if args.top < 1:
        raise UserError(f"--top must be at least 1, got {args.top}")
    try:
        warmups = sorted({int(w) for w in args.warmup.split(",")})
    except ValueError:
        raise UserError(f"--warmup must be comma-separated integers, got '{args.warmup}'") from None
    if any(w < 0 for w in warmups):
        raise UserError("--warmup values must be 0 or more")
    validate(wl, ParallelConfig(1))
    spec = cost_spec_from_args(args)
    scale = calibration_from_args(args, wl, gpu, spec)
    result = plan(wl, gpu, topo, warmups, scale, spec=spec, top=args.top,
                  per_family=args.per_family,
                  exhaustive=args.json or args.exhaustive,
                  progress=not args.json and sys.stderr.isatty())
    ranked = result.ranked
    elapsed = time.perf_counter() - t0
    if args.report or args.chrome_trace:
        write_artifacts(args, wl, gpu, topo, warmups, scale, result, spec)
    if args.json:
        print_json([p.as_dict() for p in ranked])
        return 0
    m = wl.model
    print(f"{m.name} at {wl.width}x{wl.height}, {wl.steps} steps, {wl.dtype}; "
          f"{topo.num_gpus} x {gpu.name} ({gpu.memory_bytes / 1e9:.0f} GB) over {args.link}"
          f"{f', {args.nodes} nodes' if args.nodes > 1 else ''}"
          f"{'' if args.gpu else ' (GPU assumed: pass --gpu to change)'}")
    best = ranked[0]
    print(f"recommended: {describe(best)}  ->  {best.latency_s:.3f} s, "
          f"{best.memory_gb:.1f} GB per GPU" + ("  (does NOT fit)" if best.oom else ""))
    print(f"why: {why(ranked)}")
    print()
    print(table([p for p in ranked if not p.oom] or ranked, args.top))
    print("\nbest of each family (the trade-off, not only the winner):")
    print(table(best_per_family(ranked, args.per_family), 10**6))
    simulated = len(ranked)
    print(f"\n{result.candidates} configurations searched in {elapsed:.2f} s: {simulated} "
          f"simulated, {result.pruned} skipped by a latency lower bound (provably slower than "
          f"every row shown), {result.oom_skipped} skipped as out of memory. Costs: "
          f"{'profile ' + spec.profile if spec.profile else 'analytic roofline'}"
          f"{f' scaled by {scale:.3f}' if scale != 1.0 else ''}.")
    return 0


if __name__ == "__main__":
    run_main(main)
