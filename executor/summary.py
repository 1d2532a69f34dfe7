"""Rank 0's account of a run: the JSON object ``executor.run --json`` prints (latency, peak
memory next to the simulator's prediction, the measured trace's metrics, the configuration),
and the output files the flags ask for (latents, trace CSV, Chrome trace)."""

from __future__ import annotations

import argparse
import statistics

import torch

from executor.request import RunPlan
from sim.config import Workload
from sim.hardware import get_gpu
from sim.memory import memory_per_rank
from sim.metrics import compute_metrics
from sim.models import DiTModel
from sim.outputs import write_outputs
from sim.trace import Trace


def comparable_memory(ranks: list[dict]) -> dict:
    """Measured and predicted memory of the rank whose model and loop use the most (GB),
    each as baseline + model + loop: the baseline (Python, torch, diffusers before the
    model) is the process's and has no counterpart in the simulator, so the comparable
    figures are model + loop on both sides."""
    r = max(ranks, key=lambda r: r["weights_memory_gb"] + r["loop_memory_gb"])
    return {"rank": r["rank"], "baseline_gb": r["baseline_memory_gb"],
            "model_gb": r["weights_memory_gb"], "loop_gb": r["loop_memory_gb"],
            "measured_gb": r["weights_memory_gb"] + r["loop_memory_gb"],
            "predicted_model_gb": r["predicted_weights_gb"],
            "predicted_loop_gb": r["predicted_loop_gb"],
            "predicted_gb": r["predicted_weights_gb"] + r["predicted_loop_gb"]}


def memory_line(summary: dict) -> str:
    """The run's memory in one line: the peak as baseline + model + loop, then model + loop
    against the simulator's same figure."""
    c = summary["comparable_memory"]
    return (f"peak memory {summary['peak_memory_gb']:.3f} GB ({summary['memory_kind']}, rank "
            f"{c['rank']}) = baseline {c['baseline_gb']:.3f} (process before the model) + "
            f"model {c['model_gb']:.3f} + loop {c['loop_gb']:.3f} (activations, K,V and "
            f"receive buffers); model + loop {c['measured_gb']:.3f} GB against the "
            f"simulator's {c['predicted_gb']:.3f} GB (model {c['predicted_model_gb']:.3f} + "
            f"loop {c['predicted_loop_gb']:.3f})")


def summarize(plan: RunPlan, model: DiTModel, args: argparse.Namespace, gathered: list[dict],
              memory_kind: str) -> dict:
    """Write the requested outputs and return the summary (JSON object; times in seconds,
    memory in GB). ``gathered`` holds every rank's results (``rank``, ``loop_s``, ``loops``,
    ``rows``, ``latents``, ``peak``, ``baseline``, ``loaded`` (the process once its model is
    in place) and ``kv`` in bytes, ``window_reset``, the last loop's ``thread_cpu_s`` and
    ``process_cpu_s``, torch ``threads``);
    ``model`` is ``plan.model`` with the parameter counts of the network actually run."""
    sched = plan.schedule
    world = sched.world_size
    rows = [r for g in gathered for r in g["rows"]]
    trace = Trace(rows)
    metrics = compute_metrics(trace, world, sched.steps, sched.warmup)
    wl = Workload(model, plan.workload.height, plan.workload.width, plan.workload.steps,
                  dtype=plan.dtype, text_encoder=False, vae=False)
    # The simulator's runtime allowance is the only GPU-specific term; any registry GPU
    # other than "cpu" selects it.
    gpu = get_gpu("cpu" if plan.device == "cpu" else "h100-sxm")
    predicted = memory_per_rank(wl, plan.config, sched, gpu)
    ranks = []
    for g in sorted(gathered, key=lambda g: g["rank"]):
        pred = predicted[g["rank"]]
        loaded = g.get("loaded", g["baseline"])
        ranks.append({
            "rank": g["rank"],
            "loop_s": g["loop_s"],
            # The last run's loop in CPU seconds: the compute thread's and the process's.
            "loop_thread_cpu_s": g["thread_cpu_s"],
            "loop_process_cpu_s": g["process_cpu_s"],
            "threads": g["threads"],
            "peak_memory_gb": g["peak"] / 1e9,
            "baseline_memory_gb": g["baseline"] / 1e9,
            "model_memory_gb": max(0, g["peak"] - g["baseline"]) / 1e9,
            "kv_buffer_gb": g["kv"] / 1e9,
            # The same split on both sides (the runtime allowance, a CUDA context the
            # allocator does not see and no part of an RSS delta, left out of the prediction):
            "weights_memory_gb": max(0, loaded - g["baseline"]) / 1e9,
            "loop_memory_gb": max(0, g["peak"] - loaded) / 1e9,
            "predicted_weights_gb": (pred.weights + pred.text_encoder + pred.vae) / 1e9,
            "predicted_loop_gb": (pred.activations + pred.kv_buffers + pred.recv_buffers) / 1e9,
            "predicted_memory_gb": pred.total / 1e9,
            "predicted_memory": pred.as_dict(),
            "peak_window": "loop" if g["window_reset"] else "process",
        })
    latents = next(g["latents"] for g in gathered if g["latents"] is not None)
    # All three or none, each through a temporary file: a full disk leaves no truncated file
    # and no latents beside a trace that failed.
    write_outputs([("--save-latents", args.save_latents, lambda p: torch.save(latents, p)),
                   ("--trace", args.trace, trace.write_csv),
                   ("--chrome-trace", args.chrome_trace, trace.write_chrome)])
    cfg = plan.config.as_dict()
    cfg.update(label=plan.config.label(), model=model.name,
               resolution=[wl.height, wl.width], steps=wl.steps,
               dtype=plan.dtype, device=plan.device, world_size=world,
               patches=sched.patches, warmup=sched.warmup,
               stage_layers=[list(s) for s in sched.stage_layers],
               guidance_scale=args.guidance_scale, seed=args.seed,
               backend=("nccl" if plan.device == "cuda" else "gloo") if world > 1 else "none",
               threads=torch.get_num_threads(), timeout_s=args.timeout,
               model_dir=plan.model_dir, prompt_embeds=args.prompt_embeds)
    # A run lasts until its slowest rank is done; over several runs, the median run.
    per_run = [max(g["loops"][i] for g in gathered) for i in range(args.runs)]
    return {
        "latency_s": statistics.median(per_run),
        "latencies_s": per_run,
        "peak_memory_gb": max(r["peak_memory_gb"] for r in ranks),
        "predicted_memory_gb": max(r["predicted_memory_gb"] for r in ranks),
        "comparable_memory": comparable_memory(ranks),
        "memory_kind": memory_kind,
        "memory_per_rank": ranks,
        "latents_abs_max": float(latents.abs().max()),
        "trace_rows": len(trace),
        "metrics": metrics.as_dict(),
        "config": cfg,
        # --pace-probe: per rank, the probe before the warm-up runs and after the measured ones.
        **({"pace_probe": [g["pace"] for g in sorted(gathered, key=lambda g: g["rank"])]}
           if any(g.get("pace") for g in gathered) else {}),
    }
