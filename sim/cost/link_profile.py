"""Link profiles applied to a topology: measured latency and bandwidth replace the registry's.

``apply_link_profile`` overrides the bandwidth and latency of one link kind of a ``Topology``
with those fitted to a link profile (collected by ``python -m profiles.links``), and hands the
engine the measured time of each collective the profile timed (``CollectiveCurve``). Imports
no torch: the loader lives in ``sim.cost.profile_format``.
"""

from __future__ import annotations

import math
from pathlib import Path

from sim.cost.interp import MonotoneLogLog
from sim.cost.profile_format import (
    COLLECTIVE_OPS,
    MAX_TIME_S,
    SHORT_SUFFIX,
    LinkProfile,
    ProfileError,
    check_fit,
)
from sim.errors import UserError
from sim.schedule import OpKind
from sim.topology import Graph, Topology


class CollectiveCurve:
    """Measured seconds of one call of a collective against the bytes each rank puts in, for
    groups of ``world`` ranks: monotone log-log interpolation between the measured sizes
    (``sim.cost.interp``); below the smallest size its time (a call that small is all fixed
    cost); beyond the largest, that time grown in proportion to the bytes (bandwidth-bound)."""

    def __init__(self, world: int, table: tuple[tuple[int, float], ...], source: str) -> None:
        self.world = world
        self.source = source
        self._curve = MonotoneLogLog([n for n, _ in table], [t for _, t in table])

    def __call__(self, nbytes: float) -> float:
        """Seconds of one call moving ``nbytes`` per rank."""
        c = self._curve
        if nbytes <= c.lo:
            return c(c.lo)
        if nbytes >= c.hi:
            return c(c.hi) * nbytes / c.hi
        return c(nbytes)


def collective_curves(prof: LinkProfile, stretch_s: float | None = None
                      ) -> dict[str, CollectiveCurve]:
    """The curve of every collective ``prof`` timed, by op name (``all_gather``,
    ``all_gather_async``, ...).

    ``stretch_s``: the seconds of compute a run does between two of its blocking calls
    (``sim.stretch.blocking_stretch``). Where the profile timed a blocking collective
    both after its reference op and after a short stretch (``<op>_short`` rows, CPU ranks), its
    curve is then the two interpolated at that stretch: geometrically in the stretch, size by
    size, the short rows at or below their stretch, the plain rows at or above the reference
    op's. On CPU processes sharing cores a call costs more the longer its ranks computed
    before it (``benchmarks/collective_context.py``: 1.5-2 times as much after 5 ms as after
    0.65 ms, 2026-12-01). Without ``stretch_s`` the plain rows serve, as before."""
    out = {}
    stretches = prof.stretches() if stretch_s is not None else None
    source = f"link profile {prof.path or prof.backend}"
    for kind in COLLECTIVE_OPS:
        for name in (kind, kind + OpKind.ASYNC_SUFFIX):
            table = prof.collective_table(name)
            if table is None:
                continue
            short = prof.collective_table(name + SHORT_SUFFIX) if stretches else None
            if short is not None and stretch_s is not None and stretches is not None:
                world, rows = table[0], blend_tables(short[1], table[1], stretches, stretch_s)
                out[name] = CollectiveCurve(world, rows, f"{source} (at {stretch_s * 1e3:.2g} "
                                                         f"ms of compute per call)")
            else:
                out[name] = CollectiveCurve(table[0], table[1], source)
    return out


def blend_tables(short: tuple[tuple[int, float], ...], long: tuple[tuple[int, float], ...],
                 stretches: tuple[float, float], stretch_s: float
                 ) -> tuple[tuple[int, float], ...]:
    """Per size, the call's seconds at ``stretch_s`` seconds of compute before it, between
    ``short`` (timed after ``stretches[0]``) and ``long`` (after ``stretches[1]``):
    ``t_short^(1-w) * t_long^w`` with ``w`` the stretch's place between the two in log
    scale, clamped to [0, 1]. Sizes timed in only one of the tables keep that table's time."""
    lo, hi = stretches
    w = (math.log(max(stretch_s, 1e-12)) - math.log(lo)) / (math.log(hi) - math.log(lo))
    w = min(1.0, max(0.0, w))
    at_short = dict(short)
    return tuple((n, at_short[n] ** (1 - w) * t ** w if n in at_short else t) for n, t in long)


