"""Quantiles of measured times, shared by the profilers (torch-free).

Two interpolation rules are in use and both are kept, because each one's numbers are already
in shipped profiles: the compute profiler interpolates linearly between ranks, the link
profiler picks the nearest rank. Neither changes without re-collecting those files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def quantile(sorted_xs: Sequence[float], p: float) -> float:
    """The ``p`` quantile (0 <= p <= 1) of ascending values, interpolating linearly between
    the two nearest ranks: position ``p * (n - 1)`` (numpy's default "linear" method, R type
    7). Same unit as the values."""
    pos = p * (len(sorted_xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def nearest_rank(sorted_xs: Sequence[float], p: float) -> float:
    """The ``p`` quantile (0 <= p <= 1) of ascending values without interpolation: the value
    at position ``p * (n - 1)`` rounded to the nearest rank, ties to the even rank (Python's
    ``round``). Same unit as the values."""
    return sorted_xs[min(len(sorted_xs) - 1, int(round(p * (len(sorted_xs) - 1))))]
