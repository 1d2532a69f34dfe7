"""Timing the runners' callables: warm-up, individually timed calls on the right clock, and
interleaved passes over all shapes; the median and spread of each shape's calls.

CPU: with one thread the calling thread's CPU time can be the clock (immune to other
processes sharing the cores); else ``time.perf_counter``. CUDA: events around each call after
a synchronisation.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable

import torch

from executor.interpreter import loop_mode
from executor.op_runner import OpRunner
from profiles.grid import Task
from profiles.progress import Bar
from profiles.settings import Settings
from sim.cost.profile_format import Sample
from sim.stats import quantile


class Timer:
    """Times a callable on ``device``: warm-up, then individually timed calls (seconds).

    ``clock="thread"`` (CPU only) reads the calling thread's CPU time instead of the wall
    clock. With one torch thread every kernel runs in the calling thread, so its CPU time is
    the call's time on an otherwise idle core, and other processes sharing the cores (other
    jobs on a small VM) do not inflate it; the wall clock counts the time the thread waited to
    be scheduled. With more threads only the wall clock is meaningful."""

    def __init__(self, device: str, warmup: int, repeats: int, min_total_s: float,
                 clock: str = "wall") -> None:
        if clock not in ("wall", "thread") or (clock == "thread" and device != "cpu"):
            raise ValueError(f"clock {clock!r} does not apply to device {device!r}")
        self.device = device
        self.clock = time.thread_time if clock == "thread" else time.perf_counter
        self.warmup = warmup
        self.repeats = repeats
        self.min_total_s = min_total_s

    def _once(self, fn: Callable[[], object]) -> float:
        if self.device == "cuda":
            prep = getattr(fn, "prep", None)
            if prep is not None:
                prep()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3  # events report milliseconds
        prep = getattr(fn, "prep", None)
        if prep is not None:  # untimed work that precedes the op in a real run
            prep()
        t0 = self.clock()
        fn()
        return self.clock() - t0

    def measure(self, fn: Callable[[], object]) -> list[float]:
        """Seconds of each timed call of ``fn``, made under the executor loop's autograd mode
        (``executor.interpreter.loop_mode``)."""
        with loop_mode():
            for _ in range(self.warmup):
                self._once(fn)
            began = time.perf_counter()
            times = [self._once(fn) for _ in range(self.repeats)]
            # Fast ops get more calls (up to 10x) so their median rests on enough samples;
            # the budget counts the untimed preparation too (a small op prepared by a large
            # block would otherwise take 10x the block's time).
            cap = self.repeats * 10
            while time.perf_counter() - began < self.min_total_s and len(times) < cap:
                times.append(self._once(fn))
        return times


def summarise(op: str, variant: str, batch: int, q: int, kv: int, heads: int,
              times: list[float]) -> Sample:
    """A ``Sample`` (median and spread, seconds) of the timed calls ``times``; the quartiles
    interpolate linearly (``sim.stats.quantile``)."""
    xs = sorted(times)
    return Sample(op, variant, batch, q, kv, heads, len(xs), statistics.median(xs), xs[0],
                  quantile(xs, 0.25), quantile(xs, 0.75), xs[-1])


def measure_tasks(runner: OpRunner, s: Settings, tasks: list[Task], bar: Bar | None = None
                  ) -> list[list[float]]:
    """Seconds of every timed call of each task, measured in ``s.passes`` interleaved passes
    over the task list, each in its own seeded order (each pass: warm-up, then its share of
    the repeats). Interleaving spreads slow drifts of the machine (other jobs, clocks) over
    all shapes alike instead of biasing whichever shapes ran during a disturbance."""
    passes = max(1, s.passes)
    per_pass = max(1, math.ceil(s.repeats / passes))
    times: list[list[float]] = [[] for _ in tasks]
    for p in range(passes):
        # Later passes need one warm-up call only: allocations and caches are warm by then.
        timer = Timer(s.device, s.warmup if p == 0 else min(1, s.warmup), per_pass,
                      s.min_total_s / passes, s.clock)
        order = list(range(len(tasks)))
        if passes > 1:  # a fresh order each pass: no shape always follows the same one
            random.Random(s.seed * 1000 + p).shuffle(order)
        for i in order:
            op, variant, res, q, kv, heads = tasks[i]
            if bar is not None:
                bar.set_postfix_str(f"{op} q={q} kv={kv}")
            if op == "block" and heads != s.model.heads:  # a tensor-parallel shard
                fn = runner.block(res, q, kv, variant, shard=s.model.heads // heads)
            elif op == "block":
                fn = runner.block(res, q, kv, variant)
            elif op == "attention":
                fn = runner.attention(q, kv, heads)
            else:
                fn = getattr(runner, op)(res, q)
            times[i].extend(timer.measure(fn))
            del fn  # free this shape's buffers before the next one is built
            if bar is not None:
                bar.update(1)
    return times
