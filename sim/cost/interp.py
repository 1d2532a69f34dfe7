"""Monotone interpolation in log-log space and latency/bandwidth fits (plain Python).

Why log-log: op times span decades over token counts and message sizes, and over a factor of 2
in tokens they behave like power laws (linear in log-log), so interpolating ``log t`` against
``log n`` is exact for a power law and close for the sum of a fixed cost and a linear one.
Why monotone: more tokens never take less time; noise that says otherwise is pooled away
(isotonic regression) before a shape-preserving cubic (Fritsch-Carlson) joins the points, so
the interpolant never overshoots between measurements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def isotonic_increasing(ys: Sequence[float], weights: Sequence[float] | None = None
                        ) -> list[float]:
    """Least-squares non-decreasing fit of ``ys`` (pool-adjacent-violators)."""
    w = list(weights) if weights is not None else [1.0] * len(ys)
    blocks: list[list[float]] = []  # [value, weight, count]
    for y, wt in zip(ys, w):
        blocks.append([float(y), float(wt), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, c2 = blocks.pop()
            v1, w1, c1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    out: list[float] = []
    for v, _, c in blocks:
        out.extend([v] * int(c))
    return out


def _pchip_slopes(x: list[float], y: list[float]) -> list[float]:
    """Fritsch-Carlson derivatives: zero at local extrema and flat runs, weighted harmonic
    mean of the neighbouring secants elsewhere (keeps monotone data monotone)."""
    n = len(x)
    h = [x[i + 1] - x[i] for i in range(n - 1)]
    d = [(y[i + 1] - y[i]) / h[i] for i in range(n - 1)]
    if n == 2:
        return [d[0], d[0]]
    m = [0.0] * n
    for i in range(1, n - 1):
        if d[i - 1] * d[i] <= 0:
            m[i] = 0.0
        else:
            w1 = 2 * h[i] + h[i - 1]
            w2 = h[i] + 2 * h[i - 1]
            m[i] = (w1 + w2) / (w1 / d[i - 1] + w2 / d[i])

    def end(h0: float, h1: float, d0: float, d1: float) -> float:
        s = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
        if s * d0 <= 0:
            return 0.0
        if d0 * d1 <= 0 and abs(s) > abs(3 * d0):
            return 3 * d0
        return s

    m[0] = end(h[0], h[1], d[0], d[1])
    m[-1] = end(h[-1], h[-2], d[-1], d[-2])
    return m


class MonotoneLogLog:
    """Non-decreasing interpolant of ``y(x)`` through measured points, in log-log space.

    Points with the same ``x`` are pooled (geometric mean); the pooled ``log y`` are made
    non-decreasing by isotonic regression; a monotone cubic Hermite joins them. Calling it
    outside ``[lo, hi]`` raises ``ValueError``: extrapolation is the caller's decision.
    """

    def __init__(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        if len(xs) != len(ys) or not xs:
            raise ValueError("need one y per x and at least one point")
        if min(xs) <= 0 or min(ys) <= 0:
            raise ValueError("log-log interpolation needs positive x and y")
        pooled: dict[float, list[float]] = {}
        for x, y in zip(xs, ys):
            pooled.setdefault(float(x), []).append(math.log(y))
        keys = sorted(pooled)
        self.x = keys
        self._lx = [math.log(k) for k in keys]
        raw = [sum(v) / len(v) for v in (pooled[k] for k in keys)]
        self._ly = isotonic_increasing(raw, [len(pooled[k]) for k in keys])
        self._m = _pchip_slopes(self._lx, self._ly) if len(keys) > 1 else [0.0]

    @property
    def lo(self) -> float:
        return self.x[0]

    @property
    def hi(self) -> float:
        return self.x[-1]

    def contains(self, x: float, rel_tol: float = 1e-9) -> bool:
        """Whether ``x`` lies inside the measured range (inclusive)."""
        return self.lo * (1 - rel_tol) <= x <= self.hi * (1 + rel_tol)

    def __call__(self, x: float) -> float:
        if not self.contains(x):
            raise ValueError(f"{x} outside the measured range [{self.lo}, {self.hi}]")
        lx = min(max(math.log(x), self._lx[0]), self._lx[-1])
        if len(self.x) == 1:
            return math.exp(self._ly[0])
        # Segment holding lx (bisect by hand: the lists are short).
        i = 0
        while i < len(self._lx) - 2 and lx > self._lx[i + 1]:
            i += 1
        h = self._lx[i + 1] - self._lx[i]
        t = (lx - self._lx[i]) / h
        h00 = (1 + 2 * t) * (1 - t) ** 2
        h10 = t * (1 - t) ** 2
        h01 = t * t * (3 - 2 * t)
        h11 = t * t * (t - 1)
        ly = (h00 * self._ly[i] + h10 * h * self._m[i] + h01 * self._ly[i + 1]
              + h11 * h * self._m[i + 1])
        return math.exp(ly)


def fit_latency_bandwidth(sizes: Sequence[float], times: Sequence[float],
                          robust: bool = False) -> tuple[float, float, float]:
    """Fit ``t = a + n / b`` to (bytes, seconds) pairs, minimising relative error.

    Returns ``(latency_s, bandwidth_Bps, rms_rel_err)``. Relative error because the sizes span
    five decades: an absolute fit would ignore every small message. ``robust`` minimises the
    sum of absolute relative errors instead of squares (iteratively reweighted least squares),
    so that a few sizes caught in a slow mode (a peer process woken late on a shared core)
    do not drag the line. The latency is clamped at zero (a refit without it); a regime whose
    time does not grow with size gets ten times the best bandwidth observed in it (the data
    only bound it below).
    """
    if len(sizes) != len(times) or not sizes:
        raise ValueError("need one time per size")

    def solve(use_a: bool, use_c: bool, extra: list[float]) -> tuple[float, float]:
        # Weighted least squares with weights extra_i / t_i^2 on t = a + c*n.
        saa = sac = scc = sat = sct = 0.0
        for n, t, x in zip(sizes, times, extra):
            w = x / (t * t)
            saa += w
            sac += w * n
            scc += w * n * n
            sat += w * t
            sct += w * n * t
        if use_a and use_c:
            det = saa * scc - sac * sac
            if det > 1e-12 * saa * scc:
                return (sat * scc - sct * sac) / det, (saa * sct - sac * sat) / det
            use_c = False
        if use_a and not use_c:
            return sat / saa, 0.0
        return 0.0, sct / scc

    # A latency-bound regime (time flat or falling with size: noise) only bounds the bandwidth
    # below, by the best one seen; ten times that keeps the transfer term under a tenth of
    # any message's time in the regime while staying finite.
    c_floor = min(t / n for n, t in zip(sizes, times)) / 10

    def fit(extra: list[float]) -> tuple[float, float]:
        a, c = solve(True, True, extra)
        if c <= 0:
            c = c_floor
            w = [x / (t * t) for t, x in zip(times, extra)]
            a = max(0.0, sum(wi * (t - c * n) for wi, n, t in zip(w, sizes, times)) / sum(w))
        elif a < 0:
            a, c = solve(False, True, extra)
        return a, c

    extra = [1.0] * len(sizes)
    a, c = fit(extra)
    if robust:
        for _ in range(50):
            res = [abs((a + c * n) / t - 1.0) for n, t in zip(sizes, times)]
            extra = [1.0 / max(r, 1e-3) for r in res]  # L1 through reweighted squares
            a2, c2 = fit(extra)
            done = abs(a2 - a) <= 1e-9 * max(abs(a), 1e-12) and abs(c2 - c) <= 1e-9 * c
            a, c = a2, c2
            if done:
                break
    err = math.sqrt(sum(((a + c * n) / t - 1.0) ** 2 for n, t in zip(sizes, times))
                    / len(sizes))
    return a, 1.0 / c, err


def fit_regimes(sizes: Sequence[float], times: Sequence[float], min_points: int = 3,
                robust: bool = False) -> list[dict]:
    """Piecewise latency/bandwidth fit: the split into a ``small`` and a ``large`` regime
    (each with at least ``min_points`` sizes) that fits best (least total squared relative
    error, or absolute with ``robust``), plus an ``all`` fit over every size. Each entry has
    ``regime, lo_bytes, hi_bytes, latency_s, bandwidth_Bps, rms_rel_err``."""
    pairs = sorted(zip(sizes, times))
    xs = [p[0] for p in pairs]
    ts = [p[1] for p in pairs]

    def cost(lo: int, hi: int) -> float:
        a, b, _ = fit_latency_bandwidth(xs[lo:hi], ts[lo:hi], robust)
        res = [abs((a + n / b) / t - 1.0) for n, t in zip(xs[lo:hi], ts[lo:hi])]
        return sum(res) if robust else sum(r * r for r in res)

    def entry(name: str, lo: int, hi: int) -> dict:
        a, b, e = fit_latency_bandwidth(xs[lo:hi], ts[lo:hi], robust)
        return {"regime": name, "lo_bytes": int(xs[lo]), "hi_bytes": int(xs[hi - 1]),
                "latency_s": a, "bandwidth_Bps": b, "rms_rel_err": e}

    whole = entry("all", 0, len(xs))
    best: tuple[float, int] | None = None
    for k in range(min_points, len(xs) - min_points + 1):
        total = cost(0, k) + cost(k, len(xs))
        if best is None or total < best[0]:
            best = (total, k)
    if best is None:
        return [whole]
    k = best[1]
    return [entry("small", 0, k), entry("large", k, len(xs)), whole]
