"""The engine's shortcuts against the runs they stand for (issue 14, speed): ranks simulated
through a shifted image of another (``sim.symmetry``), bundles of flows run solo on an idle
network, and runs of compute ops taken in one timeout."""

from __future__ import annotations

import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

import sim.engine as engine
from sim.config import ParallelConfig, Workload
from sim.cost.roofline import RooflineCost
from sim.engine import Network, simulate
from sim.hardware import get_gpu
from sim.host import HostModel, issue
from sim.models import get_model
from sim.schedule import Compute, OpKind
from sim.strategies import build_schedule
from sim.symmetry import shift_classes
from sim.topology import build_topology

# (model, gpu, link, nodes, degrees with pipefusion): hybrids whose stages have shifted images
SHIFTED = [
    ("flux", "h100-sxm", "nvlink", 2, dict(pipefusion=4, ring=2, tensor=2)),
    ("flux", "l40", "pcie", 2, dict(pipefusion=4, ulysses=4)),
    ("pixart", "l40", "pcie", 1, dict(pipefusion=4, ulysses=2)),
    ("pixart", "l40", "pcie", 1, dict(pipefusion=2, ring=2, tensor=2)),
    ("pixart", "a100-sxm-80g", "nvlink", 1, dict(pipefusion=2, ring=4)),
    ("sd3", "a100-sxm-80g", "nvlink", 1, dict(pipefusion=2, cfg=2, ulysses=2)),
    ("hunyuan-dit", "l40", "pcie", 1, dict(pipefusion=4, tensor=2)),
]


def _case(model: str, gpu: str, link: str, nodes: int, degrees: dict, steps: int = 5):
    degrees = dict(degrees)
    pf = degrees.pop("pipefusion")
    n = pf * degrees.get("cfg", 1) * degrees.get("ring", 1) * degrees.get("ulysses", 1) \
        * degrees.get("tensor", 1)
    wl = Workload(get_model(model), 1024, 1024, steps)
    g = get_gpu(gpu)
    sched = build_schedule(wl, ParallelConfig(n, pf, 4, 1, **degrees))
    return sched, build_topology(g, n, link, nodes), RooflineCost(wl, g), HostModel(wl.model, g)


def _spy(monkeypatch) -> list[bool]:
    """Record, per run of the engine, whether it took the shifted-image shortcut."""
    runs: list[bool] = []
    real = engine._run

    def run(*args):
        runs.append(bool(args[-1]))
        return real(*args)

    monkeypatch.setattr(engine, "_run", run)
    return runs


def _same_rows(a, b) -> None:
    """Row for row equal, times up to the last bits (events at one instant may run in
    another order)."""
    a, b = sorted(a.rows), sorted(b.rows)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x._replace(start_s=0.0, end_s=0.0) == y._replace(start_s=0.0, end_s=0.0)
        assert (x.start_s, x.end_s) == pytest.approx((y.start_s, y.end_s), rel=1e-9, abs=1e-15)


def test_shift_classes_take_whole_stages_and_the_decoding_one_up_to_the_decode() -> None:
    sched, *_ = _case(*SHIFTED[0])
    classes = shift_classes(sched.ranks, sched.layout)
    assert {r: [m for m, _ in o.images] for r, o in classes.items()} == {
        0: [1, 2, 3], 4: [5, 6, 7], 8: [9, 10, 11], 12: [13, 14, 15]}
    for r in (0, 4, 8):  # whole stages: every op
        assert classes[r].prefix == len(sched.ranks[r])
    # Stage 3 holds the rank that decodes the image (12) and the ranks that gather the
    # latent for it (12, 14): its orbit runs alike up to the gather.
    last = sched.ranks[12]
    assert classes[12].prefix == len(last) - 2
    assert [op.kind for op in last[-2:]] == [OpKind.ALL_GATHER, OpKind.VAE_DECODE]
    # Pure PipeFusion has no axis to shift.
    wl = Workload(get_model("pixart"), 512, 512, 4)
    pipe = build_schedule(wl, ParallelConfig(4, 4, 4, 1))
    assert shift_classes(pipe.ranks, pipe.layout) == {}


