"""Communication physics of issue 10: transports per GPU pair, SHM and socket-link budgets,
NCCL's latency model, all-to-all collapse on PCIe, compute slowed by overlapped traffic."""

from __future__ import annotations

import pytest

from sim.config import ParallelConfig, Workload
from sim.engine import Network, collective_call
from sim.evaluate import evaluate
from sim.hardware import GPUS, HOST_BUSES, LINKS, OVERLAP_SLOWDOWN, get_gpu
from sim.models import get_model
from sim.nccl import LL, SIMPLE, hops, protocol
from sim.schedule import OpKind
from sim.topology import build_topology


def _rates(topo, pairs) -> list[float]:
    """Max-min fair rates (bytes/s) of concurrent flows over ``pairs``."""
    import simpy

    from sim.engine import _Flow

    net = Network(simpy.Environment(), topo)
    net.flows = [_Flow(topo.route(a, b), 1e9, lambda: None) for a, b in pairs]
    net._rates()
    return [f.rate for f in net.flows]


def test_transport_per_pair_as_nccl_chooses() -> None:
    l20 = build_topology(get_gpu("l20"), 8, "pcie")
    assert [l20.transport(0, j) for j in range(1, 8)] == ["p2p"] + ["shm"] * 6
    assert l20.transport(6, 7) == "p2p"
    nv = build_topology(get_gpu("a100-sxm-80g"), 8, "nvlink")
    assert {nv.transport(0, j) for j in range(1, 8)} == {"nvlink"}
    no_p2p = build_topology(get_gpu("rtx4090"), 4, "pcie")
    assert {no_p2p.transport(0, j) for j in range(1, 4)} == {"shm"}  # no peer access at all
    two = build_topology(get_gpu("l20"), 16, "pcie", nodes=2)
    assert two.transport(0, 8) == "net" and two.transport(0, 1) == "p2p"
    cpu = build_topology(get_gpu("cpu"), 2, "pcie")
    assert cpu.transport(0, 1) == "loopback" and not cpu.nccl


def test_p2p_pair_gets_its_link_and_shm_pairs_share_the_senders_pcie_budget() -> None:
    topo = build_topology(get_gpu("l20"), 8, "pcie")
    link = LINKS["pcie-gen4"].bandwidth
    assert _rates(topo, [(0, 1)]) == [pytest.approx(link)]
    # SHM out of GPU 2 and into GPU 2 at once: both directions come out of one PCIe budget.
    up, down = _rates(topo, [(2, 0), (1, 2)])
    assert up == pytest.approx(link / 2) and down == pytest.approx(link / 2)
    # A P2P flow into GPU 2 does not touch its host budget.
    assert _rates(topo, [(2, 0), (3, 2)]) == [pytest.approx(link), pytest.approx(link)]


def test_cross_socket_shm_flows_share_the_socket_link_per_direction() -> None:
    topo = build_topology(get_gpu("l20"), 8, "pcie")
    socket = HOST_BUSES["pcie-gen4"].socket_link
    rates = _rates(topo, [(0, 4), (2, 6)])  # both cross socket 0 -> 1
    assert sum(rates) == pytest.approx(socket)
    back = _rates(topo, [(0, 4), (6, 2)])  # one each way: each has a direction to itself
    assert back == [pytest.approx(socket), pytest.approx(socket)]


def test_all_to_all_efficiency_only_where_many_peers_go_through_host_memory() -> None:
    l20 = build_topology(get_gpu("l20"), 8, "pcie")
    eff = HOST_BUSES["pcie-gen4"].many_to_many
    assert l20.all_to_all_efficiency((0, 1, 4, 5)) == eff  # across the sockets
    assert l20.all_to_all_efficiency((0, 1, 2, 3)) == 1.0  # inside one socket
    assert l20.all_to_all_efficiency((0, 4)) == 1.0  # two peers: not many-to-many
    nv = build_topology(get_gpu("a100-sxm-80g"), 8, "nvlink")
    assert nv.all_to_all_efficiency(tuple(range(8))) == 1.0
    _, per_flow, _ = collective_call(l20, OpKind.ALL_TO_ALL, (0, 1, 4, 5), 4e6)
    assert per_flow == pytest.approx(4e6 / 4 / eff)


