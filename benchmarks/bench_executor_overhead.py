"""Overhead of the executor's one-process denoising loop against the diffusers pipeline's loop.

Same transformer object, prompt embeddings, seed, resolution, steps and guidance scale; the two
loops alternate ``--repeats`` times in one process (same threads, same warm caches) and the
medians are compared. The pipeline's loop is timed from its first transformer call to the return
of its last scheduler step (hooks; its code runs unchanged), the executor's from the start of
its op loop to its end. Target (issue 5): the executor at most 5 % slower.

    python benchmarks/bench_executor_overhead.py [--model pixart-small] [--resolution 512]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere


def executor_loop(net, model, prompts, seed: int, steps: int, height: int, width: int,
                  guidance: float, sync: Callable[[], None] | None = None,
                  dtype: str = "fp32"):
    """Final latents and loop seconds of the executor on one process (serial schedule).
    ``sync`` (``torch.cuda.synchronize`` on a GPU) is called before the clock starts and
    before each op's row closes, as ``executor.run`` does, so the loop ends when the device
    is done; ``dtype`` names ``net``'s data type for the workload (``fp32``, ``bf16``)."""
    import diffusers

    from executor.interpreter import StageExecutor
    from sim.config import ParallelConfig, Workload
    from sim.strategies import build_schedule

    wl = Workload(model, height, width, steps, dtype=dtype, text_encoder=False, vae=False)
    sched = build_schedule(wl, ParallelConfig(gpus=1))
    stage = StageExecutor(net, sched, 0, prompts, seed, guidance,
                          diffusers.DPMSolverMultistepScheduler(), net.device, net.dtype)
    if sync is not None:  # the set-up's copies to the device are not part of the loop
        sync()
    origin = time.perf_counter()
    result = stage.run(origin, sync=sync)
    return result.latents, result.loop_s


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print a table (or JSON with ``--json``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pixart-small")
    p.add_argument("--resolution", type=int, default=512, help="pixels (square)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--guidance-scale", type=float,
                   help="default: the model's pipeline default (sim.models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    import torch
    from diffusers.utils import logging as dlogging

    from executor.diffusers_models import build_transformer
    from executor.inputs import random_prompts
    from executor.reference import reference_pipeline, timed_pipeline_loop
    from sim.models import get_model

    dlogging.set_verbosity_error()
    if a.threads:
        torch.set_num_threads(a.threads)
    model = get_model(a.model)
    guidance = a.guidance_scale if a.guidance_scale is not None else model.guidance_scale
    net = build_transformer(model, a.resolution, seed=a.seed)
    prompts = random_prompts(model, a.seed)
    pipe = reference_pipeline(net)
    args = (prompts, a.seed, a.steps, a.resolution, a.resolution, guidance)
    # One untimed round of each: first calls allocate and pick kernels.
    ref, _ = timed_pipeline_loop(pipe, *args)
    executor_loop(net, model, *args)
    pipe_s, exec_s = [], []
    for _ in range(a.repeats):
        ref, t = timed_pipeline_loop(pipe, *args)
        pipe_s.append(t)
        lat, t = executor_loop(net, model, *args)
        exec_s.append(t)
    diff = float((lat - ref).abs().max() / ref.abs().max())
    mp, me = statistics.median(pipe_s), statistics.median(exec_s)
    out = {
        "model": model.name, "resolution": a.resolution, "steps": a.steps,
        "threads": torch.get_num_threads(), "repeats": a.repeats,
        "pipeline_loop_s": pipe_s, "executor_loop_s": exec_s,
        "pipeline_median_s": mp, "executor_median_s": me,
        "overhead_pct": 100.0 * (me / mp - 1.0),
        # Minima resist interference from other load on the machine.
        "overhead_min_pct": 100.0 * (min(exec_s) / min(pipe_s) - 1.0),
        "max_rel_latent_diff": diff,
    }
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{model.name} {a.resolution} px, {a.steps} steps, {out['threads']} threads, "
              f"{a.repeats} repeats")
        print(f"  diffusers pipeline loop: median {mp:.3f} s  {[round(t, 3) for t in pipe_s]}")
        print(f"  executor loop (1 proc):  median {me:.3f} s  {[round(t, 3) for t in exec_s]}")
        print(f"  executor overhead: {out['overhead_pct']:+.2f} % of medians, "
              f"{out['overhead_min_pct']:+.2f} % of minima (target <= +5 %); "
              f"latents differ by {diff:.1e} of max")
    return 0


if __name__ == "__main__":
    sys.exit(main())
