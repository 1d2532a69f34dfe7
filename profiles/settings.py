"""What one compute-profile collection measures and how (torch-free): the op kinds, the
default grids per device, and the ``Settings`` record the grid, the timer and the collector
read."""

from __future__ import annotations

from dataclasses import dataclass

from sim.errors import UserError
from sim.models import DiTModel

DTYPES = ("fp32", "bf16", "fp16")
OPS = ("block", "attention", "embed", "final", "scheduler_step", "condition")
CPU_RESOLUTIONS = (256, 384, 512)
CUDA_RESOLUTIONS = (1024, 2048, 4096)
PATCHES = (1, 2, 4, 8, 16, 32)
QUICK_PATCHES = (1, 2, 4, 8)
# The executor's model classes: PixArt, and the MM-DiT models SD3 and Flux (executor.mmdit).
SUPPORTED_CLASSES = ("PixArtTransformer2DModel", "SD3Transformer2DModel",
                     "FluxTransformer2DModel")


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
    processes: int = 1  # fresh processes the collection runs in, pooled (profiles.pooled)
    # Tensor-parallel degrees T whose block shards (1/T of the heads and MLP columns, as
    # executor.parallel_attention.shard_block cuts them) are timed on the block grid.
    tensor_shards: tuple[int, ...] = ()


def check_supported(model: DiTModel) -> None:
    """Raise a ``UserError`` unless the runners can build ``model``."""
    if model.diffusers_class not in SUPPORTED_CLASSES:
        raise UserError(f"profiles.collect supports {', '.join(SUPPORTED_CLASSES)} models so "
                        f"far; {model.name} is a {model.diffusers_class}")


def default_settings(model: DiTModel, device: str, dtype: str | None,
                     resolutions: tuple[int, ...] | None, quick: bool, threads: int | None,
                     repeats: int | None, warmup: int | None, clock: str = "auto"
                     ) -> Settings:
    """Fill in the defaults of one collection: fp32 on CPU and bf16 on CUDA; the CPU grid is
    256, 384 and 512 px (real PixArt at 1024 px takes seconds per block call on one core),
    the CUDA grid 1024, 2048 and 4096 px; one thread (torchrun's default, so the profile
    describes the machine the executor's processes see). ``clock="auto"``: the thread
    CPU-time clock on a one-thread CPU run, else the wall clock (CUDA events on a GPU)."""
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
