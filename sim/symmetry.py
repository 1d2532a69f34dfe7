"""Ranks that are images of one another under a shift of the parallel coordinates.

In a hybrid schedule the ranks of one stage that differ only in their ring, Ulysses, tensor
(or CFG, DistriFusion patch) position usually run the same ops, each with its own peers and
groups: rank ``r`` sends to ``d`` where its image ``s(r)`` sends to ``s(d)``, and joins the
collective over ``G`` where ``s(r)`` joins the one over ``s(G)``. Here ``s`` shifts those
coordinates cyclically (``RankLayout``), which maps ranks one to one, groups to groups.

``shift_classes`` finds the ranks whose whole orbit under every such shift runs the images of
their ops, checked op by op; the engine then simulates one rank per orbit
(``sim.engine.simulate``), still sending every image's traffic over the topology, and checks
as it runs that the images' messages and collectives end when their originals do. Whether
they do depends on the links (an image may cross a socket link its original does not): that
is what the engine's check is for, not this module, which only reads the op lists.
"""

from __future__ import annotations

import itertools
from operator import is_not
from typing import NamedTuple

from sim.layout import AXES, RankLayout
from sim.schedule import Collective, Compute, Op, Recv, Send, Wait

# Axes along which ranks of one stage are alike; the stage axis is not one of them (stages
# run different blocks and pass patches on, one direction only).
SHIFT_AXES = tuple(a for a in AXES if a != "stage")


def shifts(layout: RankLayout) -> list[list[int]]:
    """Every shift of the coordinates on ``SHIFT_AXES`` but the identity, as a list mapping
    each rank to its image."""
    axes = [AXES.index(a) for a in SHIFT_AXES if layout.degrees[AXES.index(a)] > 1]
    if not axes:
        return []
    coords = [layout.coords(r) for r in range(layout.world)]
    out = []
    for offsets in itertools.product(*(range(layout.degrees[i]) for i in axes)):
        if not any(offsets):
            continue
        perm = []
        for at in coords:
            moved = list(at)
            for i, k in zip(axes, offsets):
                moved[i] = (moved[i] + k) % layout.degrees[i]
            perm.append(sum(x * s for x, s in zip(moved, layout.strides)))
        out.append(perm)
    return out


def _images(a: list[Op], b: list[Op], perm: list[int]) -> tuple[int, bool]:
    """How many ops from the start op list ``b`` equals ``a`` with every rank ``x`` named in
    it replaced by ``perm[x]`` (groups compared as sets: a ring's flows are the same either
    way round), and whether every group of ``b`` among them is the ascending tuple of its
    image's ranks (then the collectives' keys are the images' exactly, tuples and all)."""
    same_group: dict[tuple, bool] = {}  # (group, its image's) -> images of one another
    exact = True
    # Ops the builders share between ranks (compute, waits) are the same object in both
    # lists: only the others are compared, found in C.
    for i in itertools.compress(itertools.count(), map(is_not, a, b)):
        x, y = a[i], b[i]
        kind = type(x)
        if kind is not type(y):
            return i, exact
        if kind is Compute or kind is Wait:
            if x != y:
                return i, exact
        elif kind is Send:
            if perm[x.dst] != y.dst or x.tag != y.tag or x.nbytes != y.nbytes \
                    or x.shape != y.shape:
                return i, exact
        elif kind is Recv:
            if perm[x.src] != y.src or x.tag != y.tag or x.nbytes != y.nbytes \
                    or x.shape != y.shape:
                return i, exact
        elif kind is Collective:
            if x.kind != y.kind or x.tag != y.tag or x.nbytes != y.nbytes \
                    or x.asynchronous != y.asynchronous or x.count != y.count:
                return i, exact
            key = (x.group, y.group)
            same = same_group.get(key)
            if same is None:
                image = sorted(perm[g] for g in x.group)
                same = same_group[key] = image == sorted(y.group)
                exact = exact and tuple(image) == y.group
            if not same:
                return i, exact
        else:
            return i, exact
    return min(len(a), len(b)), exact


class Orbit(NamedTuple):
    """The image ranks of a representative: each with the shift that takes the
    representative to it; they run the images of its first ``prefix`` ops (all of them, or
    up to the first op where one of them differs: the ops that decode the image)."""

    images: list[tuple[int, list[int]]]
    prefix: int
    # Every image's groups in the prefix are the ascending tuples of the representative's
    # groups' images (``Schedule.validate`` may then check the images through it).
    exact_groups: bool = False


def shift_classes(ranks: list[list[Op]], layout: RankLayout | None) -> dict[int, Orbit]:
    """Representative rank -> its ``Orbit``, for every orbit whose members run the images of
    the representative's ops, all of them or a first part (the representative is the
    orbit's lowest rank). The last stage's orbit usually has an odd one out at the end (the
    rank that decodes the image, the ranks that gather the latent for it): it is an orbit up
    to there."""
    if layout is None or layout.world != len(ranks):
        return {}
    perms = shifts(layout)
    if not perms:
        return {}
    out: dict[int, list[tuple[int, list[int]]]] = {}
    seen: set[int] = set()
    for r in range(len(ranks)):
        if r in seen:
            continue
        orbit = [(p[r], p) for p in perms]
        seen.update(m for m, _ in orbit)
        found = [_images(ranks[r], ranks[m], p) for m, p in orbit]
        prefix = min(n for n, _ in found)
        if prefix > 0:
            out[r] = Orbit(orbit, prefix, all(exact for _, exact in found))
    return out
