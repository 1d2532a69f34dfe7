"""Run a PipeFusion schedule for real: ``torchrun --nproc_per_node N -m executor.run [options]``
(or ``python -m executor.run`` for one process).

Every rank builds the same schedule with ``sim.strategies.build_schedule`` (so a configuration
the simulator rejects fails here with the same message, before any process group starts),
keeps its stage's share of the transformer, and interprets its ops (``executor.interpreter``).
Rank 0 gathers the per-rank traces, latencies and peak memory and writes the outputs.

Exit status: 0 on success, 2 on bad input (one line on stderr, no traceback), 1 when a run
fails (a rank died, hung past ``--timeout`` or raised), with a line naming the rank.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from executor.comm import abort
from sim.cli import parse_int_list, parse_resolution
from sim.config import ParallelConfig, Workload
from sim.errors import UserError
from sim.models import DiTModel
from sim.schedule import Schedule
from sim.strategies import build_schedule

# Hidden fault injection for the fault tests: "RANK:STEP:exit" or "RANK:STEP:hang".
FAULT_ENV = "DITSIM_EXECUTOR_FAULT"
_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error convention: one line on stderr, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``executor.run``."""
    p = _Parser(
        prog="executor.run",
        description="Run PipeFusion (the schedule sim builds) on torch.distributed with a "
                    "diffusers PixArt transformer, and record a measured trace. Launch with "
                    "torchrun --nproc_per_node N -m executor.run ...; the pipeline degree is "
                    "the world size.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="registry model built from its config with seeded random "
                     "weights (PixArt family: pixart-alpha, pixart-sigma, pixart-tiny, "
                     "pixart-small)")
    src.add_argument("--model-dir", help="local diffusers checkpoint: a save_pretrained folder "
                     "of PixArtTransformer2DModel or a pipeline folder with transformer/")
    p.add_argument("--resolution", default="1024",
                   help="image size in pixels: N for NxN, or WIDTHxHEIGHT (default 1024)")
    p.add_argument("--steps", type=int, help="diffusion steps (default: the model's)")
    p.add_argument("--patches", type=int, help="PipeFusion patches M (default: world size)")
    p.add_argument("--warmup", type=int, default=1,
                   help="synchronous full-image warmup steps W (default 1)")
    p.add_argument("--pipefusion", type=int,
                   help="pipeline degree (default: the world size; must equal it)")
    p.add_argument("--stage-blocks", help="blocks per stage, comma separated (default: "
                   "ceil(L/N) per stage)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random weights, the initial noise (as the pipeline's "
                   "generator) and, seed+1, the random prompt embeddings (default 0)")
    p.add_argument("--guidance-scale", type=float, default=4.5,
                   help="classifier-free guidance scale (default 4.5, as PixArtAlphaPipeline)")
    p.add_argument("--prompt-embeds", help="torch.save'd dict with prompt_embeds, "
                   "prompt_attention_mask, negative_prompt_embeds, "
                   "negative_prompt_attention_mask (default: seeded random embeddings)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu (gloo) or cuda (NCCL); default cpu")
    p.add_argument("--dtype", choices=tuple(_TORCH_DTYPES),
                   help="weights and activations (default fp32 on cpu, bf16 on cuda)")
    p.add_argument("--threads", type=int, help="torch threads per process (default: as "
                   "launched; torchrun sets 1)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds any rank waits for a peer before failing (default 300)")
    p.add_argument("--save-latents", help="write the final latents (before the VAE) here "
                   "with torch.save")
    p.add_argument("--trace", help="write the measured trace as CSV (sim.trace columns)")
    p.add_argument("--chrome-trace", help="write the measured trace as Chrome/Perfetto JSON "
                   "(pid = rank, tid = compute / comm)")
    p.add_argument("--warmup-runs", type=int, default=0,
                   help="untimed whole runs before the measured one (default 0): the first "
                   "run of a process pays one-off costs (allocator growth, first-call kernel "
                   "selection, cold caches) that a serving process pays once")
    p.add_argument("--runs", type=int, default=1,
                   help="measured runs after the warm-up runs (default 1): the latency is "
                   "their median, the trace that of the last, the peak memory over all")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (rank 0)")
    return p


