"""Monotone log-log interpolation and latency/bandwidth fits on inputs with known answers."""

from __future__ import annotations

import math

import pytest

from sim.cost.interp import (
    MonotoneLogLog,
    fit_latency_bandwidth,
    fit_regimes,
    isotonic_increasing,
)


def test_isotonic_pools_violators() -> None:
    assert isotonic_increasing([1, 3, 2, 4]) == [1, 2.5, 2.5, 4]
    assert isotonic_increasing([5, 4, 3]) == [4, 4, 4]
    assert isotonic_increasing([1, 2, 3]) == [1, 2, 3]
    # Weights move the pooled value towards the heavier point.
    assert isotonic_increasing([3, 1], [3, 1]) == [2.5, 2.5]


def test_power_law_is_reproduced_exactly_between_knots() -> None:
    xs = [1, 2, 4, 8, 16, 32]
    f = MonotoneLogLog(xs, [3.0 * x**1.5 for x in xs])
    for x in (1.0, 1.3, 3.0, 5.5, 11.0, 23.0, 32.0):
        assert f(x) == pytest.approx(3.0 * x**1.5, rel=1e-12)


def test_affine_time_interpolates_within_half_a_percent() -> None:
    # A fixed cost plus a linear one (a kernel launch plus work): not a power law, yet the
    # monotone cubic in log-log space stays close; linear interpolation in log-log space
    # would be off by up to 1.5 % at the geometric midpoints, nearest-knot by 25 %.
    xs = [16, 32, 64, 128, 256, 512, 1024]
    truth = lambda x: 1e-3 + 1e-5 * x  # noqa: E731
    f = MonotoneLogLog(xs, [truth(x) for x in xs])
    for lo, hi in zip(xs, xs[1:]):
        for t in (0.25, 0.5, 0.75):
            x = lo * (hi / lo) ** t
            assert f(x) == pytest.approx(truth(x), rel=5e-3)


def test_noisy_data_stays_monotone() -> None:
    xs = [1, 2, 3, 4, 5, 6]
    ys = [1.0, 2.0, 1.9, 4.0, 3.5, 6.0]
    f = MonotoneLogLog(xs, ys)
    grid = [1 + 5 * i / 500 for i in range(501)]
    vals = [f(x) for x in grid]
    assert all(b >= a * (1 - 1e-12) for a, b in zip(vals, vals[1:]))
    # Pooled violators: the pair (2, 1.9) becomes their geometric mean.
    assert f(2) == pytest.approx(math.sqrt(2.0 * 1.9))


def test_duplicates_pool_and_range_is_enforced() -> None:
    f = MonotoneLogLog([1, 1, 2], [1.0, 4.0, 8.0])
    assert f(1) == pytest.approx(2.0)
    assert f.lo == 1 and f.hi == 2
    assert f.contains(2) and not f.contains(2.5)
    with pytest.raises(ValueError):
        f(2.5)
    with pytest.raises(ValueError):
        MonotoneLogLog([0, 1], [1, 2])
    single = MonotoneLogLog([4], [2.0])
    assert single(4) == 2.0


def test_latency_bandwidth_fit_recovers_known_link() -> None:
    sizes = [1024 * 2**k for k in range(15)]
    times = [50e-6 + n / 2e9 for n in sizes]
    a, b, err = fit_latency_bandwidth(sizes, times)
    assert a == pytest.approx(50e-6, rel=1e-6)
    assert b == pytest.approx(2e9, rel=1e-6)
    assert err < 1e-9


def test_latency_bound_and_bandwidth_bound_edges() -> None:
    sizes = [1e3, 1e4, 1e5]
    a, b, _ = fit_latency_bandwidth(sizes, [1e-4, 1e-4, 1e-4])
    # Flat times only bound the bandwidth below, by the best one seen (1e5 B / 1e-4 s): ten
    # times that, and the latency takes the rest.
    assert b == pytest.approx(1e10)
    assert a == pytest.approx(1e-4 - (1e3 + 1e4 + 1e5) / 1e10 / 3, rel=1e-6)
    a, b, _ = fit_latency_bandwidth(sizes, [n / 1e9 for n in sizes])
    assert a == pytest.approx(0.0, abs=1e-15) and b == pytest.approx(1e9)


def test_regimes_find_the_protocol_switch() -> None:
    # An eager protocol below 64 KiB and a rendezvous one above: the split and both lines
    # must be recovered.
    sizes = [1024 * 2**k for k in range(14)]

    def t(n: int) -> float:
        return 20e-6 + n / 1e9 if n <= 65536 else 500e-6 + n / 5e9

    fits = {f["regime"]: f for f in fit_regimes(sizes, [t(n) for n in sizes])}
    assert fits["small"]["hi_bytes"] == 65536 and fits["large"]["lo_bytes"] == 131072
    assert fits["small"]["latency_s"] == pytest.approx(20e-6, rel=1e-6)
    assert fits["small"]["bandwidth_Bps"] == pytest.approx(1e9, rel=1e-6)
    assert fits["large"]["latency_s"] == pytest.approx(500e-6, rel=1e-6)
    assert fits["large"]["bandwidth_Bps"] == pytest.approx(5e9, rel=1e-6)
    assert fits["all"]["lo_bytes"] == 1024 and fits["all"]["rms_rel_err"] > 0.01


def test_robust_fit_ignores_a_few_slow_sizes() -> None:
    # Three of twelve sizes caught in a 1.5 ms slow mode (a peer woken late): the robust
    # (least absolute relative error) fit keeps the line.
    sizes = [1024 * 2**k for k in range(12)]
    times = [40e-6 + n / 3e9 for n in sizes]
    for i in (1, 5, 8):
        times[i] += 1.5e-3
    a, b, _ = fit_latency_bandwidth(sizes, times, robust=True)
    assert a == pytest.approx(40e-6, rel=0.01) and b == pytest.approx(3e9, rel=0.01)
    fits = {f["regime"]: f for f in fit_regimes(sizes, times, robust=True)}
    assert fits["all"]["latency_s"] == pytest.approx(40e-6, rel=0.01)
