"""The compute a run does between its blocking collective calls, and the topology costed at it.

On CPU ranks sharing cores a blocking call costs more the longer its ranks computed before
it (``benchmarks/collective_context.py``: 1.5-2 times as much after 5 ms as after 0.65 ms on
the 2-core EPYC VM, 2026-12-01), so a link profile collected there times each blocking
collective after two stretches of compute and the engine costs a run's calls at the run's
own stretch (``sim.cost.link_profile.collective_curves``). The stretch is a property of the
schedule and the compute costs, known only once both are: ``sim.evaluate`` asks here.
"""

from __future__ import annotations

import statistics

from sim.cost.base import CostModel
from sim.cost.link_profile import at_stretch, stretched
from sim.schedule import Collective, Compute, Recv, Schedule, Wait
from sim.topology import Topology


def blocking_stretch(sched: Schedule, cost: CostModel) -> float | None:
    """Seconds of compute before each blocking collective call of ``sched``, the median
    over rank 0's calls (a merged op of ``count`` calls shares the compute since the rank
    last blocked among them), or ``None`` without blocking collectives. A Ulysses block's
    four all-to-alls and a tensor-parallel block's three all-reduces come every few hundred
    microseconds on a tiny model; CFG's gather once per step."""
    since, per_call = 0.0, []
    for op in sched.ranks[0]:
        if isinstance(op, Compute):
            since += cost.compute_time(op)
        elif isinstance(op, Collective) and not op.asynchronous:
            per_call += [since / op.count] * op.count
            since = 0.0
        elif isinstance(op, (Recv, Wait)):
            since = 0.0  # the rank blocked here too
    return statistics.median(per_call) if per_call else None


def costed_topology(topo: Topology, sched: Schedule, cost: CostModel) -> Topology:
    """``topo`` with its blocking collectives costed at ``sched``'s stretch
    (``blocking_stretch``) where its link profile timed them after two stretches; ``topo``
    itself otherwise."""
    if not stretched(topo):
        return topo
    s = blocking_stretch(sched, cost)
    return topo if s is None else at_stretch(topo, s)