def test_nccl_latency_model_closed_forms() -> None:
    assert hops(OpKind.ALL_REDUCE, 8) == 14 and hops(OpKind.ALL_GATHER, 8) == 7
    assert hops(OpKind.ALL_TO_ALL, 8) == 1
    # A tiny all-reduce takes LL: 6.6 us + 14 hops x 0.6 us over NVLink.
    lat, factor = protocol(OpKind.ALL_REDUCE, 8, 1024, 200e9, nvlink=True)
    assert lat == pytest.approx(LL[0] + 14 * LL[2]) and factor == 2.0
    # A large one takes Simple at the full rate: 8.4 us + 14 x 5.7 us over PCIe.
    lat, factor = protocol(OpKind.ALL_REDUCE, 8, 64e6, 25e9, nvlink=False)
    assert lat == pytest.approx(SIMPLE[0] + 14 * SIMPLE[1]) and factor == 1.0
    # A ring rotation pays a whole call per step.
    lat, _ = protocol(OpKind.RING_KV, 4, 64e6, 25e9, nvlink=False)
    assert lat == pytest.approx(3 * (SIMPLE[0] + SIMPLE[1]))


@pytest.mark.parametrize("size", [1e3, 1e5, 1e7, 1e9])
def test_protocol_choice_never_slower_than_either_protocol(size: float) -> None:
    bw = 25e9
    lat, factor = protocol(OpKind.ALL_GATHER, 4, size, bw, nvlink=False)
    chosen = lat + size * factor / bw
    ll = LL[0] + 3 * LL[1] + size * 2 / bw
    simple = SIMPLE[0] + 3 * SIMPLE[1] + size / bw
    assert chosen == pytest.approx(min(ll, simple))


def test_ulysses_over_pcie_slower_with_shm_than_all_p2p_and_monotone_in_gpus() -> None:
    wl = Workload(get_model("pixart"), 1024, 1024, 20, text_encoder=False, vae=False)
    gpu = get_gpu("l20")
    lat = {}
    for n in (2, 4, 8):
        topo = build_topology(gpu, n, "pcie")
        # The transports alone: without the layout copies around each call, whose GPU memory
        # traffic shrinks as the messages do with more GPUs.
        topo.graph.graph["memory_bandwidth"] = 0.0
        lat[n] = evaluate(wl, ParallelConfig(n, ulysses=n), gpu, topo).metrics.exposed_comm_s
    assert lat[2] < lat[4] < lat[8]  # 2 GPUs share a switch; 4 and 8 go through the host


def test_overlapped_compute_is_slowed_on_nvlink_only() -> None:
    assert OVERLAP_SLOWDOWN["pcie"] == 1.0 and OVERLAP_SLOWDOWN["nvlink"] > 1.0
    wl = Workload(get_model("pixart"), 2048, 2048, 8, text_encoder=False, vae=False)
    gpu = GPUS["a100-sxm-80g"]
    topo = build_topology(gpu, 4, "nvlink")
    cfg = ParallelConfig(4, distrifusion=4, warmup=1)
    slowed = evaluate(wl, cfg, gpu, topo).latency_s
    topo.graph.graph["overlap_slowdown"] = 1.0
    free = evaluate(wl, cfg, gpu, topo).latency_s
    assert slowed > free
    assert slowed <= free * OVERLAP_SLOWDOWN["nvlink"] + 1e-9


@pytest.mark.parametrize("nccl,cpu,per_node,expected", [
    ("2.23", "intel", 8, False), ("2.23", "amd", 8, False), ("2.23", "amd", 2, True),
    ("2.22", "amd", 8, True), ("2.22", "intel", 8, False), ("2.22", "intel", 2, False),
])
def test_p2p_through_the_cpu_follows_nccl_version_and_host_vendor(nccl, cpu, per_node,
                                                                    expected) -> None:
    from sim.hardware import nccl_p2p_through_cpu

    assert nccl_p2p_through_cpu(nccl, cpu, per_node) is expected