@pytest.mark.parametrize("model,gpu,link,nodes,degrees", SHIFTED,
                         ids=lambda v: "-".join(f"{k}{x}" for k, x in v.items())
                         if isinstance(v, dict) else str(v))
def test_shifted_images_give_the_full_trace(model, gpu, link, nodes, degrees,
                                            monkeypatch) -> None:
    sched, topo, cost, host = _case(model, gpu, link, nodes, degrees)
    full = simulate(sched, topo, cost, host=host, mirrors=False)
    runs = _spy(monkeypatch)
    fast = simulate(sched, topo, cost, host=host)
    assert runs == [True]  # the shortcut was taken and held: no second run
    _same_rows(fast, full)
    assert fast.cpu_ahead == pytest.approx(full.cpu_ahead, rel=1e-9, abs=1e-15)


def test_asymmetric_links_fall_back_to_the_full_run(monkeypatch) -> None:
    # One image rank's NIC at a tenth of the others': its messages arrive late, the run
    # notices and simulates every rank.
    sched, topo, cost, host = _case(*SHIFTED[0])
    nic = next(i for (u, v), i in topo.edge_ids.items() if u == topo.gpu_nodes[5]
               and "nic" in v)
    topo.capacity[nic] /= 10
    full = simulate(sched, topo, cost, host=host, mirrors=False)
    runs = _spy(monkeypatch)
    fast = simulate(sched, topo, cost, host=host)
    assert runs == [True, False]
    _same_rows(fast, full)


_BUNDLES = st.lists(st.tuples(st.floats(0.0, 2e-3), st.sampled_from([8, 4, 2]),
                              st.floats(1e5, 5e7)), min_size=1, max_size=4)


@settings(max_examples=25, deadline=None)
@given(_BUNDLES)
def test_solo_bundles_end_as_phase_by_phase(bundles) -> None:
    # All-to-alls over 2, 4 or 8 GPUs of a PCIe box (shared switch and socket links) start
    # at random instants: a bundle that starts alone runs solo until another one joins.
    topo = build_topology(get_gpu("l40"), 8, "pcie")

    def ends(solo: bool) -> list[float]:
        env = simpy.Environment()
        net = Network(env, topo)
        net.solo = solo
        out = [0.0] * len(bundles)
        for i, (at, n, nbytes) in enumerate(bundles):
            pairs = [(a, b) for a in range(n) for b in range(n) if a != b]
            env.timeout(at).callbacks.append(
                lambda _, i=i, pairs=pairs, nbytes=nbytes: net.bundle(
                    pairs, nbytes, 1e-5, lambda i=i: out.__setitem__(i, env.now)))
        env.run()
        return out

    assert ends(True) == pytest.approx(ends(False), rel=1e-9)


def test_a_run_of_compute_ops_keeps_each_op_time() -> None:
    # Serial on a GPU: every op is a compute op, taken as one run; each row must still start
    # when the one before ended (or when the CPU issued it) and last its own cost.
    wl = Workload(get_model("pixart"), 1024, 1024, 3)
    g = get_gpu("l40")
    sched = build_schedule(wl, ParallelConfig(1))
    cost, host = RooflineCost(wl, g), HostModel(wl.model, g)
    rows = simulate(sched, build_topology(g, 1, "pcie"), cost, host=host).rows
    ops = sched.ranks[0]
    assert len(rows) == len(ops) and all(isinstance(op, Compute) for op in ops)
    now = cpu = 0.0
    for op, row in zip(ops, rows):
        cpu = max(cpu, now - host.max_lead_s)  # the launch queue holds the CPU back
        start, end, cpu = issue(now, cpu, host.seconds(op), cost.compute_time(op),
                                host.granularity(op))
        assert (row.op, row.step, row.patch) == (op.kind, op.step, op.patch)
        assert row.start_s == pytest.approx(start, rel=1e-12)
        assert row.end_s == pytest.approx(end, rel=1e-12)
        now = row.end_s
    assert rows[-1].op == OpKind.VAE_DECODE
