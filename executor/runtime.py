"""One rank's part of a run: the process groups, the stage's share of the transformer, the timed
runs of its ops (``executor.interpreter``), and gathering every rank's results on rank 0.

Hidden fault injection for the fault tests: ``DITSIM_EXECUTOR_FAULT=RANK:STEP:exit`` (or
``:hang``) makes that rank die (status 3) or stop forever at its first op of that step.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta
from pathlib import Path

import diffusers
import torch
import torch.distributed as dist
from diffusers.utils import logging as dlogging

from executor.collectives import Groups, axis_groups, clear_groups
from executor.comm import Comm
from executor.diffusers_models import build_transformer, load_transformer
from executor.host import steady_heap, trim_heap
from executor.inputs import keep_stage, load_prompts, random_prompts, with_counted_params
from executor.interpreter import RankResult, StageExecutor
from executor.memory import PeakMemory
from executor.mmdit import MMDIT_CLASSES, MMDiTStageExecutor
from executor.reference import flow_scheduler
from executor.request import TORCH_DTYPES, RunPlan
from executor.summary import summarize

FAULT_ENV = "DITSIM_EXECUTOR_FAULT"

PointGroups = tuple[dist.ProcessGroup, dist.ProcessGroup, dist.ProcessGroup]
_GROUPS: dict[tuple[int, str], PointGroups] = {}


def _fault() -> tuple[int, int, str] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    rank, step, mode = spec.split(":")
    return int(rank), int(step), mode


def execute(plan: RunPlan, args: argparse.Namespace, rank: int, world: int,
            local_rank: int) -> dict | None:
    """Run this rank's share of ``plan`` (``args``: the ``executor.run`` flags; ``rank`` of
    ``world`` processes, ``local_rank`` selecting the CUDA device); rank 0 returns the summary
    (``executor.summary``), the others ``None``."""
    dlogging.set_verbosity_error()  # the cast-with-.to() notice is noise for random weights
    if plan.device == "cpu":
        steady_heap()  # the allocator policy the profiler times under
    if args.threads:
        torch.set_num_threads(args.threads)
    tdtype = TORCH_DTYPES[plan.dtype]
    device = torch.device("cuda", local_rank) if plan.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Load the lazily imported classes before the baseline: their code is runtime, not model.
    _ = (getattr(diffusers, plan.model.diffusers_class), diffusers.DPMSolverMultistepScheduler,
         diffusers.FlowMatchEulerDiscreteScheduler)
    probe = PeakMemory(device)
    baseline = probe.current_bytes()
    fwd = back = ctl = None
    groups: Groups = {}
    owns_pg = False
    sched = plan.schedule
    if world > 1:
        owns_pg = not dist.is_initialized()
        fwd, back, ctl = process_groups(rank, world, device, args.timeout)
        # The schedule's collective groups, built once (every rank, same order).
        groups = axis_groups(sched.layout, args.timeout, "nccl" if device.type == "cuda"
                             else "gloo")
    stage = sched.layout.stage(rank)
    first, last = sched.stage_layers[stage]
    if plan.model_dir:
        net = load_transformer(plan.model_dir, dtype=torch.float32, device="cpu")
    else:
        net = build_transformer(plan.model, plan.workload.height, seed=args.seed,
                                dtype=torch.float32, device="cpu")
    model = with_counted_params(plan.model, net)
    keep_stage(net, first, last, stage == 0, stage == len(sched.stage_layers) - 1)
    net = net.to(device=device, dtype=tdtype)
    if args.prompt_embeds:
        prompts = load_prompts(args.prompt_embeds, model)
    else:
        prompts = random_prompts(model, args.seed)
    scheduler = _scheduler(plan.model_dir, plan.model.diffusers_class)
    executor_cls = MMDiTStageExecutor if plan.model.diffusers_class in MMDIT_CLASSES \
        else StageExecutor

    origin_box = [0.0]

    def clock() -> float:
        return time.perf_counter() - origin_box[0]

    def stage_executor() -> tuple[Comm | None, StageExecutor]:
        comm = None
        if world > 1:
            comm = Comm(rank, sched.patches, plan.model.num_blocks, args.timeout, clock,
                        device, fwd=fwd, back=back)
        return comm, executor_cls(net, sched, rank, prompts, args.seed, args.guidance_scale,
                                  scheduler, device, tdtype, comm=comm, fault=_fault(),
                                   groups=groups)

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    # Trimmed before the first run, not between runs: a trim hands the heap back to the OS and
    # the next run would pay page faults on every large tensor, which a warm process does not.
    trim_heap()
    # The process with its stage's model in place: peak - loaded is what the loop adds.
    loaded = probe.current_bytes()

    def one_run() -> RankResult:
        # A fresh executor and message layer per run: every run starts from the same state
        # (latents, scheduler history, stale buffers, tags).
        comm, stage = stage_executor()
        if sync:
            sync()
        if world > 1:
            dist.barrier(group=ctl)
        cpu0, proc0 = time.thread_time(), time.process_time()
        origin_box[0] = time.perf_counter()
        result = stage.run(origin_box[0], sync=sync)
        # CPU seconds the loop took: this (compute) thread's, and the whole process's
        # (transport and watcher threads too). Against the loop's wall time they say how long
        # the rank waited: for messages, or runnable while other threads held the cores.
        cpu[:] = [time.thread_time() - cpu0, time.process_time() - proc0]
        if comm is not None:
            comm.close()
        return result

    cpu = [0.0, 0.0]

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
            "loaded": loaded,
            "kv": result.kv_buffer_bytes, "window_reset": probe.window_reset,
            "thread_cpu_s": cpu[0], "process_cpu_s": cpu[1], "threads": torch.get_num_threads()}
    if world > 1:
        gathered: list | None = [None] * world if rank == 0 else None
        dist.gather_object(mine, gathered, dst=0, group=ctl)
        dist.barrier(group=ctl)
        if owns_pg:
            dist.destroy_process_group()
            _GROUPS.clear()
            clear_groups()
    else:
        gathered = [mine]
    if rank != 0:
        return None
    return summarize(plan, model, args, gathered, probe.kind)


def process_groups(rank: int, world: int, device: torch.device,
                   timeout_s: float) -> PointGroups:
    """Initialise the default process group (``env://``, as torchrun sets it up) unless one
    exists, and return the executor's groups ``(fwd, back, ctl)``: separate groups for hidden
    states and latents (see ``executor.comm``) and a gloo group for control messages (barrier,
    gathering results) that never touches the NCCL streams. ``timeout_s``: seconds a collective
    waits. Cached per world and backend, so several runs can share one launch
    (``executor.batch``)."""
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


def _scheduler(model_dir: str | None, model_class: str):
    """The pipeline's scheduler: ``DPMSolverMultistepScheduler()`` for PixArt, the
    checkpoints' ``FlowMatchEulerDiscreteScheduler`` for SD3 and Flux
    (``executor.reference.flow_scheduler``), or the one of a pipeline folder's
    ``scheduler/`` config."""
    mmdit = model_class in MMDIT_CLASSES
    cls = diffusers.FlowMatchEulerDiscreteScheduler if mmdit \
        else diffusers.DPMSolverMultistepScheduler
    if model_dir and (Path(model_dir) / "scheduler" / "scheduler_config.json").is_file():
        cfg = cls.load_config(model_dir, subfolder="scheduler")
        return cls.from_config(cfg)
    return flow_scheduler(model_class) if mmdit else cls()
