"""Collecting a compute profile: the runner of the settings, every task of the grid timed in
interleaved passes (with co-runners when asked), and the samples with their metadata."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import time

import diffusers
import torch

from executor.host import steady_heap
from executor.mmdit import MMDIT_CLASSES
from executor.op_runner import OpRunner, PixArtRunner
from executor.pace import op_runner
from profiles.corunners import start_co_runners
from profiles.device import attention_backend, device_name, device_slug
from profiles.grid import Task, plan
from profiles.progress import progress_bar
from profiles.settings import Settings, check_supported
from profiles.timing import measure_tasks, summarise
from sim.cost.probe import REFERENCE_OP, reference_op_seconds
from sim.cost.profile_format import ComputeProfile
from sim.errors import UserError


def collect(s: Settings, progress: bool = True) -> ComputeProfile:
    """Run every task of ``plan(s)`` and return the profile (times in seconds)."""
    return collect_with(s, (), progress)[0]


def collect_with(s: Settings, extra: list[Task] | tuple[Task, ...], progress: bool = True
                 ) -> tuple[ComputeProfile, list[list[float]]]:
    """Collect the profile of ``s`` and, in the same interleaved passes, time the ``extra``
    tasks (``plan``'s tuples); returns the profile and each extra task's call times (s)."""
    check_supported(s.model)
    if s.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but torch sees no CUDA device; use --device cpu")
    threads_before = torch.get_num_threads()
    if s.device == "cpu":
        steady_heap()  # the executor's allocator policy (process-wide, like the threads)
        torch.set_num_threads(s.threads)
    try:
        return _collect(s, progress, extra)
    finally:
        torch.set_num_threads(threads_before)  # library callers keep their own setting


def make_runner(s: Settings) -> OpRunner:
    """The op timer: the executor's own ops (default, what ``executor.run`` performs) or the
    diffusers modules alone (PixArt; MM-DiT models are timed through the executor only)."""
    if s.runner == "executor":
        return op_runner(s.model, s.device, s.dtype, s.resolutions, s.seed)
    if s.model.diffusers_class in MMDIT_CLASSES:
        raise UserError(f"--runner block times PixArt modules only; profile "
                        f"{s.model.name} with --runner executor")
    return PixArtRunner(s.model, s.device, s.dtype, s.resolutions, s.seed)


def _collect(s: Settings, progress: bool, extra: list[Task] | tuple[Task, ...] = ()
             ) -> tuple[ComputeProfile, list[list[float]]]:
    name = device_name(s.device)
    runner = make_runner(s)
    tasks = plan(s)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    every = tasks + list(extra)
    bar = progress_bar(len(every) * max(1, s.passes), f"{s.model.name} {s.device} {s.dtype}",
                       progress, unit="shape")
    started = time.perf_counter()
    # Before the co-runners start: the reference time is this machine's alone, as the probe
    # that compares with it at prediction time (sim.cost.probe) runs alone.
    ref_s = reference_op_seconds(None, s.clock) if s.device == "cpu" else None
    stop = start_co_runners(s, runner) if s.co_run else None
    try:
        all_times = measure_tasks(runner, s, every, bar)
    finally:
        if stop is not None:
            stop()
    bar.close()
    times, extra_times = all_times[:len(tasks)], all_times[len(tasks):]
    samples = [summarise(op, variant, 1 if op == "scheduler_step" else runner.batch, q, kv,
                         heads, t)
               for (op, variant, _res, q, kv, heads), t in zip(tasks, times)]
    meta = {
        "model": s.model.name, "diffusers_class": s.model.diffusers_class,
        "device": s.device, "device_name": name,
        "device_key": device_slug(s.device, name, s.threads),
        "dtype": s.dtype, "batch": runner.batch,
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "attention_backend": attention_backend(s.device),
        "attention_processor": "executor.mmdit.JointAttnProcessor"
        if s.model.diffusers_class in MMDIT_CLASSES
        else "executor.kv_attention.StaleKVAttnProcessor",
        "runner": s.runner, "co_run": s.co_run, "ops": list(s.ops), "curve": s.curve,
        "threads": torch.get_num_threads() if s.device == "cpu" else None,
        "cpu_count": os.cpu_count(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "resolutions": list(s.resolutions), "patches": list(s.patches),
        "head_shards": list(s.head_shards), "tensor_shards": list(s.tensor_shards),
        "repeats": s.repeats, "warmup": s.warmup,
        "min_total_s": s.min_total_s, "passes": s.passes, "quick": s.quick,
        "seed": s.seed,
        "clock": s.clock,
        "timing": "CUDA events around each call after synchronize" if s.device == "cuda"
        else ("time.thread_time (the calling thread's CPU time) around each call"
              if s.clock == "thread" else "time.perf_counter around each call"),
        "loadavg_1min": [load_start, os.getloadavg()[0] if hasattr(os, "getloadavg")
                         else None],
        "units": "seconds",
        "collect_s": round(time.perf_counter() - started, 2),
        "command": "python -m profiles.collect " + " ".join(sys.argv[1:]),
    }
    if ref_s is not None:
        meta.update(reference_op=REFERENCE_OP, reference_op_s=ref_s)
    return ComputeProfile(meta, samples), extra_times
