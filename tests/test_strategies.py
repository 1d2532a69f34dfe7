"""Parallel strategies and hybrids: communication volumes and stale-buffer memory against the
closed forms of docs/design.md (communication per step, pipeline fill), collectives on the
topology, planner search, compare."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import compare, search
from sim.bounds import latency_lower_bound
from sim.cli import run_main
from sim.config import ParallelConfig, Workload
from sim.cost import RooflineCost
from sim.engine import simulate
from sim.errors import UserError
from sim.evaluate import evaluate
from sim.hardware import get_gpu
from sim.layout import AXES, RankLayout
from sim.models import get_model
from sim.schedule import Collective, Recv, Schedule, Send, Tag
from sim.strategies import build_schedule
from sim.topology import build_topology

PIX = get_model("pixart")
L, HS, B, BYTES = 28, 1152, 2, 2


def _wl(res: int = 1024, steps: int = 6, model=PIX) -> Workload:
    return Workload(model, res, res, steps)


def _bytes_per_step(cfg: ParallelConfig, res: int = 1024) -> int:
    gpu = get_gpu("a100-sxm-80g")
    topo = build_topology(gpu, cfg.gpus, "nvlink")
    return evaluate(_wl(res), cfg, gpu, topo).metrics.comm_bytes_per_step


@pytest.mark.parametrize("n", [2, 4, 8])
def test_communication_volume_closed_forms(n: int) -> None:
    p = PIX.image_tokens(1024)
    act = B * p * HS * BYTES  # B*p*hs*b
    # Tensor: 3 all-reduces per block (cross-attention); a ring all-reduce sends 2(n-1)/n.
    assert _bytes_per_step(ParallelConfig(n, tensor=n)) == pytest.approx(
        L * 3 * 2 * (n - 1) / n * act, rel=1e-6)
    # Ulysses: 4 all-to-alls of B*p*hs/N per block, each rank keeps 1/n of its input.
    assert _bytes_per_step(ParallelConfig(n, ulysses=n)) == pytest.approx(
        L * 4 * (n - 1) / n * act / n, rel=1e-6)
    # Ring: K,V blocks (2*B*p/N*hs) rotated n-1 times per block.
    assert _bytes_per_step(ParallelConfig(n, ring=n)) == pytest.approx(
        L * (n - 1) * 2 * act / n, rel=1e-6)
    # DistriFusion: ring all-gather of each rank's fresh K,V (2*B*p/N*hs) per block.
    assert _bytes_per_step(ParallelConfig(n, distrifusion=n, warmup=1)) == pytest.approx(
        L * (n - 1) * 2 * act / n, rel=1e-6)
    # PipeFusion: B*p*hs once per step per stage boundary.
    assert _bytes_per_step(ParallelConfig(n, n, 2 * n, 1)) == act


def test_cfg_parallel_all_gathers_the_latent_once_per_step() -> None:
    latent = 4 * 128 * 128 * BYTES  # C x H/8 x W/8 of one image
    assert _bytes_per_step(ParallelConfig(2, cfg=2)) == latent


def test_ulysses_pipefusion_hybrid_volume() -> None:
    # Each stage boundary moves the rank's 1/U share; Ulysses all-to-alls on the stage's blocks.
    p = PIX.image_tokens(1024)
    act_half = B * p * HS * BYTES  # whole patch set per step
    u, stages = 2, 2
    got = _bytes_per_step(ParallelConfig(4, stages, 4, 1, ulysses=u))
    a2a = (L // stages) * 4 * (u - 1) / u * act_half / u
    assert got == pytest.approx(a2a + act_half / u, rel=1e-6)


def _memory(cfg: ParallelConfig, res: int = 2048):
    gpu = get_gpu("h100-sxm")
    wl = _wl(res)
    return evaluate(wl, cfg, gpu, build_topology(gpu, cfg.gpus, "nvlink")).memory


def test_stale_buffer_closed_forms() -> None:
    p = PIX.image_tokens(2048)
    per_layer = 2 * B * p * HS * BYTES  # 2*B*p*hs*b
    for n in (2, 4):
        pf = _memory(ParallelConfig(n, n, 2 * n, 1))
        assert pf[0].kv_buffers == pytest.approx(L / n * per_layer)
        df = _memory(ParallelConfig(n, distrifusion=n, warmup=1))
        assert df[0].kv_buffers == pytest.approx(L * per_layer)
    # Sequence parallelism keeps no stale buffers; tensor parallelism splits the weights.
    assert _memory(ParallelConfig(4, ulysses=4))[0].kv_buffers == 0
    t4 = _memory(ParallelConfig(4, tensor=4))[0]
    assert t4.weights < _memory(ParallelConfig(4, ring=4))[0].weights / 3


def test_distrifusion_buffer_does_not_shrink_but_pipefusion_does() -> None:
    df = [_memory(ParallelConfig(n, distrifusion=n, warmup=1))[0].kv_buffers for n in (2, 4, 8)]
    pf = [_memory(ParallelConfig(n, n, n, 1))[0].kv_buffers for n in (2, 4, 8)]
    assert df[0] == df[1] == df[2]
    assert pf[0] > pf[1] > pf[2]


def test_distrifusion_holds_its_gathers_in_flight_until_the_next_step() -> None:
    # After the warmup every layer's asynchronous gather keeps a flattened copy of the
    # gathered K,V until the next step waits for it, beside the layer's concatenated full K,V
    # its attention reads; with warmup = steps every gather is blocking and only the latter
    # remains. The stale buffer itself is the same either way.
    p = PIX.image_tokens(2048)
    per_layer = 2 * B * p * HS * BYTES
    steps = _wl(2048).steps
    for n in (2, 4):
        base = _memory(ParallelConfig(n, distrifusion=n, warmup=1))[0]
        sync = _memory(ParallelConfig(n, distrifusion=n, warmup=steps))[0]
        assert base.kv_buffers == sync.kv_buffers == pytest.approx(L * per_layer)
        assert base.recv_buffers - sync.recv_buffers == pytest.approx(L * per_layer)
        # Blocking gathers leave the attended layer's full K,V and the last stage's three
        # fp32 latents (the DPM-Solver history).
        latent = PIX.latent_channels * p * PIX.patch_size**2 * 4
        assert sync.recv_buffers == pytest.approx(per_layer + 3 * latent)


def test_all_reduce_across_the_socket_link_runs_at_its_bandwidth() -> None:
    from sim.hardware import HOST_BUSES
    from sim.nccl import SIMPLE

    gpu = get_gpu("l40")
    nbytes = 800_000_000
    # The 8-ring crosses the socket link once each way (3 -> 4, 7 -> 0); inside one socket
    # every ring edge gets a whole PCIe link (P2P to the switch-mate, SHM to the next pair).
    for group, bw in (((0, 1, 2, 3, 4, 5, 6, 7), HOST_BUSES["pcie-gen4"].socket_link),
                      ((0, 1, 2, 3), 25e9)):
        topo = build_topology(gpu, 8, "pcie")
        sched = Schedule("pixart-alpha", "tensor", 1024, 1024, 1, 0, 1, 2, 2, [(0, 27)], [64],
                         64, ranks=[[] for _ in range(8)])
        for r in group:
            sched.ranks[r].append(Collective("all_reduce", group, nbytes, Tag("t", 0, -1, 0)))
        trace = simulate(sched, topo, RooflineCost(_wl(), gpu))
        n = len(group)
        lat = SIMPLE[0] + SIMPLE[1] * 2 * (n - 1)  # NCCL's Simple protocol for large calls
        assert trace.end_s == pytest.approx(2 * (n - 1) / n * nbytes / bw + lat, rel=1e-6)


def test_collectives_of_two_cfg_groups_share_the_socket_link() -> None:
    # Two concurrent 4-rank rings laid across sockets (0,4,1,5 / 2,6,3,7) each cross UPI twice
    # per direction; sharing halves what each gets compared with running alone.
    gpu = get_gpu("l40")

    def run(groups):
        env_sched = Schedule("pixart-alpha", "x", 1024, 1024, 1, 0, 1, 2, 2, [(0, 27)], [64], 64,
                             ranks=[[] for _ in range(8)])
        for k, g in enumerate(groups):
            for r in g:
                env_sched.ranks[r].append(Collective("all_gather", g, 10**9,
                                                     Tag("g", 0, k, 0)))
        topo = build_topology(gpu, 8, "pcie")
        return simulate(env_sched, topo, RooflineCost(_wl(), gpu)).end_s

    alone = run([(0, 4, 1, 5)])
    both = run([(0, 4, 1, 5), (2, 6, 3, 7)])
    assert both == pytest.approx(2 * alone, rel=0.01)


@pytest.mark.parametrize("kw,needle", [
    (dict(gpus=3, ulysses=3), "does not divide the 16 attention heads"),
    (dict(gpus=8, ulysses=4), "multiply to 4 but --gpus is 8"),
    (dict(gpus=4, distrifusion=2, ulysses=2), "combines only with --cfg"),
    (dict(gpus=4, cfg=4), "--cfg must be 1 or 2"),
    (dict(gpus=4, pipefusion=4, patches=3, ulysses=1), None),
    (dict(gpus=6, pipefusion=2, patches=5, ring=3), "split evenly over Ulysses x ring"),
    (dict(gpus=2, ulysses=2, patches=4), "--patches applies to PipeFusion"),
])
def test_invalid_combinations(kw, needle) -> None:
    from sim.config import validate

    if needle is None:
        validate(_wl(), ParallelConfig(**kw))
        return
    with pytest.raises(UserError, match=needle):  # some rules hold from construction on
        validate(_wl(), ParallelConfig(**kw))


def test_flux_has_no_cfg_batch() -> None:
    from sim.config import validate

    with pytest.raises(UserError, match="guidance is embedded"):
        validate(_wl(model=get_model("flux")), ParallelConfig(2, cfg=2))


def test_predict_flags_exit_2_on_broken_rules(capsys) -> None:
    from sim import predict

    for argv, needle in ((["--gpus", "3", "--ulysses", "3"], "attention heads"),
                         (["--gpus", "16", "--ring", "16", "--nodes", "2",
                           "--inter-node", "myrinet"], "invalid choice"),
                         (["--gpus", "8", "--ulysses", "8", "--resolution", "1000"],
                          "multiple of 16")):
        with pytest.raises(SystemExit) as exc:
            run_main(predict.main, ["--model", "pixart", *argv])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and needle in err and err.count("\n") == 1


@pytest.mark.parametrize("kw", [dict(ulysses=8), dict(ring=8), dict(tensor=8),
                                dict(cfg=2, ulysses=4), dict(pipefusion=2, ulysses=2, ring=2,
                                                             patches=2, warmup=1)])
def test_planner_mode_matches_per_block_schedule(kw) -> None:
    # Coarse ops plus periodic steps against the full per-block simulation.
    gpu = get_gpu("l40")
    topo = build_topology(gpu, 8, "pcie")
    wl = _wl(1024, steps=12)
    cfg = ParallelConfig(8, **kw)
    full = evaluate(wl, cfg, gpu, topo).latency_s
    fast = evaluate(wl, cfg, gpu, topo, fast=True).latency_s
    assert fast == pytest.approx(full, rel=0.01)


def test_lower_bound_never_exceeds_simulation() -> None:
    gpu = get_gpu("l40")
    topo = build_topology(gpu, 8, "pcie")
    wl = _wl(1024, steps=8)
    for cfg in search.candidates(wl, 8, [0, 1])[::7]:
        lb, _ = latency_lower_bound(wl, cfg, gpu, topo)
        assert lb <= evaluate(wl, cfg, gpu, topo, fast=True).latency_s * (1 + 1e-9), cfg


def test_pruned_search_shows_what_an_exhaustive_one_shows() -> None:
    gpu = get_gpu("l40")
    topo = build_topology(gpu, 8, "pcie")
    wl = _wl(1024, steps=8)
    kw = dict(top=5, per_family=2, workers=1)
    pruned = search.search(wl, gpu, topo, [0, 1], **kw)
    full = search.search(wl, gpu, topo, [0, 1], exhaustive=True, **kw)
    assert pruned.pruned > 0
    key = [(p.config, p.latency_s) for p in pruned.ranked[:5]]
    assert key == [(p.config, p.latency_s) for p in full.ranked[:5]]
    fam_p = [(p.config, p.latency_s) for p in search.best_per_family(pruned.ranked, 2)]
    fam_f = [(p.config, p.latency_s) for p in search.best_per_family(full.ranked, 2)]
    assert fam_p == fam_f


@settings(max_examples=15, deadline=None)
@given(st.sampled_from([dict(ulysses=4), dict(ring=4), dict(tensor=4),
                        dict(distrifusion=4, warmup=1), dict(cfg=2, pipefusion=2, patches=4,
                                                             warmup=1)]),
       st.floats(1.0, 20.0), st.integers(2, 6))
def test_monotone_in_bandwidth_and_steps(kw, k, steps) -> None:
    gpu = get_gpu("l40")
    cfg = ParallelConfig(4, **kw)

    def lat(bw: float, s: int) -> float:
        topo = build_topology(gpu, 4, "pcie")
        topo.capacity = [c * bw for c in topo.capacity]
        return evaluate(_wl(1024, s), cfg, gpu, topo).latency_s

    assert lat(k, steps) <= lat(1.0, steps) * (1 + 1e-12)
    assert lat(1.0, steps + 1) >= lat(1.0, steps)


def test_multi_node_keeps_sequence_parallelism_inside_a_node() -> None:
    gpu = get_gpu("l40")
    topo = build_topology(gpu, 16, "pcie", nodes=2)
    ranked = search.search(_wl(2048, steps=8), gpu, topo, [1], top=3, per_family=1).ranked
    best = ranked[0].config
    assert best.gpus == 16
    # Innermost layout: a sequence-parallel group of at most 8 ranks never leaves its node.
    assert best.ulysses * best.ring * best.tensor <= 8
    # And the same 8-rank Ulysses group placed across the two nodes (ranks 4..11) is slower
    # than inside one, over a 100 GbE network.
    gpu = get_gpu("l40")
    wl = _wl(2048, steps=4)
    topo = build_topology(gpu, 16, "pcie", nodes=2, inter_node="eth-100g")
    sched = build_schedule(wl, ParallelConfig(8, ulysses=8))
    cost = RooflineCost(wl, gpu)
    inside = simulate(sched, topo, cost).end_s
    across = simulate(sched, topo, cost, rank_offset=4).end_s
    assert across > inside


def test_compare_table_and_json(capsys) -> None:
    argv = ["--model", "pixart", "--gpu", "l40", "--gpus", "4", "--link", "pcie",
            "--resolutions", "512,1024", "--steps", "6"]
    with pytest.raises(SystemExit) as exc:
        run_main(compare.main, argv)
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for fam in ("serial", "pipefusion", "ulysses", "ring", "tensor", "distrifusion", "hybrid"):
        assert fam in out
    assert "512 px" in out and "1024 px" in out
    with pytest.raises(SystemExit):
        run_main(compare.main, argv + ["--json"])
    d = json.loads(capsys.readouterr().out)
    assert d["resolutions"] == [512, 1024]
    assert d["rows"]["ulysses"]["1024"]["config"]["ulysses"] == 4
    assert "cfg" in d["missing"]
    with pytest.raises(SystemExit) as exc:
        run_main(compare.main, argv[:-4] + ["--resolutions", "1000"])
    assert exc.value.code == 2


# Degrees small enough to enumerate, large enough that every axis has an odd and an even case.
LAYOUTS = [RankLayout(*d) for d in itertools.product((1, 2), (1, 3), (1, 2), (1, 2), (1, 3),
                                                     (1, 2))]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: "x".join(map(str, lay.degrees)))
def test_ranks_round_trip_through_coordinates(layout: RankLayout) -> None:
    seen = []
    for rank in range(layout.world):
        at = layout.coords(rank)
        assert all(0 <= x < n for x, n in zip(at, layout.degrees))
        assert layout.rank(*at) == rank
        assert layout.stage(rank) == at.stage
        seen.append(at)
    assert len(set(seen)) == layout.world
    assert [layout.rank(*at) for at in itertools.product(*map(range, layout.degrees))] == \
        list(range(layout.world))


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: "x".join(map(str, lay.degrees)))
def test_groups_of_an_axis_partition_the_ranks(layout: RankLayout) -> None:
    for axes in [(a,) for a in AXES] + [("ring", "ulysses"), ("ring", "ulysses", "tensor")]:
        size = 1
        for a in axes:
            size *= layout.degrees[AXES.index(a)]
        groups = layout.groups(*axes)
        members = [r for g in groups for r in g]
        assert sorted(members) == list(range(layout.world)), axes
        for g in groups:
            assert len(g) == size and list(g) == sorted(g)
            for rank in g:
                assert layout.group(rank, *axes) == g
                # Members differ from each other only on ``axes``.
                fixed = [x for a, x in zip(AXES, layout.coords(rank)) if a not in axes]
                assert fixed == [x for a, x in zip(AXES, layout.coords(g[0])) if a not in axes]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: "x".join(map(str, lay.degrees)))
def test_documented_layout_formula(layout: RankLayout) -> None:
    C, P, D, R, U, T = layout.degrees
    for c, p, d, r, u, t in itertools.product(*map(range, layout.degrees)):
        assert layout.rank(c, p, d, r, u, t) == ((((c * P + p) * D + d) * R + r) * U + u) * T + t
        if D == 1:  # hybrids
            assert layout.rank(c, p, d, r, u, t) == ((c * P + p) * R * U + r * U + u) * T + t
        if P == R == U == T == 1:  # DistriFusion
            assert layout.rank(c, p, d, r, u, t) == c * D + d


def test_layout_rejects_coordinates_outside_it() -> None:
    layout = RankLayout(cfg=2, stages=2)
    for bad in (dict(cfg=2), dict(stage=-1), dict(ring=1)):
        with pytest.raises(ValueError, match="outside"):
            layout.rank(**bad)
    with pytest.raises(ValueError, match="outside"):
        layout.coords(4)
    with pytest.raises(ValueError, match="unknown axis"):
        layout.group(0, "pipeline")


@pytest.mark.parametrize("kw", [dict(cfg=2, pipefusion=2, ulysses=2, patches=2, warmup=1),
                                dict(pipefusion=2, ring=2, tensor=2, patches=2),
                                dict(cfg=2, distrifusion=4, warmup=1)])
def test_schedules_talk_along_the_axes_of_their_layout(kw) -> None:
    # Collectives run over one axis group; point-to-point messages stay at the same sequence
    # position and CFG half, changing only the stage.
    cfg = ParallelConfig(8, **kw)
    sched = build_schedule(_wl(512, steps=3, model=get_model("hunyuan-dit")), cfg)
    layout = sched.layout
    assert layout == RankLayout.of(cfg) and layout.world == sched.world_size == 8
    axis_groups = {g for axes in [(a,) for a in AXES] + [("ring", "ulysses")]
                   for g in layout.groups(*axes)}
    for rank, ops in enumerate(sched.ranks):
        for op in ops:
            if isinstance(op, Collective):
                assert op.group in axis_groups and rank in op.group
            elif isinstance(op, Send | Recv):
                peer = op.dst if isinstance(op, Send) else op.src
                assert layout.coords(peer)._replace(stage=0) == \
                    layout.coords(rank)._replace(stage=0)


@pytest.mark.parametrize("name", ["sd3-tiny", "flux-tiny", "pixart-tiny"])
def test_ulysses_exchanges_carry_the_replicated_text_queries(name: str) -> None:
    """Per block the executor's Ulysses sends the queries and gets the outputs back with the
    text rows beside the image rows (each rank holds the whole text stream), and the keys and
    values with image rows only: 2 (n + t) + 2 n rows of the hidden width, per rank."""
    m = get_model(name)
    wl = Workload(m, 256, 256, 2, dtype="fp32", text_encoder=False, vae=False)
    sched = build_schedule(wl, ParallelConfig(2, ulysses=2))
    n = wl.tokens // 2  # this rank's image rows
    t = m.text_tokens if name != "pixart-tiny" else 0  # PixArt's text is cross-attention
    a2a = [op for op in sched.ranks[0] if isinstance(op, Collective)
           and op.kind == "all_to_all"]
    per_step = sum(op.nbytes * op.count for op in a2a) / wl.steps
    assert per_step == m.num_blocks * m.batch * (2 * (n + t) + 2 * n) * m.hidden * 4