def test_older_nccl_on_an_amd_host_goes_peer_to_peer_across_the_cpu() -> None:
    gpu = get_gpu("l20")  # a Gen4 host: AMD by default
    new = build_topology(gpu, 8, "pcie")
    old = build_topology(gpu, 8, "pcie", nccl="2.22")
    intel = build_topology(gpu, 8, "pcie", nccl="2.22", host_cpu="intel")
    assert [old.transport(0, j) for j in range(1, 8)] == ["p2p"] * 7
    assert [intel.transport(0, j) for j in range(1, 8)] == [new.transport(0, j)
                                                           for j in range(1, 8)]
    # Same links either way: P2P through the CPU and SHM load the PCIe links and socket link.
    assert old.route(0, 5) == new.route(0, 5)
    assert old.crosses_root_complex(0, 2) and not old.crosses_root_complex(0, 1)
    # An all-to-all over such pairs collapses, inside one socket too; a pair does not.
    from sim.hardware import P2P_CPU_MANY_TO_MANY

    assert old.all_to_all_efficiency((0, 1, 2, 3)) == P2P_CPU_MANY_TO_MANY
    assert new.all_to_all_efficiency((0, 1, 2, 3)) == 1.0
    assert old.all_to_all_efficiency((0, 2)) == 1.0
    assert "root complex" in old.transport_summary(8)
    assert "root complex" not in new.transport_summary(8)


def test_socket_link_rate_follows_the_host_vendor() -> None:
    from sim.hardware import AMD_SOCKET_LINK, host_bus

    assert host_bus("pcie-gen4").socket_link == AMD_SOCKET_LINK
    assert host_bus("pcie-gen4", "intel").socket_link == 10e9
    assert host_bus("pcie-gen5").socket_link == 22e9
    assert host_bus("pcie-gen5", "amd").socket_link == AMD_SOCKET_LINK
    slow = build_topology(get_gpu("l20"), 8, "pcie", host_cpu="intel")
    assert _rates(slow, [(0, 4), (2, 6)]) == [pytest.approx(5e9), pytest.approx(5e9)]


def test_ulysses_slows_under_old_nccl_on_amd_while_the_ring_does_not() -> None:
    wl = Workload(get_model("pixart"), 1024, 1024, 4)
    gpu = get_gpu("l20")
    new = build_topology(gpu, 4, "pcie")
    old = build_topology(gpu, 4, "pcie", nccl="2.22")
    uly = ParallelConfig(4, 1, 1, 0, ulysses=4)
    ring = ParallelConfig(4, 1, 1, 0, ring=4)
    assert evaluate(wl, uly, gpu, old).latency_s > 1.5 * evaluate(wl, uly, gpu, new).latency_s
    r_old, r_new = evaluate(wl, ring, gpu, old).latency_s, evaluate(wl, ring, gpu, new).latency_s
    assert r_old == pytest.approx(r_new, rel=0.02)


def test_unknown_nccl_or_host_cpu_is_refused() -> None:
    from sim.errors import UserError

    with pytest.raises(UserError, match="--nccl"):
        build_topology(get_gpu("l20"), 8, "pcie", nccl="2.18")
    with pytest.raises(UserError, match="--host-cpu"):
        build_topology(get_gpu("l20"), 8, "pcie", host_cpu="arm")


def _ring_run(topo, overlaps: bool) -> tuple[float, list]:
    """Latency (s) and rank 0's trace rows of PixArt ring4 at 2048 px on ``topo``, with the
    ring's exchange overlapping its attention or not."""
    wl = Workload(get_model("pixart"), 2048, 2048, 4, text_encoder=False, vae=False)
    topo.graph.graph["ring_overlaps"] = overlaps
    pred = evaluate(wl, ParallelConfig(4, ring=4), GPUS["a100-sxm-80g"], topo, exact=True)
    return pred.latency_s, [r for r in pred.trace.rows if r.rank == 0]


