"""The checked request of one executor run: the model, workload, parallel configuration and the
schedule ``sim.strategies.build_schedule`` makes of them, built on every rank before any process
group starts, so a configuration the simulator rejects fails here with the same message."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from executor.inputs import load_prompts, local_model, registry_model
from executor.interpreter import unsupported_ops
from executor.mmdit import MMDIT_CLASSES
from sim.cli import at_least, finite, parse_int_list, parse_resolution, positive
from sim.config import ParallelConfig, Workload, check_patches_need_pipefusion
from sim.errors import UserError
from sim.models import DiTModel
from sim.outputs import check_outputs
from sim.schedule import Schedule
from sim.strategies import build_schedule

# The --dtype names and the torch dtypes they select.
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# The longest --timeout, seconds (a week): a wait that long is a hung run, not a slow one.
MAX_TIMEOUT_S = 7 * 86400.0


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
    """Check the request (``executor.run``'s flags) for a launch of ``world_size`` processes and
    build its schedule; raises ``UserError`` with the simulator's message for a configuration
    it rejects."""
    if args.model_dir:
        model = local_model(args.model_dir)
    elif args.model:
        model = registry_model(args.model)
    else:
        raise UserError("give --model NAME (a registry PixArt) or --model-dir DIR")
    if args.guidance_scale is None:  # the model's pipeline default, for every later reader
        args.guidance_scale = model.guidance_scale
    # A NaN scale would turn every latent into NaN and still exit 0.
    finite(args.guidance_scale, "--guidance-scale")
    height, width = parse_resolution(args.resolution)
    dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    stage_blocks = parse_int_list(args.stage_blocks, "--stage-blocks")
    # Checked before torchrun's ranks start: an infinite or huge timeout overflows the waits
    # (threading, timedelta) on every rank instead of failing once here.
    finite(args.timeout, "--timeout", 0, MAX_TIMEOUT_S, " s")
    positive(args.timeout, "--timeout")
    if args.threads is not None:
        at_least(args.threads, 1, "--threads")
    at_least(args.warmup_runs, 0, "--warmup-runs")
    at_least(args.runs, 1, "--runs")
    at_least(args.pace_probe, 0, "--pace-probe")
    # Rank 0 writes these after the run: an unwritable path is refused now, on every rank (one
    # host), not after minutes of work.
    check_outputs([("--save-latents", args.save_latents), ("--trace", args.trace),
                   ("--chrome-trace", args.chrome_trace)])
    steps = args.steps if args.steps is not None else model.default_steps
    wl = Workload(model, height, width, steps, dtype=dtype, text_encoder=False, vae=False)
    degrees = dict(cfg=args.cfg, ulysses=args.ulysses, ring=args.ring, tensor=args.tensor,
                   distrifusion=args.distrifusion)
    # sim.predict's rule: PipeFusion takes the GPUs the other degrees leave.
    others = args.ulysses * args.ring * args.tensor * args.cfg * args.distrifusion
    pipefusion = args.pipefusion
    if pipefusion is None:
        pipefusion = world_size // others if others > 0 and world_size % others == 0 else 1
    check_patches_need_pipefusion(args.patches, world_size, "processes")
    patches = args.patches if args.patches is not None else pipefusion
    product = pipefusion * others
    if product != world_size and min(pipefusion, others) >= 1:
        # The executor has no --gpus: the processes are the launch's (validate would say
        # "but --gpus is N").
        s = "es" if world_size != 1 else ""
        raise UserError(f"parallel degrees multiply to {product} but the launch has "
                        f"{world_size} process{s}; launch {product} (torchrun "
                        f"--nproc_per_node {product}) or change the degrees")
    cfg = ParallelConfig(gpus=world_size, pipefusion=pipefusion, patches=patches,
                         warmup=args.warmup, stage_blocks=stage_blocks, **degrees)
    sched = build_schedule(wl, cfg)
    if model.diffusers_class in MMDIT_CLASSES and (args.tensor > 1 or args.distrifusion > 1):
        raise UserError(f"the executor runs {model.name} serial or with PipeFusion, Ulysses, "
                        f"ring and CFG parallelism; tensor parallelism and DistriFusion are "
                        f"implemented for PixArt only (use --tensor 1 --distrifusion 1)")
    if args.cfg > 1 and not args.guidance_scale > 1.0:
        raise UserError(f"--cfg 2 splits the guidance batch, which the pipeline only runs at "
                        f"a guidance scale above 1 (got --guidance-scale "
                        f"{args.guidance_scale:g}); use --cfg 1 or a larger scale")
    if args.prompt_embeds:
        load_prompts(args.prompt_embeds, model)  # a bad file fails here, before start-up
    why = unsupported_ops(sched)
    if why:
        raise UserError(f"the executor cannot run this schedule: {why}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu")
    return RunPlan(model, wl, cfg, sched, args.device, dtype, args.model_dir)
