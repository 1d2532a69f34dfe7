"""The pace probe: how fast this process computes right now, on the op a profile also timed.

A CPU validation compares a run with a prediction from a profile measured minutes earlier in
other processes. On a small VM a process's speed depends on where its memory landed and on
what the hypervisor's other tenants do that minute (``benchmarks/machine_drift.py`` measures
both), so a run can be 20 % slower than its profile for reasons that are no part of the
schedule. ``executor.run --pace-probe CALLS`` times, in the run's own processes, the very op
the compute profile timed for the run's model and resolution (one whole-image block through
the executor's own op runner, ``executor.op_runner``), every rank at once as the ranks compute
at once in a run, right before the warm-up runs and again right after the measured runs. The
prediction can then say how fast this launch's processes were, against the profile's row of
the same op (``validation.predict``), without looking at the run's own times.
"""

from __future__ import annotations

import statistics
import time

import torch

from executor.mmdit import MMDIT_CLASSES
from executor.mmdit_runner import MMDiTRunner
from executor.op_runner import ExecutorRunner, OpRunner
from sim.cost.probe import reference_block
from sim.models import DiTModel

# Runners built in this process, by (model, device, dtype, resolution): a launch of
# executor.batch probes before each of its runs and builds each runner once.
_RUNNERS: dict[tuple[str, str, str, int], OpRunner] = {}


def op_runner(model: DiTModel, device: str, dtype: str, resolutions: tuple[int, ...],
              seed: int = 0) -> OpRunner:
    """The executor's op timer for ``model`` (what ``profiles.collect --runner executor``
    times): MM-DiT models through their own stage executor, the others through PixArt's."""
    cls = MMDiTRunner if model.diffusers_class in MMDIT_CLASSES else ExecutorRunner
    return cls(model, device, dtype, resolutions, seed)


def probe(model: DiTModel, device: str, dtype: str, resolution: int, calls: int,
          seed: int = 0) -> dict:
    """Time ``calls`` calls (after two untimed ones) of the reference block (``reference_block``)
    in this process. Returns the profile key (``op``, ``variant``, ``batch``, ``q_tokens``,
    ``kv_tokens``, ``heads``) and the median seconds per call on the wall clock (``wall_s``)
    and on this thread's CPU clock (``thread_s``), the two clocks profiles are timed on."""
    key = (model.name, device, dtype, resolution)
    runner = _RUNNERS.get(key)
    if runner is None:
        runner = _RUNNERS[key] = op_runner(model, device, dtype, (resolution,), seed)
    kind, q, kv, heads = reference_block(model, resolution)
    fn = runner.block(resolution, q, kv, kind)
    sync = torch.cuda.synchronize if device == "cuda" else None
    walls, threads = [], []
    with torch.inference_mode():
        for i in range(calls + 2):
            w0, t0 = time.perf_counter(), time.thread_time()
            fn()
            if sync:
                sync()
            if i >= 2:  # the first calls fault pages in and pick kernels
                walls.append(time.perf_counter() - w0)
                threads.append(time.thread_time() - t0)
    return {"op": "block", "variant": kind, "batch": runner.batch, "q_tokens": q,
            "kv_tokens": kv, "heads": heads, "calls": calls,
            "wall_s": statistics.median(walls), "thread_s": statistics.median(threads)}