def test_ring_exchange_runs_before_its_attention_on_nvlink_and_under_it_on_pcie() -> None:
    from sim.hardware import RING_EXCHANGE_OVERLAPS

    assert RING_EXCHANGE_OVERLAPS == {"nvlink": False, "pcie": True}
    assert build_topology(GPUS["l20"], 4, "pcie").ring_overlaps
    nv = build_topology(GPUS["a100-sxm-80g"], 4, "nvlink")
    assert not nv.ring_overlaps
    serial, rows = _ring_run(nv, False)
    exchanges = 0.0
    for i, r in enumerate(rows):
        if r.op.startswith(OpKind.RING_KV):
            exchanges += r.end_s - r.start_s
            attention = next(x for x in rows[i + 1:] if x.op == OpKind.BLOCKS)
            assert attention.start_s >= r.end_s - 1e-12  # once the exchange is over
    overlapped, rows = _ring_run(nv, True)
    assert any(x.start_s < r.end_s - 1e-9 for i, r in enumerate(rows)
               if r.op.startswith(OpKind.RING_KV)
               for x in rows[i + 1:i + 2] if x.op == OpKind.BLOCKS)  # under the exchange
    assert overlapped < serial
    # Serial costs at most the exchanges on top (overlapping also slows the attention).
    assert serial <= overlapped + exchanges + 1e-9


def test_ulysses_layout_copies_cost_four_bytes_of_gpu_memory_per_byte_sent() -> None:
    from sim.engine import ULYSSES_COPY_BYTES_PER_BYTE

    topo = build_topology(GPUS["a100-sxm-80g"], 8, "nvlink")
    nbytes = 32e6
    _, _, with_copies = collective_call(topo, OpKind.ALL_TO_ALL, list(range(8)), nbytes)
    _, _, reduce = collective_call(topo, OpKind.ALL_REDUCE, list(range(8)), nbytes)
    topo.graph.graph["memory_bandwidth"] = 0.0  # as between CPU processes: no such term
    _, _, bare = collective_call(topo, OpKind.ALL_TO_ALL, list(range(8)), nbytes)
    assert with_copies - bare == pytest.approx(
        ULYSSES_COPY_BYTES_PER_BYTE * nbytes / GPUS["a100-sxm-80g"].mem_bandwidth)
    _, _, reduce_bare = collective_call(topo, OpKind.ALL_REDUCE, list(range(8)), nbytes)
    assert reduce == reduce_bare  # only the all-to-all has the copies


def test_ring_merges_lengthen_the_attention_by_their_memory_traffic() -> None:
    from sim.cost.roofline import RooflineCost
    from sim.engine import RING_MERGE_BYTES_PER_ELEMENT, ring_merge_seconds
    from sim.schedule import Collective, Tag
    from sim.strategies import build_schedule

    gpu = GPUS["a100-sxm-80g"]
    topo = build_topology(gpu, 4, "nvlink")
    op = Collective(OpKind.RING_KV, (0, 1, 2, 3), 4_000_000, Tag("ring", 0, 0, 0),
                    asynchronous=True, count=2)
    # 2 rotations x 3 steps; 1e6 output elements of 2 bytes (K and V: 4 MB).
    expected = 2 * 3 * (RING_MERGE_BYTES_PER_ELEMENT + 2) * 1e6 / gpu.mem_bandwidth
    assert ring_merge_seconds(topo, op, 2) == pytest.approx(expected)
    assert ring_merge_seconds(build_topology(get_gpu("cpu"), 4, "pcie"), op, 4) == 0.0
    # In a run, each attention row after a rotation lasts its compute plus the merges
    # exactly (the overlap slowdown off, so that nothing else lengthens it).
    topo.graph.graph["overlap_slowdown"] = 1.0
    wl = Workload(get_model("pixart"), 1024, 1024, 4, text_encoder=False, vae=False)
    cfg = ParallelConfig(4, ring=4)
    ops = build_schedule(wl, cfg).ranks[0]
    cost = RooflineCost(wl, gpu)
    rows = [r for r in evaluate(wl, cfg, gpu, topo, exact=True).trace.rows if r.rank == 0]
    ring_ops = [o for o in ops if getattr(o, "kind", None) == OpKind.RING_KV]
    attn = [o for o in ops if getattr(o, "part", None) == "attn"]
    attn_rows = [r for r in rows if r.op == OpKind.BLOCKS][1::2]  # proj, attn alternate
    assert len(attn_rows) == len(attn) == len(ring_ops)
    for o, ring, r in zip(attn, ring_ops, attn_rows, strict=True):
        merge = ring_merge_seconds(topo, ring, wl.dtype_bytes)
        assert merge > 0
        assert r.end_s - r.start_s == pytest.approx(cost.compute_time(o) + merge, rel=1e-9)