class StretchedCollectives:
    """The collective curves of a link profile whose blocking calls were timed after two
    stretches of compute (``<op>_short`` rows, CPU ranks), at the stretch a run has: a run's
    blocking calls are costed at the compute it does between them (``collective_curves``),
    which only its schedule tells (``sim.stretch``)."""

    def __init__(self, prof: LinkProfile) -> None:
        self.prof = prof
        self._at: dict[float, dict[str, CollectiveCurve]] = {}

    def at(self, stretch_s: float) -> dict[str, CollectiveCurve]:
        """The curves at ``stretch_s`` seconds of compute before each blocking call."""
        got = self._at.get(stretch_s)
        if got is None:
            got = self._at[stretch_s] = collective_curves(self.prof, stretch_s)
        return got


def at_stretch(topo: Topology, stretch_s: float) -> Topology:
    """``topo`` with the collective curves of its stretch-dependent edges
    (``StretchedCollectives``, put there by ``apply_link_profile``) at ``stretch_s`` seconds
    of compute before each blocking call; ``topo`` itself where it has none."""
    if not stretched(topo):
        return topo
    g: Graph = topo.graph.copy()
    for _, _, d in g.edges(data=True):
        if "stretched" in d:
            d["collectives"] = d["stretched"].at(stretch_s)
    return Topology(g, list(topo.gpu_nodes), topo.link, topo.nodes)


def stretched(topo: Topology) -> bool:
    """Whether any edge of ``topo`` costs blocking collectives by the compute before them."""
    return any("stretched" in d for _, _, d in topo.graph.edges(data=True))


def apply_link_profile(topo: Topology, profile: LinkProfile | str | Path,
                       kind: str | None = None, nbytes: float | None = None,
                       stretch: bool = True) -> Topology:
    """A copy of ``topo`` whose edges of link ``kind`` (default: the kind the profile was
    measured on, e.g. ``loopback`` for gloo between processes of one host) take the profile's
    fitted point-to-point latency (s) and bandwidth (bytes/s), and, where the profile measured
    it (CPU transports), the host time a message costs each of its two ranks (a
    point-to-point message, and one of an asynchronous collective), and the
    measured time of the collectives it timed (``collective_curves``; the engine costs a
    collective of the profile's group size whose flows stay on these edges from them,
    ``sim.engine.collective_call``).

    The engine models a message as one latency plus size over bandwidth, so one regime of the
    piecewise fit is chosen: the one holding ``nbytes`` (the typical message size, bytes) when
    given, else the fit over every measured size. Raises ``UserError`` when the topology has
    no edge of that kind, ``ProfileError`` (a ``UserError``) when the fit's latency or
    bandwidth is non-finite or out of range.

    ``stretch``: where the profile timed its blocking collectives after two stretches of
    compute, the edges also get them as ``StretchedCollectives``, and ``sim.evaluate`` costs
    each run's blocking calls at the compute it does between them (``sim.stretch``); with
    ``stretch=False`` (or a profile without ``<op>_short`` rows) the plain rows serve.
    """
    prof = profile if isinstance(profile, LinkProfile) else LinkProfile.read(profile)
    kind = kind or prof.link_kind
    fit = prof.fit("p2p", nbytes)
    # Checked here too, for profiles built in memory: a zero or negative bandwidth would make
    # the engine divide by zero or never finish a transfer, a NaN latency poison every time.
    check_fit(fit, f"link profile {prof.path or prof.backend or '(in memory)'}, fit of 'p2p'")
    host, own_coll = prof.host_table(), prof.host_table("host_coll")
    for n, t in (*host, *own_coll):
        if not math.isfinite(t) or t > MAX_TIME_S:
            raise ProfileError(f"link profile {prof.path or '(in memory)'}: host time {t} s "
                               f"of {n}-byte messages is not a usable time")
    # A collective's messages share one group; profiles older than ``host_coll`` rows timed
    # ``host_msg`` that way, so they serve both.
    host_coll = own_coll or host
    curves = collective_curves(prof)
    by_stretch = StretchedCollectives(prof) if stretch and prof.stretches() else None
    kinds = sorted({d["kind"] for _, _, d in topo.graph.edges(data=True)})
    if kind not in kinds:
        raise UserError(f"link profile {prof.path or ''} measures '{kind}' links but the "
                        f"topology has only {', '.join(kinds)}; pick a matching --gpu/--link "
                        f"or collect a profile on that link")
    g: Graph = topo.graph.copy()
    for _, _, d in g.edges(data=True):
        if d["kind"] == kind:
            d["bandwidth"] = fit.bandwidth_Bps
            d["latency"] = fit.latency_s
            d["source"] = f"link profile {prof.path or prof.backend} ({fit.regime} regime)"
            if host:
                d["host"] = host
            if host_coll:
                d["host_coll"] = host_coll
            if curves:
                d["collectives"] = curves
            if by_stretch is not None:
                d["stretched"] = by_stretch
    return Topology(g, list(topo.gpu_nodes), topo.link, topo.nodes)
