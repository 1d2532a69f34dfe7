"""Host clock: the CPU issuing ops ahead of the GPU (closed forms, engine, calibration)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.config import ParallelConfig, Workload
from sim.cost import RooflineCost
from sim.engine import simulate
from sim.evaluate import calibration_scale, evaluate
from sim.hardware import get_gpu
from sim.host import HostModel, issue
from sim.models import get_model
from sim.schedule import Collective, Compute, OpKind, Tag
from sim.strategies import build_schedule
from sim.topology import build_topology


def _chain(now: float, cpu: float, hs: list[float], gs: list[float]) -> float:
    """GPU end of pieces issued one after another by a CPU free from ``cpu``."""
    end = now
    for h, g in zip(hs, gs):
        cpu += h
        end = max(end, cpu) + g
    return end


@given(now=st.floats(0, 1), cpu=st.floats(0, 1), h=st.floats(0, 1), g=st.floats(0, 1),
       n=st.integers(1, 30))
def test_issue_equals_piece_by_piece_chain(now: float, cpu: float, h: float, g: float,
                                           n: int) -> None:
    start, end, after = issue(now, cpu, h, g, n)
    assert end == pytest.approx(_chain(now, cpu, [h / n] * n, [g / n] * n), abs=1e-12)
    assert after == pytest.approx(cpu + h)
    assert now <= start <= end


def test_host_ops_of_a_block_range_and_its_parts() -> None:
    m = get_model("flux")
    host = HostModel(m, get_gpu("h100-sxm"))
    whole = host.ops(Compute(OpKind.BLOCKS, 0, 0, (17, 20)))
    assert whole == 2 * m.host_ops[0] + 2 * m.host_ops[1]  # blocks 17, 18 double; 19, 20 single
    attn = host.ops(Compute(OpKind.BLOCKS, 0, 0, (17, 20), part="attn"))
    proj = host.ops(Compute(OpKind.BLOCKS, 0, 0, (17, 20), part="proj"))
    assert attn + proj == whole
    a2a = Collective(OpKind.ALL_TO_ALL, (0, 1, 2, 3), 1000, Tag("ulysses", 0, 0, 17), count=8)
    ring = Collective(OpKind.RING_KV, (0, 1, 2, 3), 1000, Tag("ring", 0, 0, 17), count=2)
    assert host.ops(a2a) == 8 * 5  # the call and its four layout operators
    # Per block: three steps beyond the first (22 operators each) and 6 once per call.
    assert host.ops(ring) == 2 * (3 * 22 + 6)
    assert host.seconds(a2a) == pytest.approx(40 * get_gpu("h100-sxm").launch_overhead_s)


def test_cpu_processes_have_no_separate_host_clock() -> None:
    assert not HostModel(get_model("pixart-tiny"), get_gpu("cpu")).active


def _serial(gpu_name: str, scale: float) -> tuple[float, float, float]:
    """(latency, summed GPU time, summed host time) of a serial PixArt run."""
    wl = Workload(get_model("pixart"), 512, 512, 4, text_encoder=False, vae=False)
    gpu = get_gpu(gpu_name)
    cost = RooflineCost(wl, gpu, scale)
    host = HostModel(wl.model, gpu)
    sched = build_schedule(wl, ParallelConfig(1))
    trace = simulate(sched, build_topology(gpu, 1), cost, host=host)
    ops = sched.ranks[0]
    return (trace.end_s, sum(cost.compute_time(o) for o in ops),
            sum(host.seconds(o) for o in ops))


def test_host_bound_run_lasts_its_host_time_and_gpu_bound_its_gpu_time() -> None:
    lat, gpu_s, host_s = _serial("h100-sxm", 1e-3)  # GPU work made negligible
    assert host_s > 10 * gpu_s
    assert host_s <= lat <= host_s + gpu_s
    lat, gpu_s, host_s = _serial("h100-sxm", 50.0)  # GPU work dominant
    assert gpu_s > 10 * host_s
    assert gpu_s <= lat <= gpu_s + host_s


def test_more_gpus_cannot_beat_the_host_floor() -> None:
    """Ulysses splits the GPU work but every rank still issues every block's operators."""
    wl = Workload(get_model("pixart"), 1024, 1024, 20, text_encoder=False, vae=False)
    gpu = get_gpu("a100-sxm-80g")
    topo = build_topology(gpu, 8, "nvlink")
    host = HostModel(wl.model, gpu)
    floor = sum(host.seconds(op) for op in
                build_schedule(wl, ParallelConfig(8, ulysses=8)).ranks[0])
    pred = evaluate(wl, ParallelConfig(8, ulysses=8), gpu, topo, scale=1e-3)
    assert pred.latency_s >= floor


def test_calibration_reproduces_the_measured_single_gpu_latency() -> None:
    wl = Workload(get_model("pixart"), 1024, 1024, 20, text_encoder=False)
    gpu = get_gpu("a100-sxm-80g")
    for target in (1.0, 2.0, 8.0):
        s = calibration_scale(wl, gpu, target)
        got = evaluate(wl, ParallelConfig(1), gpu, build_topology(gpu, 1), scale=s).latency_s
        assert got == pytest.approx(target, rel=1e-6)


def test_cpu_lead_is_capped_by_the_launch_queue() -> None:
    """After a long GPU op the CPU is at most QUEUE_OPS operators' host time ahead, so the
    next ops wait for the GPU no longer than that lead allows."""
    from sim.host import QUEUE_OPS

    wl = Workload(get_model("pixart"), 1024, 1024, 6, text_encoder=True, vae=False)
    gpu = get_gpu("h100-sxm")
    host = HostModel(wl.model, gpu)
    sched = build_schedule(wl, ParallelConfig(1))
    # The text encoder: tens of ms of GPU work for a few hundred operators.
    trace = simulate(sched, build_topology(gpu, 1), RooflineCost(wl, gpu), host=host)
    leads = [v for (r, s), v in trace.cpu_ahead.items()]
    assert max(leads) == pytest.approx(QUEUE_OPS * gpu.launch_overhead_s)  # reached, not passed
