"""The schedule: per-rank ordered ops, the one contract between simulator and executor.

A strategy turns (model, resolution, steps, parallel config) into a ``Schedule``. The simulator
costs each op; the executor performs each op with torch. Nothing here knows about time, links
or simpy: both consumers read the same plain data.

Ops:

- ``Compute``: a run of transformer blocks on some tokens, or one of the ops around them
  (``condition``: the step's timestep conditioning, once per rank and step; ``embed``,
  ``final``, ``scheduler_step``, ``text_encode``, ``vae_decode``).
- ``Send`` / ``Recv``: point-to-point; a send is asynchronous, a receive blocks until its data
  has arrived. Both ends carry the tensor shape, so no run-time handshake is needed.
- ``Collective``: all-reduce, all-gather, all-to-all over a group of ranks (every member lists
  it with the same tag); an asynchronous one returns at once and a later ``Wait`` blocks on it.

Tags identify (what, step, patch, layer), so traces join op by op and every send has exactly
one receive with the same tag.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple


class OpKind:
    """Op kinds, defined once: strategies emit them, the engine and cost models price them,
    the executor performs them, and trace rows carry them in their ``op`` column. Plain
    strings (not an enum) so they print, compare and write to CSV as themselves."""

    # compute (``Compute.kind``)
    BLOCKS = "blocks"
    EMBED = "embed"
    FINAL = "final"
    SCHEDULER_STEP = "scheduler_step"
    CONDITION = "condition"
    TEXT_ENCODE = "text_encode"
    VAE_DECODE = "vae_decode"
    # collectives (``Collective.kind``); an asynchronous one's trace row adds ``ASYNC_SUFFIX``
    ALL_REDUCE = "all_reduce"
    ALL_GATHER = "all_gather"
    ALL_TO_ALL = "all_to_all"
    REDUCE_SCATTER = "reduce_scatter"
    RING_KV = "ring_kv"
    ASYNC_SUFFIX = "_async"
    # point to point and waits
    SEND = "send"
    RECV = "recv"
    WAIT = "wait"

    COMPUTE = (BLOCKS, EMBED, FINAL, SCHEDULER_STEP, CONDITION, TEXT_ENCODE, VAE_DECODE)
    COLLECTIVES = (ALL_REDUCE, ALL_GATHER, ALL_TO_ALL, REDUCE_SCATTER, RING_KV)
    OUTSIDE_LOOP = (TEXT_ENCODE, VAE_DECODE)  # once per image, before and after the loop


class Tag(NamedTuple):
    """What a message carries: ``what`` is ``hidden``, ``text``, ``skip`` or ``latent``."""

    what: str
    step: int
    patch: int  # -1 = the whole image
    layer: int  # block index the data enters (or leaves, for skips); -1 for latents


@dataclass(frozen=True, slots=True)
class Compute:
    """Work on one rank. ``layers`` is an inclusive block range for ``kind == "blocks"``.
    ``q_tokens`` query image tokens attend over ``kv_tokens`` image tokens (a patch against the
    full, partly stale buffer under PipeFusion); ``batch`` is the effective batch."""

    kind: str
    step: int
    patch: int
    layers: tuple[int, int] = (-1, -1)
    q_tokens: int = 0
    kv_tokens: int = 0
    batch: int = 1
    warmup: bool = False
    part: str = "all"  # "all", or for sequence/tensor parallel blocks "proj" / "attn"
    shard: int = 1  # tensor-parallel degree: this rank holds 1/shard of heads and MLP columns


@dataclass(frozen=True, slots=True)
class Send:
    """Asynchronous point-to-point send of a tensor of ``shape`` (elements) to ``dst``."""

    dst: int
    nbytes: int
    tag: Tag
    shape: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Recv:
    """Blocking receive of a tensor of ``shape`` from ``src``."""

    src: int
    nbytes: int
    tag: Tag
    shape: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Collective:
    """A collective over ``group`` (global ranks); ``nbytes`` is each rank's input size.
    Asynchronous collectives return at once and complete in the background."""

    kind: str  # "all_reduce", "all_gather", "all_to_all", "reduce_scatter", "ring_kv"
    group: tuple[int, ...]
    nbytes: int
    tag: Tag
    asynchronous: bool = False
    count: int = 1  # back-to-back collectives of this size this op stands for


@dataclass(frozen=True, slots=True)
class Wait:
    """Block until the asynchronous collective with ``tag`` (issued earlier) has completed."""

    tag: Tag


Op = Compute | Send | Recv | Collective | Wait
COLLECTIVE_KINDS = OpKind.COLLECTIVES


@dataclass
class Schedule:
    """Per-rank ordered op lists plus the facts both consumers need to interpret them."""

    model: str
    strategy: str
    height: int
    width: int
    steps: int
    warmup: int
    patches: int
    batch: int
    dtype_bytes: int
    stage_layers: list[tuple[int, int]]  # inclusive block range of each pipeline stage
    patch_rows: list[int]  # token rows of each patch (top to bottom)
    token_cols: int
    ranks: list[list[Op]] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    def patch_tokens(self, patch: int) -> int:
        """Image tokens of ``patch`` (-1: the whole image)."""
        if patch < 0:
            return sum(self.patch_rows) * self.token_cols
        return self.patch_rows[patch] * self.token_cols

    def patch_row_offset(self, patch: int) -> int:
        """First token row of ``patch``."""
        return sum(self.patch_rows[:patch])

    def validate(self) -> None:
        """Check the contract: every send has one matching receive (same tag, size, shape,
        peers). Raises ``ValueError`` naming the first mismatch."""
        sends: Counter = Counter()
        recvs: Counter = Counter()
        for rank, ops in enumerate(self.ranks):
            for op in ops:
                if isinstance(op, Send):
                    sends[(rank, op.dst, op.tag, op.nbytes, op.shape)] += 1
                elif isinstance(op, Recv):
                    recvs[(op.src, rank, op.tag, op.nbytes, op.shape)] += 1
        if sends != recvs:
            only_s = sends - recvs
            only_r = recvs - sends
            raise ValueError(f"unmatched schedule: sends without receive {list(only_s)[:3]}, "
                             f"receives without send {list(only_r)[:3]}")


def split_even(total: int, parts: int) -> list[int]:
    """Split ``total`` into ``parts`` contiguous sizes, the first ones one larger."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def partition_layers(num_blocks: int, stages: int,
                     per_stage: list[int] | None = None) -> list[tuple[int, int]]:
    """Contiguous block ranges per stage. Default: ``ceil(L/N)`` per stage, so the last stage
    may get fewer (DESIGN.md); ``per_stage`` gives an explicit count per stage."""
    if per_stage is None:
        size = math.ceil(num_blocks / stages)
        counts = [min(size, max(0, num_blocks - i * size)) for i in range(stages)]
        if counts[-1] == 0:  # ceil leaves nothing for the tail: fall back to an even split
            counts = split_even(num_blocks, stages)
    else:
        counts = list(per_stage)
    ranges = []
    first = 0
    for c in counts:
        ranges.append((first, first + c - 1))
        first += c
    return ranges


def numel(shape: tuple[int, ...]) -> int:
    """Number of elements of a tensor of ``shape``."""
    return math.prod(shape)
