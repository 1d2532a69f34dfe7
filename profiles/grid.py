"""The shapes a compute profile measures (torch-free): the PipeFusion patch grid, the dense
curve of full-image sizes between it, and the task list of one collection."""

from __future__ import annotations

import math

from profiles.settings import Settings
from sim.models import DiTModel

FULL_RATIO = 1.3  # largest step between the sizes of the full-image block curve (full_sizes)

# One measurement task: (op, variant, resolution px, q tokens, kv tokens, heads).
Task = tuple[str, str, int, int, int, int]


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


def plan(s: Settings) -> list[Task]:
    """The measurement tasks: (op, variant, resolution, q, kv, heads)."""
    m = s.model
    tasks: list[Task] = []
    grid = block_grid(m, s.resolutions, s.patches)
    # Every block kind of the model, each its own variant (Flux: joint and single blocks).
    kinds = sorted({m.block_kind(i) for i in range(m.num_blocks)})
    for kind in kinds:
        for res, q, kv in grid:
            tasks.append(("block", kind, res, q, kv, m.heads))
    # Tensor-parallel shards: the block with heads/T heads (and 1/T of the MLP) on the same
    # grid; its heads tell it apart from the whole block.
    for t in s.tensor_shards:
        for kind in kinds:
            for res, q, kv in grid:
                tasks.append(("block", kind, res, q, kv, m.heads // t))
    # Full-image blocks (q = kv) along a dense curve over n = q = kv too, for full images at
    # resolutions between the profiled ones.
    full = {kv for _, _, kv in grid}
    extra_n = sorted(set(full_sizes(grid, 2.0 if s.quick else FULL_RATIO)) - full) \
        if s.curve else []
    for kind in kinds:
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
