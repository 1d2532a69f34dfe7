"""One rank's part of a run: the process groups, the stage's share of the transformer, the timed
runs of its ops (``executor.interpreter``), and gathering every rank's results on rank 0.

Hidden fault injection for the fault tests: ``DITSIM_EXECUTOR_FAULT=RANK:STEP:exit`` (or
``:hang``) makes that rank die (status 3) or stop forever at its first op of that step;
``RANK:startup:MODE`` and ``RANK:barrier:MODE`` do so before the model is built and before the
barrier that starts a run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import diffusers
import torch
import torch.distributed as dist
from diffusers.utils import logging as dlogging

from executor import faults, pace
from executor.collectives import Groups, axis_groups, clear_groups
from executor.comm import Comm, CommError
from executor.diffusers_models import build_transformer, load_transformer
from executor.host import steady_heap, trim_heap
from executor.inputs import keep_stage, load_prompts, random_prompts, with_counted_params
from executor.interpreter import RankResult, StageExecutor, inject
from executor.memory import PeakMemory
from executor.mmdit import MMDIT_CLASSES, MMDiTStageExecutor
from executor.reference import flow_scheduler
from executor.request import TORCH_DTYPES, RunPlan
from executor.summary import summarize
from sim.schedule import Schedule

FAULT_ENV = "DITSIM_EXECUTOR_FAULT"

PointGroups = tuple[dist.ProcessGroup, dist.ProcessGroup, dist.ProcessGroup]
_GROUPS: dict[tuple[int, str], PointGroups] = {}


def _fault() -> tuple[int, int, str] | None:
    """The injected fault of a loop step: (rank, step, mode), or None."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    rank, step, mode = spec.split(":")
    if not step.lstrip("-").isdigit():
        return None  # a phase outside the loop (_phase_fault)
    return int(rank), int(step), mode


class LoadedRank:
    """One rank of a launch with its share of the transformer loaded, ready to run schedules
    of its parallel configuration one after another: the process groups, the stage's layers,
    the prompt embeddings and the scheduler template are set up once (``executor.run`` runs one
    request, ``executor.serve`` serves a stream of them in the same process).

    ``plan`` gives the model, device, dtype and configuration (its schedule is the default of
    ``run``); ``args`` the ``executor.run`` flags (seed, prompts, guidance, timeout, threads)."""

    def __init__(self, plan: RunPlan, args: argparse.Namespace, rank: int, world: int,
                 local_rank: int) -> None:
        dlogging.set_verbosity_error()  # the cast-with-.to() notice is noise for random weights
        if plan.device == "cpu":
            steady_heap()  # the allocator policy the profiler times under
        if args.threads:
            torch.set_num_threads(args.threads)
        self.plan, self.args, self.rank, self.world = plan, args, rank, world
        self.tdtype = TORCH_DTYPES[plan.dtype]
        device = torch.device("cuda", local_rank) if plan.device == "cuda" \
            else torch.device("cpu")
        self.device = device
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # Load the lazily imported classes before the baseline: their code is runtime, not
        # model.
        _ = (getattr(diffusers, plan.model.diffusers_class),
             diffusers.DPMSolverMultistepScheduler, diffusers.FlowMatchEulerDiscreteScheduler)
        self.probe = PeakMemory(device)
        self.baseline = self.probe.current_bytes()
        self.fwd = self.back = self.ctl = None
        self.groups: Groups = {}
        self.owns_pg = False
        sched = plan.schedule
        if world > 1:
            self.owns_pg = not dist.is_initialized()
            with naming_the_culprit(rank, world, "start-up (connecting the ranks)"):
                self.fwd, self.back, self.ctl = process_groups(rank, world, device,
                                                               args.timeout)
            _phase_fault(rank, "startup")
            # The schedule's collective groups, built once (every rank, same order).
            with naming_the_culprit(rank, world, "creating the process groups"):
                self.groups = axis_groups(sched.layout, args.timeout,
                                          "nccl" if device.type == "cuda" else "gloo")
        stage = sched.layout.stage(rank)
        first, last = sched.stage_layers[stage]
        if plan.model_dir:
            net = load_transformer(plan.model_dir, dtype=torch.float32, device="cpu")
        else:
            net = build_transformer(plan.model, plan.workload.height, seed=args.seed,
                                    dtype=torch.float32, device="cpu")
        self.model = with_counted_params(plan.model, net)
        keep_stage(net, first, last, stage == 0, stage == len(sched.stage_layers) - 1)
        self.net = net.to(device=device, dtype=self.tdtype)
        if args.prompt_embeds:
            self.prompts = load_prompts(args.prompt_embeds, self.model)
        else:
            self.prompts = random_prompts(self.model, args.seed)
        self.scheduler = _scheduler(plan.model_dir, plan.model.diffusers_class)
        self.executor_cls = MMDiTStageExecutor if plan.model.diffusers_class in MMDIT_CLASSES \
            else StageExecutor
        self.origin = 0.0
        self.runs = 0  # runs started, warm-up runs included
        # The last run's CPU seconds: this (compute) thread's, and the whole process's.
        self.cpu = [0.0, 0.0]
        self.sync = torch.cuda.synchronize if device.type == "cuda" else None
        # Trimmed before the first run, not between runs: a trim hands the heap back to the
        # OS and the next run would pay page faults on every large tensor, which a warm
        # process does not.
        trim_heap()
        # The process with its stage's model in place: peak - loaded is what the loop adds.
        self.loaded = self.probe.current_bytes()

    def clock(self) -> float:
        """Seconds since the current run's origin."""
        return time.perf_counter() - self.origin

    def run(self, sched: Schedule | None = None) -> RankResult:
        """Perform this rank's ops of ``sched`` (default: the plan's schedule), which must
        have the plan's parallel configuration (same layout and stages). A fresh executor and
        message layer per run: every run starts from the same state (latents, scheduler
        history, stale buffers, tags). Every rank of the launch must call it with the same
        schedule."""
        sched = sched or self.plan.schedule
        comm = None
        if self.world > 1:
            comm = Comm(self.rank, sched.patches, self.plan.model.num_blocks,
                        self.args.timeout, self.clock, self.device, fwd=self.fwd,
                        back=self.back)
        stage = self.executor_cls(self.net, sched, self.rank, self.prompts, self.args.seed,
                                  self.args.guidance_scale, self.scheduler, self.device,
                                  self.tdtype, comm=comm, fault=_fault(), groups=self.groups)
        if self.sync:
            self.sync()
        self.runs += 1
        if self.world > 1:
            _phase_fault(self.rank, "barrier")
            what = f"the barrier before run {self.runs}"
            faults.phase(what)
            with naming_the_culprit(self.rank, self.world, what):
                dist.barrier(group=self.ctl)
            faults.phase(f"run {self.runs}")
        cpu0, proc0 = time.thread_time(), time.process_time()
        self.origin = time.perf_counter()
        result = stage.run(self.origin, sync=self.sync)
        # CPU seconds the loop took: this (compute) thread's, and the whole process's
        # (transport and watcher threads too). Against the loop's wall time they say how long
        # the rank waited: for messages, or runnable while other threads held the cores.
        self.cpu = [time.thread_time() - cpu0, time.process_time() - proc0]
        if comm is not None:
            comm.close()
        return result

    def pace_probe(self) -> dict:
        """This rank's ``executor.pace.probe`` of ``--pace-probe`` calls, every rank starting
        together (a barrier first): in a run the ranks compute at the same time, as the
        profile of a multi-process run was timed with processes computing beside it."""
        if self.world > 1:
            with naming_the_culprit(self.rank, self.world, "the barrier before the pace probe"):
                dist.barrier(group=self.ctl)
        return pace.probe(self.plan.model, self.plan.device, self.plan.dtype,
                          self.plan.workload.height, self.args.pace_probe, self.args.seed)

    def close(self) -> None:
        """Leave the process group if this rank created it."""
        if self.world > 1 and self.owns_pg:
            dist.destroy_process_group()
            _GROUPS.clear()
            clear_groups()


