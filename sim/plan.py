"""``python -m sim.plan``: search every valid configuration, rank by latency, recommend one.

Example::

    python -m sim.plan --model pixart --gpus 8 --link pcie

Configurations searched: serial on one GPU, and PipeFusion on N of the GPUs (N a divisor of
the GPU count, so leftover GPUs could serve other requests) with patch counts M among powers of
two and multiples of N up to 4N, and warmup steps 0..2. Configurations that do not fit in
memory are listed last and never recommended.
"""

from __future__ import annotations

import argparse
import sys
import time

from sim.cli import (
    add_workload_args,
    cluster_from_args,
    parser,
    print_json,
    run_main,
    workload_from_args,
)
from sim.config import ParallelConfig, Workload, validate
from sim.errors import UserError
from sim.evaluate import Prediction, calibration_scale, evaluate
from sim.hardware import GPU
from sim.topology import Topology


def build_parser() -> argparse.ArgumentParser:
    p = parser("python -m sim.plan",
               "Rank every valid parallel configuration by predicted latency.")
    add_workload_args(p)
    p.add_argument("--top", type=int, default=10, help="rows of the table to print")
    p.add_argument("--warmup", default="0,1,2",
                   help="warmup step counts to consider, comma-separated")
    p.add_argument("--single-gpu-latency", type=float, default=None, metavar="SECONDS",
                   help="your measured single-GPU end-to-end latency; scales compute costs")
    return p


def patch_candidates(n: int, rows: int) -> list[int]:
    """Patch counts worth trying with ``n`` stages: powers of two and multiples of ``n`` up
    to ``4n``, never more than the latent's token rows."""
    if n == 1:
        return [1]
    ms = {1 << k for k in range(0, 8) if (1 << k) <= 4 * n} | {k * n for k in range(1, 5)}
    return sorted(m for m in ms if m <= rows)


def candidates(wl: Workload, gpus: int, warmups: list[int]) -> list[ParallelConfig]:
    """Every configuration the planner simulates for ``gpus`` GPUs."""
    rows, _ = wl.model.token_grid(wl.height, wl.width)
    out = [ParallelConfig(1)]
    for n in range(2, min(gpus, wl.model.num_blocks) + 1):
        if gpus % n:
            continue
        for m in patch_candidates(n, rows):
            for w in warmups:
                if w <= wl.steps:
                    out.append(ParallelConfig(n, n, m, w))
    return out


def rank(preds: list[Prediction]) -> list[Prediction]:
    """Configurations that fit first, fastest first; then those that do not fit."""
    return sorted(preds, key=lambda p: (p.oom, p.latency_s, p.config.gpus, p.config.patches))


def plan(wl: Workload, gpu: GPU, topo: Topology, warmups: list[int],
         scale: float = 1.0, progress: bool = False) -> list[Prediction]:
    """Simulate every candidate and return them ranked."""
    cands = candidates(wl, topo.num_gpus, warmups)
    preds = []
    for i, cfg in enumerate(cands):
        validate(wl, cfg)
        preds.append(evaluate(wl, cfg, gpu, topo, scale=scale))
        if progress:
            done = (i + 1) / len(cands)
            sys.stderr.write(f"\rsimulating [{'#' * int(30 * done):<30}] {i + 1}/{len(cands)}")
            sys.stderr.flush()
    if progress:
        sys.stderr.write("\r" + " " * 60 + "\r")
    return rank(preds)


def describe(p: Prediction) -> str:
    c = p.config
    if c.strategy == "serial":
        return "serial, 1 GPU"
    return f"PipeFusion {c.pipefusion} GPUs, M={c.patches}, W={c.warmup}"


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
    if best.config.strategy == "pipefusion":
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
    if same_n and best.config.strategy == "pipefusion":
        o = same_n[0]
        parts.append(f"M={best.config.patches} beats M={o.config.patches} by "
                     f"{o.latency_s / best.latency_s - 1:.0%}")
    if best.config.strategy == "pipefusion" and best.config.warmup == 0:
        parts.append("note: W=0 starts from empty K,V buffers, which can hurt image quality; "
                     "--warmup 1,2 keeps the search to warmed-up runs")
    return "; ".join(parts)


def table(ranked: list[Prediction], top: int) -> str:
    """The ranked configurations as a fixed-width table."""
    serial = next((p for p in ranked if p.config.strategy == "serial"), None)
    head = (f"{'#':>3}  {'strategy':<11}{'gpus':>5}{'M':>4}{'W':>3}{'latency s':>11}"
            f"{'speedup':>9}{'mem GB':>8}{'bubble':>8}{'exposed ms':>11}{'MB/step':>9}  fits")
    lines = [head, "-" * len(head)]
    shown = [p for p in ranked if not p.oom][:top] + [p for p in ranked if p.oom][:3]
    for i, p in enumerate(shown, 1):
        c = p.config
        speed = serial.latency_s / p.latency_s if serial else float("nan")
        m = p.metrics
        lines.append(
            f"{i if not p.oom else '-':>3}  {c.strategy:<11}{c.gpus:>5}{c.patches:>4}"
            f"{c.warmup:>3}{p.latency_s:>11.3f}{speed:>8.2f}x{p.memory_gb:>8.1f}"
            f"{m.bubble_fraction:>8.1%}{max(m.exposed_comm_s) * 1e3:>11.2f}"
            f"{m.comm_bytes_per_step / 1e6:>9.2f}  {'OOM' if p.oom else 'yes'}")
    return "\n".join(lines)


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
    scale = 1.0
    if args.single_gpu_latency is not None:
        if args.single_gpu_latency <= 0:
            raise UserError("--single-gpu-latency must be a positive number of seconds")
        scale = calibration_scale(wl, gpu, args.single_gpu_latency)
    ranked = plan(wl, gpu, topo, warmups, scale, progress=not args.json and sys.stderr.isatty())
    elapsed = time.perf_counter() - t0
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
    print(table(ranked, args.top))
    n_oom = sum(p.oom for p in ranked)
    print(f"\n{len(ranked)} configurations simulated in {elapsed:.2f} s"
          f"{f'; {n_oom} do not fit in memory' if n_oom else ''}. Costs: analytic roofline"
          f"{f' scaled by {scale:.3f}' if scale != 1.0 else ''}.")
    return 0


if __name__ == "__main__":
    run_main(main)
