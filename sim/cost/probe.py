"""A reference op that tells whether this machine runs at the speed a CPU profile saw.

``profiles.collect`` records, in a CPU profile's metadata, how long one fixed op takes
(``reference_op_s``: a square fp32 matmul, see ``REFERENCE_OP``) with the profile's thread
count and clock. When that profile is used on a machine with the same CPU model, the op is
timed again for about a second (``reference_op_seconds``); a factor beyond
``SPEED_TOLERANCE`` means this machine runs slower or faster now than when the profile was
collected (another day's load, frequency scaling, a noisy neighbour), and
``sim.cost.profile.speed_check`` warns with the factor and the command that refreshes the
profile.

torch is imported only inside ``reference_op_seconds``, and only when a CPU profile of this
machine's CPU is used: the planner itself never needs it.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sim.models import DiTModel

REFERENCE_N = 256  # rows = columns of the two matrices
REFERENCE_OP = (f"torch.mm of two {REFERENCE_N}x{REFERENCE_N} fp32 matrices (seeded), median "
                "per call over about a second")
SPEED_TOLERANCE = 0.10  # |factor - 1| beyond which the profile is called stale


def reference_op_seconds(threads: int | None = None, clock: str = "thread",
                         budget_s: float = 1.0) -> float | None:
    """Median seconds of one ``REFERENCE_OP`` call on this machine, timed for about
    ``budget_s`` with ``threads`` torch threads (None: as set) and ``clock`` (``thread``:
    the thread's CPU time, as profiles collected with one thread use; else wall time).
    None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    tick = time.thread_time if clock == "thread" else time.perf_counter
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(REFERENCE_N, REFERENCE_N, generator=g)
        b = torch.randn(REFERENCE_N, REFERENCE_N, generator=g)
        with torch.inference_mode():
            for _ in range(3):  # first calls pick kernels and fault pages in
                torch.mm(a, b)
            # Calls per sample: enough that a sample outlasts the clock's resolution.
            t0 = tick()
            torch.mm(a, b)
            per = max(tick() - t0, 1e-6)
            inner = max(1, int(0.005 / per))
            samples: list[float] = []
            end = time.perf_counter() + budget_s
            while time.perf_counter() < end or len(samples) < 5:
                t0 = tick()
                for _ in range(inner):
                    torch.mm(a, b)
                samples.append((tick() - t0) / inner)
    finally:
        torch.set_num_threads(before)
    return statistics.median(samples)


def reference_block(model: DiTModel, resolution: int) -> tuple[str, int, int, int]:
    """The op ``executor.run --pace-probe`` times, as a compute profile's key after the op
    name (``block``): (variant, q tokens, kv tokens, heads): the model's first block kind (in
    sorted order, as the profiler lists them) on the whole ``resolution``-px image."""
    rows, cols = model.token_grid(resolution, resolution)
    n = rows * cols
    kind = sorted({model.block_kind(i) for i in range(model.num_blocks)})[0]
    return kind, n, n, model.heads
