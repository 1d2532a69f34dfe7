"""The engine's event loop (``sim.des``) against simpy's: the same schedules give the same
trace, row for row and bit for bit, so the loop keeps simpy's order of events."""

from __future__ import annotations

import pytest
import simpy

import sim.engine as engine
from sim.config import ParallelConfig, Workload
from sim.cost.roofline import RooflineCost
from sim.des import Environment
from sim.engine import simulate
from sim.hardware import get_gpu
from sim.host import HostModel
from sim.models import get_model
from sim.strategies import build_schedule
from sim.topology import build_topology

# Point to point (PipeFusion), blocking and asynchronous collectives with and without the
# overlap slowdown, shifted images, mirrors, several nodes, processes started mid-run (the
# decoding stage's images split off).
CASES = [
    ("pixart", "l40", "pcie", 1, 8, dict(pipefusion=8), 16),
    ("pixart", "l40", "pcie", 1, 8, dict(ulysses=8), 1),
    ("pixart", "a100-sxm-80g", "nvlink", 1, 8, dict(ring=8), 1),
    ("flux", "h100-sxm", "nvlink", 2, 16, dict(pipefusion=4, ring=2, tensor=2), 4),
    ("sd3", "a100-sxm-80g", "nvlink", 1, 8, dict(pipefusion=2, cfg=2, ulysses=2), 4),
    ("pixart", "l40", "pcie", 1, 8, dict(distrifusion=8), 1),
]


@pytest.mark.parametrize("model,gpu,link,nodes,n,degrees,patches", CASES)
@pytest.mark.parametrize("mirrors", [True, False])
def test_same_trace_as_on_simpy(model, gpu, link, nodes, n, degrees, patches, mirrors,
                                monkeypatch) -> None:
    wl = Workload(get_model(model), 1024, 1024, 5)
    g = get_gpu(gpu)
    degrees = dict(degrees)
    pf = degrees.pop("pipefusion", 1)
    sched = build_schedule(wl, ParallelConfig(n, pf, patches, 1, **degrees))
    topo = build_topology(g, n, link, nodes)

    def run():
        return simulate(sched, topo, RooflineCost(wl, g), host=HostModel(wl.model, g),
                        mirrors=mirrors)

    ours = run()
    monkeypatch.setattr(engine, "Environment", simpy.Environment)
    theirs = run()
    assert ours.rows == theirs.rows
    assert ours.cpu_ahead == theirs.cpu_ahead


def _scenario(env) -> list[str]:
    """Timeouts, processes (one started mid-run), events triggered and yielded before and
    after they happen, at equal instants: what ran, in order."""
    seen: list[str] = []

    def proc(name: str, delay: float):
        yield env.timeout(delay)
        seen.append(f"{name}@{env.now}")
        done = env.event()
        done.succeed("value")
        got = yield done
        seen.append(f"{name} got {got}")
        got = yield done  # already happened: resumes at once
        seen.append(f"{name} again {got}")

    env.timeout(1.0).callbacks.append(lambda _: seen.append("timeout@1.0"))
    env.process(proc("a", 1.0))
    env.process(proc("b", 0.5))

    def late(_: object) -> None:
        env.process(proc("c", 0.0))
        env.timeout(0.0).callbacks.append(lambda _: seen.append("after c started"))

    env.timeout(1.0).callbacks.append(late)
    env.run()
    return seen


def test_events_run_in_simpys_order() -> None:
    ours = _scenario(Environment())
    assert ours == _scenario(simpy.Environment())
    # Time, then a starting process before its instant's other events, then creation.
    assert ours[:5] == ["b@0.5", "b got value", "b again value", "timeout@1.0", "a@1.0"]
    env = Environment()
    with pytest.raises(ValueError):
        env.timeout(-1.0)
    ev = env.event().succeed()
    with pytest.raises(RuntimeError):
        ev.succeed()


def test_a_process_may_move_the_clock_only_when_nothing_else_runs_first() -> None:
    env = Environment()
    seen: list[tuple[str, bool]] = []
    env.timeout(3.0).callbacks.append(lambda _: seen.append(("at 3", env.alone)))

    def proc():
        yield env.timeout(1.0)  # resumed as its event's only callback
        quiet = env.event().succeed()  # due now, with nothing to run
        seen.append(("by 2", env.idle_until(2.0)))  # the empty event is taken off the queue
        seen.append(("taken", quiet.callbacks is None))
        seen.append(("by 3", env.idle_until(3.0)))  # the callback due at 3 runs first
        seen.append(("by 2.5", env.idle_until(2.5)))

    env.process(proc())
    both = env.timeout(5.0)
    both.callbacks.append(lambda _: seen.append(("first of two", env.idle_until(6.0))))
    both.callbacks.append(lambda _: seen.append(("last of two", env.idle_until(6.0))))
    env.run()
    assert seen == [("by 2", True), ("taken", True), ("by 3", False), ("by 2.5", True),
                    ("at 3", True), ("first of two", False), ("last of two", True)]
    assert not env.alone  # outside any callback