def _phase_fault(rank: int, phase: str) -> None:
    """Inject the fault of ``DITSIM_EXECUTOR_FAULT=RANK:PHASE:MODE`` if it names this rank and
    ``phase``: ``startup`` (the process group is up, the groups and the model are not) or
    ``barrier`` (right before the barrier that starts a run)."""
    spec = os.environ.get(FAULT_ENV)
    if spec:
        r, where, mode = spec.split(":")
        if int(r) == rank and where == phase:
            inject(mode, rank)


def execute(plan: RunPlan, args: argparse.Namespace, rank: int, world: int,
            local_rank: int) -> dict | None:
    """Run this rank's share of ``plan`` (``args``: the ``executor.run`` flags; ``rank`` of
    ``world`` processes, ``local_rank`` selecting the CUDA device); rank 0 returns the summary
    (``executor.summary``), the others ``None``."""
    loaded = LoadedRank(plan, args, rank, world, local_rank)
    paces = [loaded.pace_probe()] if args.pace_probe > 0 else []
    for _ in range(args.warmup_runs):
        loaded.run()
    probe = loaded.probe
    probe.reset()
    loops = []
    for _ in range(args.runs):
        result = loaded.run()
        loops.append(result.loop_s)
    peak = probe.peak_bytes()
    if paces:
        paces.append(loaded.pace_probe())

    mine = {"rank": rank, "loop_s": result.loop_s, "loops": loops, "rows": result.rows,
            "latents": result.latents, "peak": peak, "baseline": loaded.baseline,
            "loaded": loaded.loaded,
            "kv": result.kv_buffer_bytes, "window_reset": probe.window_reset,
            "thread_cpu_s": loaded.cpu[0], "process_cpu_s": loaded.cpu[1],
            "threads": torch.get_num_threads(), "pace": paces}
    if world > 1:
        gathered: list | None = [None] * world if rank == 0 else None
        faults.phase("gathering the results")
        with naming_the_culprit(rank, world, "gathering the results on rank 0"):
            dist.gather_object(mine, gathered, dst=0, group=loaded.ctl)
            dist.barrier(group=loaded.ctl)
        loaded.close()
    else:
        gathered = [mine]
    if rank != 0:
        return None
    return summarize(plan, loaded.model, args, gathered, probe.kind)


@contextlib.contextmanager
def naming_the_culprit(rank: int, world: int, what: str) -> Iterator[None]:
    """Turn a failure of ``what`` (a step every rank takes together: creating groups, a
    barrier, gathering) into a ``CommError`` naming the rank to blame (``executor.faults``),
    not gloo's "Connection closed by peer [address]"."""
    try:
        yield
    except CommError:
        raise
    except Exception as e:  # noqa: BLE001 - gloo and NCCL raise RuntimeError and subclasses
        text = str(e).strip()
        reason = (text.splitlines()[0] if text else type(e).__name__)
        reason = reason.split(". This is typically")[0]  # gloo appends generic advice
        timed_out = "timed out" in reason.lower()
        raise CommError(f"rank {rank}: {what} failed: "
                        f"{faults.blame(list(range(world)), timed_out)} ({reason})") from e


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
        faults.start(rank, world)  # the store exists from here: notes for the error lines
        faults.phase("start-up")
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
