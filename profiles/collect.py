"""Measure the compute ops of the schedules on this device: ``python -m profiles.collect``.

Builds the model's real diffusers transformer from its config with seeded random weights (one
block is enough: every block of a PixArt model has the same shapes), then times, over a
log-spaced grid, each op the schedules use:

- ``block``: one transformer block on ``q`` query tokens against ``kv`` key/value tokens, for
  every profiled resolution (``kv`` = its image tokens) and ``q`` = the first of ``M`` row bands
  (M = 1, 2, 4, ... 32: ``q = kv/M``). A patch (q < kv) writes its fresh K,V into a
  full-sequence buffer and attends over the whole buffer, as PipeFusion's displaced-patch
  stages do (same memory layout as ``executor/kv_attention.py``); a full image (q = kv) is the
  plain diffusers block. Full-image blocks are also timed at every patch size ``n``, so that
  full images between the profiled resolutions interpolate along a dense curve.
- ``attention``: the self-attention core alone (``scaled_dot_product_attention``) at the same
  shapes, and with ``heads/N`` heads over the full sequence (Ulysses head shards, N dividing
  the head count).
- ``embed`` (patch embedding of a band of rows, positional rows, timestep and caption
  embeddings), ``final`` (final norm, modulation, projection, unpatchify, guidance combine) and
  ``scheduler_step`` (one multistep DPM-Solver++ update of a latent band, batch 1).

Each shape: warm-up calls, then timed calls spread over interleaved passes in a shuffled order
(slow drifts of a shared machine then touch every shape alike); the median is kept with its
spread. CPU: a fixed thread count (default 1, torchrun's default, so the profile describes the
machine the executor's processes see) and, with one thread, the calling thread's CPU time as
the clock (immune to other processes sharing the cores; ``--clock wall`` for perf_counter).
CUDA: events around each call after a synchronisation.

CPU default grid: real PixArt at 1024 px takes seconds per block call on one core, so on CPU
the default resolutions are 256, 384 and 512 px (256, 576 and 1,024 tokens) at the model's real
width; the small test models (``pixart-tiny``, ``pixart-small``) profile fully in seconds. On
CUDA the default is 1024, 2048 and 4096 px.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from profiles import DATA_DIR
from sim.cost.profile_format import ComputeProfile, Sample, slug
from sim.errors import UserError
from sim.models import DiTModel, get_model

DTYPES = ("fp32", "bf16", "fp16")
OPS = ("block", "attention", "embed", "final", "scheduler_step", "condition")
CPU_RESOLUTIONS = (256, 384, 512)
CUDA_RESOLUTIONS = (1024, 2048, 4096)
PATCHES = (1, 2, 4, 8, 16, 32)
QUICK_PATCHES = (1, 2, 4, 8)
FULL_RATIO = 1.3  # largest step between the sizes of the full-image block curve (full_sizes)
SUPPORTED_CLASSES = ("PixArtTransformer2DModel",)
GUIDANCE = 4.5  # PixArt pipeline default guidance scale (only its arithmetic is timed)


@dataclass(frozen=True)
class Settings:
    """What one collection measures and how; times in seconds."""

    model: DiTModel
    device: str
    dtype: str
    resolutions: tuple[int, ...]
    patches: tuple[int, ...]
    threads: int
    repeats: int
    warmup: int
    min_total_s: float  # keep timing a fast op until this much time is spent (capped)
    head_shards: tuple[int, ...]
    quick: bool
    seed: int = 0
    clock: str = "wall"  # "wall" (perf_counter) or "thread" (the calling thread's CPU time)
    passes: int = 1  # interleaved passes over all shapes, sharing the repeats
    runner: str = "executor"  # "executor": the executor's own ops; "block": modules alone
    co_run: int = 0  # processes computing beside the measured one (the other ranks of a run)
    ops: tuple[str, ...] = OPS  # which op kinds to time
    curve: bool = True  # full-image blocks between the grid's sizes (for other resolutions)


# ---- shape grid (no torch) ------------------------------------------------------------------

def block_grid(model: DiTModel, resolutions: tuple[int, ...], patches: tuple[int, ...]
               ) -> list[tuple[int, int, int]]:
    """(resolution, q, kv) shapes of the block grid: for every resolution ``kv`` is the whole
    image and ``q`` the first of ``M`` row bands (``q = kv/M`` when ``M`` divides the rows)."""
    out = []
    for res in resolutions:
        rows, cols = model.token_grid(res, res)
        kv = rows * cols
        seen = set()
        for m in patches:
            if m > rows:
                continue
            q = math.ceil(rows / m) * cols
            if q not in seen:
                seen.add(q)
                out.append((res, q, kv))
    return out


def full_sizes(grid: list[tuple[int, int, int]], max_ratio: float) -> list[int]:
    """Token counts n of the full-image block curve: every kv and patch size of the grid,
    with geometric steps filled in wherever two neighbours are more than ``max_ratio`` apart.
    Cache cliffs make per-token cost jump between sizes (on the 2-core EPYC VM by 12 %
    between 676 and 784 tokens for pixart-small), so a sparse curve can be several percent
    off between its points."""
    ns = sorted({q for _, q, _ in grid} | {kv for _, _, kv in grid})
    out = list(ns)
    for a, b in zip(ns, ns[1:]):
        steps = math.ceil(math.log(b / a) / math.log(max_ratio) - 1e-9)
        for k in range(1, steps):
            out.append(round(a * (b / a) ** (k / steps)))
    return sorted(set(out))


def default_settings(model: DiTModel, device: str, dtype: str | None,
                     resolutions: tuple[int, ...] | None, quick: bool, threads: int | None,
                     repeats: int | None, warmup: int | None, clock: str = "auto"
                     ) -> Settings:
    """Fill in the defaults of one collection (see the module docstring for the choice).
    ``clock="auto"``: the thread CPU-time clock on a one-thread CPU run, else the wall clock
    (CUDA events on a GPU)."""
    dtype = dtype or ("fp32" if device == "cpu" else "bf16")
    nthreads = threads if threads is not None else 1
    if clock == "auto":
        clock = "thread" if device == "cpu" and nthreads == 1 else "wall"
    if clock == "thread" and (device != "cpu" or nthreads != 1):
        raise UserError("--clock cpu needs --device cpu and --threads 1 (other threads' work "
                        "would not be counted); use --clock wall")
    res = resolutions or (CPU_RESOLUTIONS if device == "cpu" else CUDA_RESOLUTIONS)
    if quick and not resolutions:  # the quick grid skips the in-between resolution
        res = (res[0], res[-1])
    # Ulysses degrees that divide the head count (it must): attention on heads/N heads.
    shards = () if quick else tuple(n for n in (2, 3, 4, 6, 8) if model.heads % n == 0)
    return Settings(
        model=model, device=device, dtype=dtype, resolutions=tuple(res),
        patches=QUICK_PATCHES if quick else PATCHES,
        threads=nthreads, clock=clock,
        repeats=repeats if repeats is not None else (3 if quick else 7),
        warmup=warmup if warmup is not None else (1 if quick else 2),
        min_total_s=0.0 if quick else 0.3, head_shards=shards, quick=quick,
        passes=1 if quick else 3,
    )


# ---- timing -----------------------------------------------------------------------------------

class Timer:
    """Times a callable on ``device``: warm-up, then individually timed calls (seconds).

    ``clock="thread"`` (CPU only) reads the calling thread's CPU time instead of the wall
    clock. With one torch thread every kernel runs in the calling thread, so its CPU time is
    the call's time on an otherwise idle core, and other processes sharing the cores (other
    jobs on a small VM) do not inflate it; the wall clock counts the time the thread waited to
    be scheduled. With more threads only the wall clock is meaningful."""

    def __init__(self, device: str, warmup: int, repeats: int, min_total_s: float,
                 clock: str = "wall") -> None:
        import torch

        if clock not in ("wall", "thread") or (clock == "thread" and device != "cpu"):
            raise ValueError(f"clock {clock!r} does not apply to device {device!r}")
        self.torch = torch
        self.device = device
        self.clock = time.thread_time if clock == "thread" else time.perf_counter
        self.warmup = warmup
        self.repeats = repeats
        self.min_total_s = min_total_s

    def _once(self, fn: Callable[[], object]) -> float:
        torch = self.torch
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
        """Seconds of each timed call of ``fn``."""
        with self.torch.inference_mode():
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


def _quantile(sorted_xs: list[float], p: float) -> float:
    pos = p * (len(sorted_xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def summarise(op: str, variant: str, batch: int, q: int, kv: int, heads: int,
              times: list[float]) -> Sample:
    """A ``Sample`` (median and spread, seconds) of the timed calls ``times``."""
    xs = sorted(times)
    return Sample(op, variant, batch, q, kv, heads, len(xs), statistics.median(xs), xs[0],
                  _quantile(xs, 0.25), _quantile(xs, 0.75), xs[-1])


# ---- PixArt runner (torch) --------------------------------------------------------------------

class PixArtRunner:
    """Builds one-block PixArt transformers (one per resolution, as the executor builds them)
    and makes a zero-argument callable per measured shape."""

    def __init__(self, s: Settings) -> None:
        import torch

        self.torch = torch
        self.s = s
        self.m = s.model
        self.dev = s.device
        self.dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[s.dtype]
        self.batch = self.m.batch
        self.nets: dict = {}
        for res in s.resolutions:
            self.net(res)
        self.gen = torch.Generator(device=s.device).manual_seed(s.seed)

    def net(self, res: int):
        """The one-block transformer built for ``res`` px (built on first use)."""
        if res not in self.nets:
            import diffusers

            from executor.diffusers_models import diffusers_config

            cfg = diffusers_config(self.m, res)
            cfg["num_layers"] = 1  # every block has the same shapes: one is enough to time
            self.torch.manual_seed(self.s.seed)
            verbosity = diffusers.utils.logging.get_verbosity()
            # diffusers warns that .to(dtype) bypasses keep-in-fp32 lists; PixArt has none
            # (the list it prints is empty), so the warning is noise on the terminal.
            diffusers.utils.logging.set_verbosity_error()
            try:
                net = diffusers.PixArtTransformer2DModel(**cfg)
                self.nets[res] = net.to(device=self.dev, dtype=self.dt).eval()
            finally:
                diffusers.utils.logging.set_verbosity(verbosity)
        return self.nets[res]

    def _randn(self, *shape: int):
        # Drawn on the device itself: a 4096 px K,V buffer has ~10^8 elements, slow to make
        # on the host and copy over.
        return self.torch.randn(*shape, generator=self.gen, device=self.dev, dtype=self.dt)

    def _conditioning(self, net, res: int):
        """Timestep conditioning (B, 6h) and projected caption (B, t, h) as the model makes."""
        torch = self.torch
        b = self.batch
        ts = torch.full((b,), 500, device=self.dev, dtype=torch.long)
        added = None
        if net.use_additional_conditions:
            added = {"resolution": torch.tensor([[res, res]] * b, device=self.dev,
                                                dtype=self.dt),
                     "aspect_ratio": torch.tensor([[1.0]] * b, device=self.dev, dtype=self.dt)}
        with torch.inference_mode():
            temb, emb = net.adaln_single(ts, added, batch_size=b, hidden_dtype=self.dt)
            caption = self._randn(b, self.m.text_tokens, net.config.caption_channels)
            enc = net.caption_projection(caption)
        return ts, added, temb, emb, caption, enc

    def block(self, res: int, q: int, kv: int) -> Callable[[], object]:
        net = self.net(res)
        blk = net.transformer_blocks[0]
        _, _, temb, _, _, enc = self._conditioning(net, res)
        blk.attn1.set_processor(self._stale_processor(kv))
        x = self._randn(self.batch, q, self.m.hidden)
        return lambda: blk(x, encoder_hidden_states=enc, timestep=temb)

    def _stale_processor(self, kv: int):
        """The executor's stale-K,V processor (``executor/kv_attention.py``) with a buffer of
        ``kv`` tokens already written, as after a warmup step: a patch writes its fresh K,V at
        offset 0 and attends over the whole buffer; a full image attends over its fresh K,V."""
        from executor.kv_attention import PatchWindow, StaleKVAttnProcessor

        proc = StaleKVAttnProcessor(PatchWindow(0, kv))
        shape = (self.batch, self.m.heads, kv, self.m.head_dim)
        proc.k, proc.v = self._randn(*shape), self._randn(*shape)
        proc.filled = kv
        return proc

    def attention(self, q: int, kv: int, heads: int) -> Callable[[], object]:
        import torch.nn.functional as F

        b, d = self.batch, self.m.head_dim
        # Same memory layouts as inside the block: queries (B, L, heads*d) viewed as
        # (B, heads, L, d); K,V the same for a full image, else the contiguous stale buffer.
        query = self._randn(b, q, heads * d).view(b, q, heads, d).transpose(1, 2)
        if q < kv:
            key = self._randn(b, heads, kv, d)
            value = self._randn(b, heads, kv, d)
        else:
            key = self._randn(b, kv, heads * d).view(b, kv, heads, d).transpose(1, 2)
            value = self._randn(b, kv, heads * d).view(b, kv, heads, d).transpose(1, 2)
        return lambda: F.scaled_dot_product_attention(query, key, value)

    def embed(self, res: int, q: int) -> Callable[[], object]:
        net = self.net(res)
        rows, cols = self.m.token_grid(res, res)
        band = q // cols
        p = self.m.patch_size
        latent = self._randn(self.batch, self.m.latent_channels, band * p, cols * p)
        pos = net.pos_embed.pos_embed[:, :q]  # first band's rows of the positional table
        ts, added, _, _, caption, _ = self._conditioning(net, res)

        def run():
            h = net.pos_embed.proj(latent).flatten(2).transpose(1, 2)
            h = (h + pos).to(self.dt)
            temb = net.adaln_single(ts, added, batch_size=self.batch, hidden_dtype=self.dt)
            enc = net.caption_projection(caption)
            return h, temb, enc

        return run

    def final(self, res: int, q: int) -> Callable[[], object]:
        net = self.net(res)
        _, cols = self.m.token_grid(res, res)
        band = q // cols
        p = self.m.patch_size
        out_c = net.out_channels
        _, _, _, emb, _, _ = self._conditioning(net, res)
        x = self._randn(self.batch, q, self.m.hidden)
        c = self.m.latent_channels
        cfg = self.m.cfg
        torch = self.torch

        def run():
            shift, scale = (net.scale_shift_table[None] + emb[:, None]).chunk(2, dim=1)
            h = net.norm_out(x)
            h = h * (1 + scale) + shift
            h = net.proj_out(h)
            h = h.reshape(-1, band, cols, p, p, out_c)
            h = torch.einsum("nhwpqc->nchpwq", h).reshape(-1, out_c, band * p, cols * p)
            if cfg:  # guidance combine, then keep the noise half (PixArt predicts variance too)
                uncond, cond = h.chunk(2)
                h = uncond + GUIDANCE * (cond - uncond)
            return h[:, :c]

        return run

    def condition(self, res: int, q: int) -> Callable[[], object]:
        net = self.net(res)
        ts, added, _, _, _, _ = self._conditioning(net, res)
        return lambda: net.adaln_single(ts, added, batch_size=self.batch, hidden_dtype=self.dt)

    def scheduler_step(self, res: int, q: int) -> Callable[[], object]:
        from diffusers import DPMSolverMultistepScheduler

        _, cols = self.m.token_grid(res, res)
        band = q // cols
        p = self.m.patch_size
        shape = (1, self.m.latent_channels, band * p, cols * p)
        with warnings.catch_warnings():
            # diffusers' own numpy-2 deprecation noise while building its sigma table
            warnings.simplefilter("ignore", DeprecationWarning)
            sched = DPMSolverMultistepScheduler()  # the PixArt pipelines' default scheduler
            sched.set_timesteps(20)
        sample = self._randn(*shape)
        out = self._randn(*shape)
        with self.torch.inference_mode():
            for i in range(3):  # fill the multistep history: time the second-order update
                sched.step(out, sched.timesteps[i], sample)
        index = 5
        t = sched.timesteps[index]

        def run():
            sched._step_index = index  # same step every call: steady-state multistep update
            return sched.step(out, t, sample).prev_sample

        return run


# ---- collection -------------------------------------------------------------------------------

def device_name(device: str) -> str:
    """Human name of the device: the CPU model, or the CUDA device name."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_slug(device: str, name: str, threads: int) -> str:
    """File-name key of the device: ``cpu-<model>-t<threads>`` or ``cuda-<name>``."""
    if device == "cpu":
        return f"cpu-{slug(name)}-t{threads}"
    return f"cuda-{slug(name)}"


