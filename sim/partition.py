"""How a run is cut into parts: tokens rows into patches, blocks into pipeline stages.

Plain arithmetic with no project imports, so the configuration checks, the rank layout and the
strategies can all use it without importing each other.
"""

from __future__ import annotations

import math


def split_even(total: int, parts: int) -> list[int]:
    """Split ``total`` into ``parts`` contiguous sizes, the first ones one larger."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def partition_layers(num_blocks: int, stages: int,
                     per_stage: list[int] | None = None) -> list[tuple[int, int]]:
    """Contiguous block ranges per stage. Default: ``ceil(L/N)`` per stage, so the last stage
    may get fewer (docs/design.md#stages-and-patches); ``per_stage`` gives an explicit count
    per stage."""
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