@dataclass
class RunPlan:
    """A checked request: model, workload, parallel configuration and schedule."""

    model: DiTModel
    workload: Workload
    config: ParallelConfig
    schedule: Schedule
    device: str
    dtype: str
    model_dir: str | None


def plan_run(args: argparse.Namespace, world_size: int) -> RunPlan:
    """Check the request and build its schedule; raises ``UserError`` (before any process
    group exists) with the simulator's message for a configuration it rejects."""
    from executor.inputs import load_prompts, local_model, registry_model
    from executor.interpreter import unsupported_ops

    if args.model_dir:
        model = local_model(args.model_dir)
    elif args.model:
        model = registry_model(args.model)
    else:
        raise UserError("give --model NAME (a registry PixArt) or --model-dir DIR")
    height, width = parse_resolution(args.resolution)
    dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    stage_blocks = parse_int_list(args.stage_blocks, "--stage-blocks")
    if args.timeout <= 0:
        raise UserError(f"--timeout must be positive, got {args.timeout:g}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    if args.warmup_runs < 0:
        raise UserError(f"--warmup-runs must be 0 or more, got {args.warmup_runs}")
    if args.runs < 1:
        raise UserError(f"--runs must be at least 1, got {args.runs}")
    steps = args.steps if args.steps is not None else model.default_steps
    wl = Workload(model, height, width, steps, dtype=dtype, text_encoder=False, vae=False)
    cfg = ParallelConfig(gpus=world_size,
                         pipefusion=args.pipefusion if args.pipefusion is not None
                         else world_size,
                         patches=args.patches if args.patches is not None else world_size,
                         warmup=args.warmup, stage_blocks=stage_blocks)
    sched = build_schedule(wl, cfg)
    if args.prompt_embeds:
        load_prompts(args.prompt_embeds, model)  # a bad file fails here, before start-up
    why = unsupported_ops(sched)
    if why:
        raise UserError(f"the executor runs PipeFusion schedules only: {why}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is visible; use --device cpu")
    return RunPlan(model, wl, cfg, sched, args.device, dtype, args.model_dir)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise UserError(f"environment variable {name} must be an integer") from None


def _fault() -> tuple[int, int, str] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    rank, step, mode = spec.split(":")
    return int(rank), int(step), mode


def execute(plan: RunPlan, args: argparse.Namespace, rank: int, world: int,
            local_rank: int) -> dict | None:
    """Run this rank's share; rank 0 returns the summary (JSON object), others ``None``."""
    import torch
    import torch.distributed as dist
    from diffusers.utils import logging as dlogging

    from executor.comm import Comm
    from executor.diffusers_models import build_transformer, load_transformer
    from executor.inputs import keep_stage, load_prompts, random_prompts, with_counted_params
    from executor.interpreter import StageExecutor
    from executor.memory import PeakMemory

    dlogging.set_verbosity_error()  # the cast-with-.to() notice is noise for random weights
    from executor.host import steady_heap, trim_heap

    if plan.device == "cpu":
        steady_heap()  # the allocator policy the profiler times under
    if args.threads:
        torch.set_num_threads(args.threads)
    tdtype = getattr(torch, _TORCH_DTYPES[plan.dtype])
    device = torch.device("cuda", local_rank) if plan.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Load the lazily imported classes before the baseline: their code is runtime, not model.
    import diffusers

    _ = (diffusers.PixArtTransformer2DModel, diffusers.DPMSolverMultistepScheduler)
    probe = PeakMemory(device)
    baseline = probe.current_bytes()
    fwd = back = ctl = None
    owns_pg = False
    if world > 1:
        owns_pg = not dist.is_initialized()
        fwd, back, ctl = process_groups(rank, world, device, args.timeout)

    sched = plan.schedule
    first, last = sched.stage_layers[rank]
    if plan.model_dir:
        net = load_transformer(plan.model_dir, dtype=torch.float32, device="cpu")
    else:
        net = build_transformer(plan.model, plan.workload.height, seed=args.seed,
                                dtype=torch.float32, device="cpu")
    model = with_counted_params(plan.model, net)
    keep_stage(net, first, last, rank == 0, rank == world - 1)
    net = net.to(device=device, dtype=tdtype)
    if args.prompt_embeds:
        prompts = load_prompts(args.prompt_embeds, model)
    else:
        prompts = random_prompts(model, args.seed)
    scheduler = _scheduler(plan.model_dir)

    origin_box = [0.0]

    def clock() -> float:
        return time.perf_counter() - origin_box[0]

    def stage_executor():
        comm = None
        if world > 1:
            comm = Comm(rank, sched.patches, plan.model.num_blocks, args.timeout, clock,
                        device, fwd=fwd, back=back)
        return comm, StageExecutor(net, sched, rank, prompts, args.seed, args.guidance_scale,
                                   scheduler, device, tdtype, comm=comm, fault=_fault())

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    # Trimmed before the first run, not between runs: a trim hands the heap back to the OS and
    # the next run would pay page faults on every large tensor, which a warm process does not.
    trim_heap()
    def one_run():
        # A fresh executor and message layer per run: every run starts from the same state
        # (latents, scheduler history, stale buffers, tags).
        comm, stage = stage_executor()
        if sync:
            sync()
        if world > 1:
            dist.barrier(group=ctl)
        origin_box[0] = time.perf_counter()
        result = stage.run(origin_box[0], sync=sync)
        if comm is not None:
            comm.close()
        return result

    for _ in range(args.warmup_runs):
        one_run()
    probe.reset()
    loops = []
    for _ in range(args.runs):
        result = one_run()
        loops.append(result.loop_s)
    peak = probe.peak_bytes()

    mine = {"rank": rank, "loop_s": result.loop_s, "loops": loops, "rows": result.rows,
            "latents": result.latents, "peak": peak, "baseline": baseline,
            "kv": result.kv_buffer_bytes, "window_reset": probe.window_reset}
    if world > 1:
        gathered: list | None = [None] * world if rank == 0 else None
        dist.gather_object(mine, gathered, dst=0, group=ctl)
        dist.barrier(group=ctl)
        if owns_pg:
            dist.destroy_process_group()
            _GROUPS.clear()
    else:
        gathered = [mine]
    if rank != 0:
        return None
    return _summary(plan, model, args, gathered, probe.kind)


_GROUPS: dict[tuple, tuple] = {}


def process_groups(rank: int, world: int, device, timeout_s: float) -> tuple:
    """Initialise the default process group (``env://``, as torchrun sets it up) unless one
    exists, and return the executor's groups ``(fwd, back, ctl)``: separate groups for hidden
    states and latents (see ``executor.comm``) and a gloo group for control messages (barrier,
    gathering results) that never touches the NCCL streams. Cached per world and backend, so
    several runs can share one launch (``executor.batch``)."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        dist.init_process_group(backend, world_size=world, rank=rank,
                                timeout=timeout)
    key = (world, backend)
    if key not in _GROUPS:
        ranks = list(range(world))
        _GROUPS[key] = (dist.new_group(ranks, timeout=timeout),
                        dist.new_group(ranks, timeout=timeout),
                        dist.new_group(ranks, timeout=timeout, backend="gloo"))
    return _GROUPS[key]


def _scheduler(model_dir: str | None):
    """``DPMSolverMultistepScheduler()`` as in the PixArt pipeline, or the one of a pipeline
    folder's ``scheduler/`` config."""
    import diffusers

    if model_dir and (Path(model_dir) / "scheduler" / "scheduler_config.json").is_file():
        cfg = diffusers.DPMSolverMultistepScheduler.load_config(model_dir, subfolder="scheduler")
        return diffusers.DPMSolverMultistepScheduler.from_config(cfg)
    return diffusers.DPMSolverMultistepScheduler()


def _summary(plan: RunPlan, model: DiTModel, args: argparse.Namespace, gathered: list,
             memory_kind: str) -> dict:
    """Rank 0's JSON object: latency, peak memory next to the simulator's prediction, the
    trace's metrics, the configuration, and the outputs written."""
    import torch

    from sim.hardware import get_gpu
    from sim.memory import memory_per_rank
    from sim.metrics import compute_metrics
    from sim.trace import Trace

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
        ranks.append({
            "rank": g["rank"],
            "loop_s": g["loop_s"],
            "peak_memory_gb": g["peak"] / 1e9,
            "baseline_memory_gb": g["baseline"] / 1e9,
            "model_memory_gb": max(0, g["peak"] - g["baseline"]) / 1e9,
            "kv_buffer_gb": g["kv"] / 1e9,
            "predicted_memory_gb": pred.total / 1e9,
            "predicted_memory": pred.as_dict(),
            "peak_window": "loop" if g["window_reset"] else "process",
        })
    latents = next(g["latents"] for g in gathered if g["latents"] is not None)
    if args.save_latents:
        torch.save(latents, args.save_latents)
    if args.trace:
        trace.write_csv(args.trace)
    if args.chrome_trace:
        trace.write_chrome(args.chrome_trace)
    cfg = plan.config.as_dict()
    cfg.update(model=model.name, resolution=[wl.height, wl.width], steps=wl.steps,
               dtype=plan.dtype, device=plan.device, world_size=world,
               patches=sched.patches, warmup=sched.warmup,
               stage_layers=[list(s) for s in sched.stage_layers],
               guidance_scale=args.guidance_scale, seed=args.seed,
               backend=("nccl" if plan.device == "cuda" else "gloo") if world > 1 else "none",
               threads=torch.get_num_threads(), timeout_s=args.timeout,
               model_dir=plan.model_dir, prompt_embeds=args.prompt_embeds)
    # A run lasts until its slowest rank is done; over several runs, the median run.
    per_run = [max(g["loops"][i] for g in gathered) for i in range(args.runs)]
    out = {
        "latency_s": statistics.median(per_run),
        "latencies_s": per_run,
        "peak_memory_gb": max(r["peak_memory_gb"] for r in ranks),
        "predicted_memory_gb": max(r["predicted_memory_gb"] for r in ranks),
        "memory_kind": memory_kind,
        "memory_per_rank": ranks,
        "latents_abs_max": float(latents.abs().max()),
        "trace_rows": len(trace),
        "metrics": metrics.as_dict(),
        "config": cfg,
    }
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    rank = world = local_rank = 0
    try:
        rank = _env_int("RANK", 0)
        world = _env_int("WORLD_SIZE", 1)
        local_rank = _env_int("LOCAL_RANK", 0)
        plan = plan_run(args, world)
    except UserError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        summary = execute(plan, args, rank, world, local_rank)
    except UserError as e:  # inputs only checkable after loading (prompt embeddings)
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(2)
    except BaseException as e:  # noqa: BLE001 - one line naming the rank, then a hard exit
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not text.startswith(f"rank {rank}:"):
            text = f"rank {rank}: {type(e).__name__}: {text}"
        # A hard exit: a dead peer can leave gloo/NCCL threads that block a normal one.
        abort(text)
    if summary is not None:
        if args.json:
            print(json.dumps(summary))
        else:
            c = summary["config"]
            print(f"{c['model']} {c['resolution'][0]}x{c['resolution'][1]} {c['steps']} steps, "
                  f"{c['world_size']} rank(s), M={c['patches']} W={c['warmup']}: loop "
                  f"{summary['latency_s']:.3f} s, peak memory {summary['peak_memory_gb']:.3f} "
                  f"GB ({summary['memory_kind']}; simulator predicts "
                  f"{summary['predicted_memory_gb']:.3f} GB)")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