def default_out(s: Settings, name: str) -> Path:
    """``profiles/data/<device>_<model>_<dtype>.csv``: collections keyed by device and model."""
    co = f"_co{s.co_run}" if s.co_run else ""
    return DATA_DIR / (f"{device_slug(s.device, name, s.threads)}_{s.model.name}_{s.dtype}"
                       f"{co}.csv")


def attention_backend(device: str) -> str:
    """Which attention implementation the blocks run (recorded in the metadata)."""
    import torch

    base = "torch.nn.functional.scaled_dot_product_attention (diffusers AttnProcessor2_0 " \
           "layout)"
    if device == "cuda":
        flags = {"flash": torch.backends.cuda.flash_sdp_enabled(),
                 "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                 "math": torch.backends.cuda.math_sdp_enabled()}
        if hasattr(torch.backends.cuda, "cudnn_sdp_enabled"):
            flags["cudnn"] = torch.backends.cuda.cudnn_sdp_enabled()
        return base + "; enabled: " + ", ".join(k for k, v in flags.items() if v)
    return base + "; CPU kernel chosen by torch"


def plan(s: Settings) -> list[tuple]:
    """The measurement tasks: (op, variant, resolution, q, kv, heads)."""
    m = s.model
    tasks: list[tuple] = []
    grid = block_grid(m, s.resolutions, s.patches)
    kind = m.block_kind(0)
    for res, q, kv in grid:
        tasks.append(("block", kind, res, q, kv, m.heads))
    # Full-image blocks (q = kv) along a dense curve over n = q = kv too, for full images at
    # resolutions between the profiled ones.
    full = {kv for _, _, kv in grid}
    extra_n = sorted(set(full_sizes(grid, 2.0 if s.quick else FULL_RATIO)) - full) \
        if s.curve else []
    for n in extra_n:
        tasks.append(("block", kind, min(s.resolutions), n, n, m.heads))
    for res, q, kv in grid:
        tasks.append(("attention", "self", res, q, kv, m.heads))
    for n in extra_n:  # and the attention core of those full images (fresh K,V layout)
        tasks.append(("attention", "self", min(s.resolutions), n, n, m.heads))
    for res in s.resolutions:
        kv = m.image_tokens(res)
        for n in s.head_shards:
            tasks.append(("attention", "self", res, kv, kv, m.heads // n))
    for op in ("embed", "final", "scheduler_step"):
        for res, q, kv in grid:
            tasks.append((op, "", res, q, kv, m.heads))
    for res in s.resolutions:  # the per-step timestep conditioning (no token dependence)
        kv = m.image_tokens(res)
        tasks.append(("condition", "", res, kv, kv, m.heads))
    return [t for t in tasks if t[0] in s.ops]


def collect(s: Settings, progress: bool = True) -> ComputeProfile:
    """Run every task of ``plan(s)`` and return the profile (times in seconds)."""
    return collect_with(s, (), progress)[0]


def collect_with(s: Settings, extra: list[tuple] | tuple, progress: bool = True
                 ) -> tuple[ComputeProfile, list[list[float]]]:
    """Collect the profile of ``s`` and, in the same interleaved passes, time the ``extra``
    tasks (``plan``'s tuples); returns the profile and each extra task's call times (s)."""
    import torch

    if s.model.diffusers_class not in SUPPORTED_CLASSES:
        raise UserError(f"profiles.collect supports {', '.join(SUPPORTED_CLASSES)} models so "
                        f"far; {s.model.name} is a {s.model.diffusers_class}")
    if s.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but torch sees no CUDA device; use --device cpu")
    threads_before = torch.get_num_threads()
    if s.device == "cpu":
        from executor.host import steady_heap

        steady_heap()  # the executor's allocator policy (process-wide, like the threads)
        torch.set_num_threads(s.threads)
    try:
        return _collect(s, progress, extra)
    finally:
        torch.set_num_threads(threads_before)  # library callers keep their own setting


def make_runner(s: Settings):
    """The op timer: the executor's own ops (default, what ``executor.run`` performs) or the
    diffusers modules alone."""
    if s.runner == "executor":
        from executor.op_runner import ExecutorRunner

        return ExecutorRunner(s)
    return PixArtRunner(s)


def measure_tasks(runner, s: Settings, tasks: list[tuple], bar=None
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
            op, _variant, res, q, kv, heads = tasks[i]
            if bar is not None:
                bar.set_postfix_str(f"{op} q={q} kv={kv}")
            if op == "block":
                fn = runner.block(res, q, kv)
            elif op == "attention":
                fn = runner.attention(q, kv, heads)
            else:
                fn = getattr(runner, op)(res, q)
            times[i].extend(timer.measure(fn))
            del fn  # free this shape's buffers before the next one is built
            if bar is not None:
                bar.update(1)
    return times


def _collect(s: Settings, progress: bool, extra: list[tuple] | tuple = ()
             ) -> tuple[ComputeProfile, list[list[float]]]:
    import diffusers
    import torch

    name = device_name(s.device)
    runner = make_runner(s)
    tasks = plan(s)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    every = tasks + list(extra)
    bar = _progress(len(every) * max(1, s.passes), f"{s.model.name} {s.device} {s.dtype}",
                    progress)
    started = time.perf_counter()
    stop = _co_runners(s, runner) if s.co_run else None
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
        "attention_processor": "executor.kv_attention.StaleKVAttnProcessor",
        "runner": s.runner, "co_run": s.co_run, "ops": list(s.ops), "curve": s.curve,
        "threads": torch.get_num_threads() if s.device == "cpu" else None,
        "cpu_count": os.cpu_count(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "resolutions": list(s.resolutions), "patches": list(s.patches),
        "head_shards": list(s.head_shards), "repeats": s.repeats, "warmup": s.warmup,
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
    return ComputeProfile(meta, samples), extra_times


def _co_runners(s: Settings, runner) -> Callable[[], None]:
    """Fork ``s.co_run`` processes that run the model's largest full-image block in a loop,
    as the other ranks of a multi-process run keep their cores (and the shared caches and
    memory bandwidth) busy; returns the function that stops them."""
    import signal

    res = max(s.resolutions)
    kv = s.model.image_tokens(res)
    work = runner.block(res, kv, kv)
    pids = []
    for _ in range(s.co_run):
        pid = os.fork()
        if pid == 0:  # child: compute until killed, never return into the collector
            try:
                while True:
                    work()
            finally:
                os._exit(0)
        pids.append(pid)

    def stop() -> None:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)

    return stop


class _NoBar:
    def set_postfix_str(self, s: str) -> None: ...

    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional: no bar rather than a failure
        return _NoBar()
    return tqdm(total=total, desc=desc, file=sys.stderr, unit="shape", leave=True)


# ---- command line -----------------------------------------------------------------------------

class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad input as a ``UserError`` (one line, exit 2) instead of
    printing the usage block."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(message)


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got '{text}'") from None
    if not vals or min(vals) <= 0:
        raise UserError(f"{what} must be positive integers, got '{text}'")
    return vals


def parse(argv: list[str] | None) -> tuple[Settings, Path | None, bool]:
    """Parse the command line into settings, the output path and the progress flag."""
    ap = OneLineParser(prog="python -m profiles.collect", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="registry model (pixart, pixart-small, ...)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", help="bf16, fp16 or fp32 (default: fp32 on cpu, bf16 on cuda)")
    ap.add_argument("--resolutions", help="pixels, comma-separated (default: 256,384,512 on "
                    "cpu, 1024,2048,4096 on cuda; --quick: the first and last)")
    ap.add_argument("--patches", help="PipeFusion patch counts M of the q = kv/M grid "
                    f"(default {','.join(map(str, PATCHES))}; --quick "
                    f"{','.join(map(str, QUICK_PATCHES))})")
    ap.add_argument("--out", help="output CSV (default profiles/data/<device>_<model>_<dtype>"
                    ".csv)")
    ap.add_argument("--quick", action="store_true", help="reduced grid, few repeats")
    ap.add_argument("--threads", type=int, help="CPU threads per process (default 1, as "
                    "torchrun and the executor)")
    ap.add_argument("--repeats", type=int, help="timed calls per shape (default 7; --quick 3)")
    ap.add_argument("--warmup", type=int, help="untimed calls first (default 2; --quick 1)")
    ap.add_argument("--clock", default="auto", help="cpu: the thread's CPU time (immune to "
                    "other processes on the cores; one thread only), wall: perf_counter; "
                    "default cpu for --device cpu --threads 1, else wall (CUDA: events)")
    ap.add_argument("--runner", default="executor", choices=("executor", "block"),
                    help="executor: time the reference executor's own ops (what executor.run "
                         "performs, default); block: the diffusers modules alone")
    ap.add_argument("--co-run", type=int, default=0,
                    help="processes computing beside the measured one while it is timed (use "
                         "N-1 to profile for runs of N processes on one host, which share "
                         "caches and memory bandwidth)")
    ap.add_argument("--ops", help=f"op kinds to time, comma-separated (default all: "
                    f"{','.join(OPS)})")
    ap.add_argument("--no-curve", action="store_true",
                    help="skip the full-image blocks between the grid's token counts (only "
                         "the grid's resolutions will then be predicted from measurements)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    if a.co_run < 0:
        raise UserError(f"--co-run must be 0 or more, got {a.co_run}")
    if a.device not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got '{a.device}'")
    if a.dtype is not None and a.dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got '{a.dtype}'")
    model = get_model(a.model)
    if model.diffusers_class not in SUPPORTED_CLASSES:
        raise UserError(f"profiles.collect supports {', '.join(SUPPORTED_CLASSES)} models so "
                        f"far; {model.name} is a {model.diffusers_class}")
    res = _ints(a.resolutions, "--resolutions") if a.resolutions else None
    grid = model.vae_factor * model.patch_size
    for r in res or ():
        if r % grid:
            raise UserError(f"resolution {r} is not a multiple of {grid} px for {model.name}")
    for name in ("threads", "repeats"):
        v = getattr(a, name)
        if v is not None and v < 1:
            raise UserError(f"--{name} must be at least 1, got {v}")
    if a.warmup is not None and a.warmup < 0:
        raise UserError(f"--warmup must be at least 0, got {a.warmup}")
    if a.threads is not None and a.device == "cuda":
        raise UserError("--threads applies to --device cpu only")
    if a.clock not in ("auto", "cpu", "wall"):
        raise UserError(f"--clock must be auto, cpu or wall, got '{a.clock}'")
    s = default_settings(model, a.device, a.dtype, res, a.quick, a.threads, a.repeats,
                         a.warmup, {"cpu": "thread"}.get(a.clock, a.clock))
    if a.patches:
        s = Settings(**{**s.__dict__, "patches": _ints(a.patches, "--patches")})
    ops = OPS
    if a.ops:
        ops = tuple(o.strip() for o in a.ops.split(",") if o.strip())
        bad = [o for o in ops if o not in OPS]
        if bad or not ops:
            raise UserError(f"--ops: unknown op kind(s) {', '.join(bad) or '(none given)'}; "
                            f"choose from {', '.join(OPS)}")
    s = Settings(**{**s.__dict__, "runner": a.runner, "co_run": a.co_run, "ops": ops,
                    "curve": not a.no_curve})
    return s, Path(a.out) if a.out else None, not a.no_progress


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input, with one line on stderr)."""
    try:
        s, out, progress = parse(argv)
        prof = collect(s, progress)
        path = out or default_out(s, prof.meta["device_name"])
        prof.write(path)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    blocks = prof.select("block")
    where = (f"{prof.meta['threads']} thread(s), {s.clock} clock" if s.device == "cpu"
             else "CUDA events")
    print(f"wrote {path}: {len(prof.samples)} shapes ({len(blocks)} block shapes) in "
          f"{prof.meta['collect_s']} s on {prof.meta['device_name']} ({s.dtype}, {where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
