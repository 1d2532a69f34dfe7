"""Engine: closed forms, link sharing, properties, determinism, broken schedules refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config import ParallelConfig, Workload
from sim.cost import RooflineCost
from sim.engine import Network, simulate
from sim.evaluate import evaluate
from sim.hardware import get_gpu
from sim.models import get_model
from sim.schedule import Compute, Recv, Schedule, ScheduleError, Send
from sim.strategies import build_schedule
from sim.topology import build_topology
from tests.conftest import free_links


class LinearCost:
    """Blocks cost ``tau`` per block for the whole image, proportional to the patch share;
    everything else is free. Makes equal stages with exactly known durations."""

    def __init__(self, full_tokens: int, tau: float) -> None:
        self.full = full_tokens
        self.tau = tau

    def compute_time(self, op: Compute) -> float:
        if op.kind != "blocks":
            return 0.0
        n_blocks = op.layers[1] - op.layers[0] + 1
        return self.tau * n_blocks * op.q_tokens / self.full

    def source(self, op: Compute) -> str:
        return "test"


def test_single_gpu_latency_is_sum_of_op_costs(pixart_1024: Workload) -> None:
    gpu = get_gpu("l40")
    cost = RooflineCost(pixart_1024, gpu)
    sched = build_schedule(pixart_1024, ParallelConfig(1))
    trace = simulate(sched, build_topology(gpu, 1), cost)
    expected = sum(cost.compute_time(op) for op in sched.ranks[0])
    assert trace.end_s == pytest.approx(expected, rel=1e-12)
    assert {r.op for r in trace.rows} >= {"text_encode", "embed", "blocks", "final",
                                          "scheduler_step", "vae_decode"}


@pytest.mark.parametrize("n,m,s,w", [(4, 4, 10, 1), (4, 8, 6, 0), (2, 8, 5, 2), (7, 8, 3, 1),
                                     (14, 16, 20, 1)])
def test_equal_stages_free_links_follow_closed_form(n: int, m: int, s: int, w: int) -> None:
    wl = Workload(get_model("pixart"), 1024, 1024, s, text_encoder=False, vae=False)
    tau = 1e-3  # seconds per block for the whole image
    cost = LinearCost(wl.tokens, tau)
    sched = build_schedule(wl, ParallelConfig(n, n, m, w))
    topo = free_links(build_topology(get_gpu("l40"), n))
    trace = simulate(sched, topo, cost)
    blocks = wl.model.num_blocks
    # Equal stages and equal patches: 28 blocks over n stages, 64 token rows over m patches.
    assert blocks % n == 0 and 64 % m == 0
    slot = tau * (blocks / n) / m  # one patch on one stage
    warm = w * tau * blocks  # a synchronous step runs every stage one after the other
    assert trace.end_s == pytest.approx(warm + (m * (s - w) + n - 1) * slot, rel=1e-9)


def test_bubble_fraction_matches_useful_fraction() -> None:
    # docs/design.md#pipeline-fill: once full the pipeline never drains; useful fraction
    # M*S / (M*S + N - 1).
    n, m, s = 4, 8, 10
    wl = Workload(get_model("pixart"), 1024, 1024, s, text_encoder=False, vae=False)
    cost = LinearCost(wl.tokens, 1e-3)
    sched = build_schedule(wl, ParallelConfig(n, n, m, 0))
    trace = simulate(sched, free_links(build_topology(get_gpu("l40"), n)), cost)
    from sim.metrics import compute_metrics

    met = compute_metrics(trace, n, s, 0)
    assert met.bubble_fraction == pytest.approx(1 - m * s / (m * s + n - 1), rel=1e-9)
    assert max(met.exposed_comm_s) == 0.0


def _transfer_times(pairs: list[tuple[int, int]], nbytes: float) -> list[float]:
    topo = build_topology(get_gpu("l40"), 8, "pcie")
    env = simpy.Environment()
    net = Network(env, topo)
    done: list[float] = [0.0] * len(pairs)
    for i, (a, b) in enumerate(pairs):
        net.transfer(a, b, nbytes, lambda i=i: done.__setitem__(i, env.now))
    env.run()
    return done


def test_socket_link_is_shared_fairly() -> None:
    from sim.hardware import HOST_BUSES

    gb = 1e9
    upi = HOST_BUSES["pcie-gen4"].socket_link
    alone = _transfer_times([(0, 4)], gb)[0]
    both = _transfer_times([(0, 4), (2, 6)], gb)
    lat = 15e-6
    assert alone == pytest.approx(gb / upi + lat, rel=1e-6)  # the socket link is the bottleneck
    assert both[0] == pytest.approx(gb / (upi / 2) + lat, rel=1e-6)  # halved when shared
    assert both[1] == pytest.approx(both[0])
    # Switch-mates (P2P) of different switches do not meet on any edge.
    apart = _transfer_times([(0, 1), (2, 3)], gb)
    assert apart[0] == pytest.approx(gb / 25e9 + lat, rel=1e-6)


def test_contention_ends_when_the_short_flow_finishes() -> None:
    # A 1 GB and a 0.5 GB flow share the socket link: both at half its rate until the short
    # one is done; the long one then runs alone at the full rate for its last 0.5 GB.
    from sim.hardware import HOST_BUSES

    upi = HOST_BUSES["pcie-gen4"].socket_link
    topo = build_topology(get_gpu("l40"), 8, "pcie")
    env = simpy.Environment()
    net = Network(env, topo)
    out = {}
    net.transfer(0, 4, 1e9, lambda: out.__setitem__("long", env.now))
    net.transfer(2, 6, 0.5e9, lambda: out.__setitem__("short", env.now))
    env.run()
    lat = 15e-6
    assert out["short"] == pytest.approx(0.5e9 / (upi / 2) + lat, rel=1e-6)
    assert out["long"] == pytest.approx(0.5e9 / (upi / 2) + 0.5e9 / upi + lat, rel=1e-6)


def test_deterministic(pixart_1024: Workload, l40_pcie8) -> None:
    cfg = ParallelConfig(8, 8, 8, 1)
    a = evaluate(pixart_1024, cfg, get_gpu("l40"), l40_pcie8)
    b = evaluate(pixart_1024, cfg, get_gpu("l40"), build_topology(get_gpu("l40"), 8, "pcie"))
    assert a.trace.rows == b.trace.rows
    assert a.as_dict() == b.as_dict()


_configs = st.tuples(st.sampled_from([2, 4, 8]), st.integers(1, 2), st.sampled_from([1024, 2048]),
                     st.integers(3, 8), st.integers(0, 2))


def _latency(n: int, mult: int, res: int, steps: int, warmup: int, bw_scale: float = 1.0,
             link: str = "pcie") -> float:
    gpu = get_gpu("l40" if link == "pcie" else "a100-sxm-80g")
    wl = Workload(get_model("pixart"), res, res, steps)
    topo = build_topology(gpu, n, link)
    topo.capacity = [c * bw_scale for c in topo.capacity]
    return evaluate(wl, ParallelConfig(n, n, n * mult, min(warmup, steps)), gpu, topo).latency_s


@settings(max_examples=20, deadline=None)
@given(_configs, st.floats(1.0, 50.0))
def test_more_bandwidth_is_never_slower(cfg: tuple, k: float) -> None:
    assert _latency(*cfg, bw_scale=k) <= _latency(*cfg) * (1 + 1e-12)


@settings(max_examples=20, deadline=None)
@given(_configs)
def test_more_steps_are_never_faster(cfg: tuple) -> None:
    n, mult, res, steps, warmup = cfg
    assert _latency(n, mult, res, steps + 1, warmup) >= _latency(n, mult, res, steps, warmup)


@settings(max_examples=20, deadline=None)
@given(_configs)
def test_more_warmup_is_never_faster(cfg: tuple) -> None:
    # Holds where a pipelined step beats a synchronous one: M <= 2N at 1024 px and above.
    # (With very many tiny patches a pipelined step can cost more than a full serial step,
    # and then more warmup really is faster.)
    n, mult, res, steps, warmup = cfg
    w = min(warmup, steps - 1)
    assert _latency(n, mult, res, steps, w + 1) >= _latency(n, mult, res, steps, w)


def test_nvlink_is_faster_than_pcie_for_the_same_gpu() -> None:
    gpu = get_gpu("a100-sxm-80g")
    wl = Workload(get_model("pixart"), 2048, 2048, 10)
    cfg = ParallelConfig(8, 8, 8, 1)
    pcie = evaluate(wl, cfg, gpu, build_topology(gpu, 8, "pcie")).latency_s
    nvl = evaluate(wl, cfg, gpu, build_topology(gpu, 8, "nvlink")).latency_s
    assert nvl < pcie


def test_rank_offset_and_partial_use_of_a_box(pixart_1024: Workload, l40_pcie8) -> None:
    gpu = get_gpu("l40")
    p4 = evaluate(pixart_1024, ParallelConfig(4, 4, 4, 1), gpu, l40_pcie8)
    assert {r.rank for r in p4.trace.rows} == {0, 1, 2, 3}
    smaller = replace(pixart_1024, steps=10)
    assert evaluate(smaller, ParallelConfig(4, 4, 4, 1), gpu, l40_pcie8).latency_s < p4.latency_s


class _MillisecondOps:
    """Every compute op takes 1 ms: host time shows as a later start of the first block."""

    def compute_time(self, op: Compute) -> float:
        return 1e-3

    def source(self, op: Compute) -> str:
        return "test"


def _cpu_topology(n: int, **tables: float):
    """``n`` CPU ranks whose edges carry a flat host-time table per keyword (``host``,
    ``host_coll``: seconds per message at every size)."""
    topo = build_topology(get_gpu("cpu"), n, "pcie")
    for _, _, d in topo.graph.edges(data=True):
        for name, t in tables.items():
            d[name] = ((1024, t), (1 << 20, t))
    return type(topo)(topo.graph, list(topo.gpu_nodes), topo.link, topo.nodes)


def test_host_time_of_a_message_is_charged_to_both_ranks() -> None:
    """A CPU transport's host time per message (profiles.links --busy, ``host_msg`` rows)
    delays the sender after it issues and the receiver after the data arrived."""
    from sim.schedule import Tag

    host = 3e-4
    topo = _cpu_topology(2, host=host)
    tag = Tag("hidden", 0, 0, 0)
    work = Compute("blocks", 0, 0, (0, 0), 100, 100)
    sched = Schedule("m", "test", 8, 8, 1, 0, 1, 1, 4, [(0, 0), (1, 1)], [1], 1,
                     ranks=[[Send(1, 4096, tag), work], [Recv(0, 4096, tag), work]])
    rows = {(r.rank, r.op): r for r in simulate(sched, topo, _MillisecondOps()).rows}
    wire = topo.route_latency(0, 1) + 4096 / topo.route_bandwidth(0, 1)
    assert rows[(0, "blocks")].start_s == pytest.approx(host)  # the sender issued, then computed
    assert rows[(1, "blocks")].start_s == pytest.approx(wire + host)  # arrival, then completion
    # Without the table (GPU transports) messages cost the ranks nothing.
    plain = build_topology(get_gpu("cpu"), 2, "pcie")
    rows = {(r.rank, r.op): r for r in simulate(sched, plain, _MillisecondOps()).rows}
    assert rows[(0, "blocks")].start_s == 0.0
    assert rows[(1, "blocks")].start_s == pytest.approx(wire)


def test_host_time_of_an_asynchronous_collective_is_charged_per_message() -> None:
    """On a CPU transport an asynchronous collective (the ring's K,V rotation, DistriFusion's
    gather) costs each rank the host time of every message it sends and receives, after it
    issues the call; a blocking one does not (its measured call holds the transport's work,
    the rank waiting)."""
    from sim.schedule import Collective, Tag, Wait

    host = 3e-4
    topo = _cpu_topology(3, host=host)
    work = Compute("blocks", 0, 0, (0, 0), 100, 100)
    group = (0, 1, 2)
    for kind, count in (("ring_kv", 2), ("all_gather", 1)):
        tag = Tag("kv", 0, -1, 0)
        coll = Collective(kind, group, 8192, tag, asynchronous=True, count=count)
        sched = Schedule("m", "test", 8, 8, 1, 0, 1, 1, 4, [(0, 0), (1, 1), (2, 2)], [1], 1,
                         ranks=[[coll, work, Wait(tag)] for _ in group])
        rows = {(r.rank, r.op): r for r in simulate(sched, topo, _MillisecondOps()).rows}
        # Ring: n - 1 = 2 steps per call, each one message out and one in.
        want = count * 2 * 2 * host
        for rank in group:
            assert rows[(rank, "blocks")].start_s == pytest.approx(want)
        blocking = Collective(kind, group, 8192, tag, count=count)
        sched = Schedule("m", "test", 8, 8, 1, 0, 1, 1, 4, [(0, 0), (1, 1), (2, 2)], [1], 1,
                         ranks=[[blocking, work] for _ in group])
        rows = {(r.rank, r.op): r for r in simulate(sched, topo, _MillisecondOps()).rows}
        call = rows[(0, kind)]
        assert rows[(0, "blocks")].start_s == pytest.approx(call.end_s)


def test_collectives_take_the_one_group_host_table_and_messages_the_split_one() -> None:
    """An asynchronous collective's messages share one process group in the executor, a
    point-to-point message travels on its direction's own group: where a topology has both
    tables (``host_coll`` and ``host_msg`` rows of a link profile), each kind of message is
    charged its own."""
    from sim.schedule import Collective, Tag, Wait

    p2p_host, coll_host = 2e-4, 7e-4
    topo = _cpu_topology(2, host=p2p_host, host_coll=coll_host)
    work = Compute("blocks", 0, 0, (0, 0), 100, 100)
    tag = Tag("kv", 0, -1, 0)
    coll = Collective("all_gather", (0, 1), 8192, tag, asynchronous=True)
    sched = Schedule("m", "test", 8, 8, 1, 0, 1, 1, 4, [(0, 0), (1, 1)], [1], 1,
                     ranks=[[coll, work, Wait(tag)] for _ in range(2)])
    rows = {(r.rank, r.op): r for r in simulate(sched, topo, _MillisecondOps()).rows}
    for rank in (0, 1):  # one message out, one in
        assert rows[(rank, "blocks")].start_s == pytest.approx(2 * coll_host)
    hidden = Tag("hidden", 0, 0, 0)
    sched = Schedule("m", "test", 8, 8, 1, 0, 1, 1, 4, [(0, 0), (1, 1)], [1], 1,
                     ranks=[[Send(1, 4096, hidden), work], [Recv(0, 4096, hidden), work]])
    rows = {(r.rank, r.op): r for r in simulate(sched, topo, _MillisecondOps()).rows}
    assert rows[(0, "blocks")].start_s == pytest.approx(p2p_host)


def test_host_seconds_interpolate_in_log_size() -> None:
    from sim.topology import host_seconds

    table = ((1024, 1e-4), (4096, 3e-4))
    assert host_seconds((), 5000) == 0.0
    assert host_seconds(table, 10) == 1e-4 and host_seconds(table, 1 << 30) == 3e-4
    assert host_seconds(table, 2048) == pytest.approx(2e-4)  # halfway in log size


# ---- broken schedules (issue 15: a strategy bug must not give a fast, wrong prediction) ------

def _pipefusion_2_stages() -> Schedule:
    wl = Workload(get_model("pixart"), 1024, 1024, 4, text_encoder=False, vae=False)
    return build_schedule(wl, ParallelConfig(2, 2, 2, 1))


def _without(sched: Schedule, rank: int, cls: type) -> Schedule:
    """``sched`` with the first op of type ``cls`` deleted from ``rank``."""
    ops = list(sched.ranks[rank])
    del ops[next(i for i, op in enumerate(ops) if isinstance(op, cls))]
    return replace(sched, ranks=[ops if r == rank else list(o) for r, o in enumerate(sched.ranks)])


def _run(sched: Schedule) -> None:
    simulate(sched, build_topology(get_gpu("l40"), 2), RooflineCost(
        Workload(get_model("pixart"), 1024, 1024, 4), get_gpu("l40")))


def test_a_receive_deleted_from_rank_1_is_refused() -> None:
    # Rank 1 goes on without the hidden states of step 0: nothing blocks, but the message is
    # left unreceived.
    sched = _without(_pipefusion_2_stages(), 1, Recv)
    send = next(i for i, op in enumerate(sched.ranks[0]) if isinstance(op, Send))
    with pytest.raises(ScheduleError, match=rf"rank 0, op {send} of \d+: Send\(dst=1, tag=Tag\("
                                            r"what='hidden', step=0, .*\): rank 1 never receives"):
        _run(sched)


def test_a_send_deleted_from_rank_0_is_refused() -> None:
    # Rank 1 waits forever for step 0's hidden states, and rank 0 for the latents they make.
    sched = _without(_pipefusion_2_stages(), 0, Send)
    with pytest.raises(ScheduleError, match=r"rank 0 is stuck at op \d+ of \d+: Recv\(src=1, .*; "
                                            r"rank 1 is stuck at op 1 of \d+: Recv\(src=0, tag="
                                            r"Tag\(what='hidden', step=0, patch=-1, layer=14\)\)"):
        _run(sched)
    with pytest.raises(ScheduleError, match="rank 0 does not send it"):
        sched.validate()  # what build_schedule would have said before any simulation


def test_a_deadlock_names_each_stuck_rank_and_its_op() -> None:
    # Rank 0 waits for step 0's latent before sending the hidden states that produce it.
    sched = _pipefusion_2_stages()
    ops = list(sched.ranks[0])
    recv = next(i for i, op in enumerate(ops) if isinstance(op, Recv))
    send = next(i for i, op in enumerate(ops) if isinstance(op, Send))
    ops.insert(send, ops.pop(recv))
    broken = replace(sched, ranks=[ops, list(sched.ranks[1])])
    broken.validate()  # the messages still match: only running it shows the cycle
    with pytest.raises(ScheduleError) as err:
        _run(broken)
    message = str(err.value)
    assert f"rank 0 is stuck at op {send} of {len(ops)}: Recv(src=1, tag=Tag(what='latent', " \
        "step=0, patch=-1, layer=-1))" in message
    assert "rank 1 is stuck at op 1 of " in message and "Recv(src=0, tag=Tag(what='hidden'" \
        in message
