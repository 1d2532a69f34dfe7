"""ProfileCost on synthetic profiles with known answers, the engine with a measured profile,
and link profiles applied to a topology."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sim.config import ParallelConfig, Workload
from sim.cost.interp import fit_regimes
from sim.cost.link_profile import apply_link_profile
from sim.cost.profile import ProfileCost
from sim.cost.profile_format import ComputeProfile, LinkProfile, LinkSample, Sample
from sim.errors import UserError
from sim.evaluate import evaluate
from sim.hardware import GPUS, LINKS
from sim.metrics import source_summary
from sim.models import get_model
from sim.schedule import Compute
from sim.topology import build_topology

DATA = Path(__file__).resolve().parents[1] / "profiles" / "data"
CPU = GPUS["cpu"]


# Known answers (seconds, batch 2): a block is a token-level part plus attention over q*kv.
def att(q: float, kv: float) -> float:
    return 2e-6 + 1e-9 * q * kv


def tok(q: float) -> float:
    return 1e-4 + 4e-7 * q


def block(q: float, kv: float) -> float:
    return tok(q) + att(q, kv)


def embed(q: float) -> float:
    return 5e-5 + 1e-7 * q


def sched_step(q: float) -> float:
    return 3e-5 + 1e-8 * q


LEVELS = (256, 576, 1024)
PATCHES = (1, 2, 4, 8, 16)


def sample(op: str, variant: str, batch: int, q: int, kv: int, t: float,
           heads: int = 2) -> Sample:
    return Sample(op, variant, batch, q, kv, heads, 5, t, t * 0.99, t * 0.995, t * 1.005,
                  t * 1.01)


def synthetic(model: str = "pixart-tiny", dtype: str = "fp32", in_block: float = 1.0
              ) -> ComputeProfile:
    """A profile whose blocks cost ``tok(q) + in_block * att(q, kv)`` (patches) while the
    standalone attention core costs ``att``: ``in_block`` > 1 mimics K,V evicted from cache
    inside a block."""
    rows = []
    for kv in LEVELS:
        for m in PATCHES:
            q = kv // m
            t = block(q, kv) if m == 1 else tok(q) + in_block * att(q, kv)
            rows.append(sample("block", "cross", 2, q, kv, t))
            rows.append(sample("attention", "self", 2, q, kv, att(q, kv)))
            rows.append(sample("embed", "", 2, q, kv, embed(q)))
            rows.append(sample("final", "", 2, q, kv, embed(q) / 2))
            rows.append(sample("scheduler_step", "", 1, q, kv, sched_step(q)))
        rows.append(sample("attention", "self", 2, kv, kv, att(kv, kv) / 2, heads=1))
    for q in sorted({kv // m for kv in LEVELS for m in PATCHES} - set(LEVELS)):
        rows.append(sample("block", "cross", 2, q, q, block(q, q)))
        rows.append(sample("attention", "self", 2, q, q, att(q, q)))
    meta = {"model": model, "dtype": dtype, "device": "cpu", "device_name": "synthetic",
            "threads": 1, "batch": 2}
    return ComputeProfile(meta, rows, "synthetic.csv")


def tiny_cost(**kw) -> ProfileCost:
    wl = Workload(get_model("pixart-tiny"), 512, 512, 8, "fp32")
    return ProfileCost(wl, CPU, synthetic(**kw))


def blocks(q: int, kv: int, batch: int = 2, layers: tuple[int, int] = (0, 0)) -> Compute:
    return Compute("blocks", 1, 0, layers, q, kv, batch)


def test_grid_points_are_measured_values() -> None:
    c = tiny_cost()
    for kv in LEVELS:
        for m in PATCHES:
            op = blocks(kv // m, kv)
            assert c.source(op) == "measured"
            assert c.compute_time(op) == pytest.approx(block(kv // m, kv), rel=1e-12)
    op = blocks(128, 256, layers=(0, 3))
    assert c.compute_time(op) == pytest.approx(4 * block(128, 256), rel=1e-12)


@pytest.mark.parametrize("q,kv", [
    (96, 256),     # between patches at a measured kv
    (40, 256),
    (192, 1024),
    (352, 1024),   # M = 3 at 512 px: ceil(32/3) rows of 32 tokens
    (128, 400),    # kv between the measured ones, both levels usable: blended
    (400, 784),    # kv between, only the upper level holds q: shifted by the attention fit
    (200, 700),
    (400, 400),    # full images between the measured ones: along the full-block curve
    (784, 784),
])
def test_interpolation_inside_the_range_matches_the_known_answer(q: int, kv: int) -> None:
    c = tiny_cost()
    op = blocks(q, kv)
    assert c.source(op) == "interpolated"
    # A kv shift ignored would be 10-40 % off here; a linear (not log-log) interpolation of
    # the per-kv curves or nearest-knot lookup several percent.
    assert c.compute_time(op) == pytest.approx(block(q, kv), rel=1e-2)


@pytest.mark.parametrize("q,kv", [(128, 400), (400, 784), (200, 700), (100, 300)])
def test_in_block_attention_scale_is_fitted(q: int, kv: int) -> None:
    wl = Workload(get_model("pixart-tiny"), 512, 512, 8, "fp32")
    c = ProfileCost(wl, CPU, synthetic(in_block=1.3))
    assert c.describe()["attention_scale"]["cross"] == pytest.approx(1.3, rel=1e-6)
    # Shifting a measured kv to another with the standalone attention alone would miss the
    # 30 % extra of the in-block attention, several percent of the block here.
    assert c.compute_time(blocks(q, kv)) == pytest.approx(tok(q) + 1.3 * att(q, kv), rel=1e-2)


def test_batch_is_folded_into_tokens() -> None:
    c = tiny_cost()
    # Batch 1 on 256 tokens is the profile's batch 2 on 128 tokens.
    assert c.compute_time(blocks(256, 1024, batch=1)) == pytest.approx(block(128, 1024))
    assert c.source(blocks(256, 1024, batch=1)) == "interpolated"


def test_a_cfg_half_is_costed_as_the_patch_with_its_rows() -> None:
    c = tiny_cost()
    # One image of the CFG pair on the full 1024-token image: the GEMM rows and attention
    # pairs of the profile's batch-2 patch of 512 tokens over 1024, which the synthetic
    # profile makes cost more than half the full block (its fixed part does not halve).
    op = blocks(1024, 1024, batch=1)
    assert c.compute_time(op) == pytest.approx(block(512, 1024), rel=1e-9)
    assert c.compute_time(op) > block(1024, 1024) / 2 * 1.01
    assert c.source(op) == "interpolated"


def test_a_tensor_shard_is_costed_as_the_block_on_its_share_of_rows() -> None:
    c = tiny_cost()
    # 1/2 of the heads and MLP columns on 1024 tokens: the work of a block on 512 of them.
    shard = Compute("blocks", 1, 0, (0, 1), 1024, 1024, 2, shard=2)
    assert c.compute_time(shard) == pytest.approx(2 * block(512, 1024), rel=1e-9)
    # Its pieces split that time in the roofline's proportions at the shard's shape.
    proj = Compute("blocks", 1, 0, (0, 1), 1024, 1024, 2, part="proj", shard=2)
    attn = Compute("blocks", 1, 0, (0, 1), 1024, 1024, 2, part="attn", shard=2)
    assert c.compute_time(proj) + c.compute_time(attn) == pytest.approx(
        c.compute_time(shard), rel=1e-9)


def test_a_measured_tensor_shard_is_costed_from_its_own_rows() -> None:
    # profiles.collect --tensor-shards 2: block rows with half of pixart-tiny's 2 heads, here
    # made 1.3 times the whole block's q/2 estimate so that the two paths cannot agree.
    prof = synthetic()
    shard = {(q, kv): 1.3 * block(q // 2, kv) for kv in LEVELS for q in (kv, kv // 2, kv // 4)}
    prof = ComputeProfile(prof.meta, prof.samples + [
        sample("block", "cross", 2, q, kv, t, heads=1) for (q, kv), t in shard.items()],
        "synthetic.csv")
    wl = Workload(get_model("pixart-tiny"), 512, 512, 8, "fp32")
    c = ProfileCost(wl, CPU, prof)
    op = Compute("blocks", 1, 0, (0, 1), 1024, 1024, 2, shard=2)
    assert c.compute_time(op) == pytest.approx(2 * shard[(1024, 1024)], rel=1e-12)
    assert c.source(op) == "measured"
    # Between the measured patch sizes: interpolated along the shard's own rows.
    mid = Compute("blocks", 1, 0, (0, 0), 384, 1024, 2, shard=2)
    lo, hi = shard[(256, 1024)], shard[(512, 1024)]
    assert c.source(mid) == "interpolated" and lo < c.compute_time(mid) < hi
    # The whole block is untouched by the shard rows, and a degree with no rows of its own
    # (4) falls back to the whole block on its share of the rows.
    assert c.compute_time(blocks(1024, 1024)) == pytest.approx(block(1024, 1024), rel=1e-12)
    four = Compute("blocks", 1, 0, (0, 0), 1024, 1024, 2, shard=4)
    assert c.compute_time(four) == pytest.approx(block(256, 1024), rel=1e-9)


def test_outside_the_range_falls_back_to_the_scaled_roofline() -> None:
    c = tiny_cost()
    q = kv = 4096
    got = c.compute_time(blocks(q, kv, layers=(0, 1)))
    ratio = block(1024, 1024) / c.roof.block_time(0, 1024, 1024, 2)
    assert got == pytest.approx(2 * c.roof.block_time(0, q, kv, 2) * ratio, rel=1e-12)
    assert c.source(blocks(q, kv)) == "roofline"
    assert any("outside the measured range" in n for n in c.describe()["notes"])
    # Below the smallest patch, the nearest measured shape sets the scale.
    small = c.compute_time(blocks(4, 256))
    ratio = block(16, 256) / c.roof.block_time(0, 16, 256, 2)
    assert small == pytest.approx(c.roof.block_time(0, 4, 256, 2) * ratio, rel=1e-12)


def test_a_profile_of_full_images_only_falls_back_with_a_note() -> None:
    """A profile holding one whole-image block and no patch levels (what a collection for
    two-process Ulysses, ring or tensor rows alone holds at one resolution): a patch lies
    outside it and is costed from the roofline scaled at that block, with a note naming the
    measured range (writing that note raised IndexError: no patch levels)."""
    one = synthetic()
    one.samples = [s for s in one.samples if s.q_tokens == s.kv_tokens == 256
                   and s.op != "attention"]
    c = ProfileCost(Workload(get_model("pixart-tiny"), 256, 256, 8, "fp32"), CPU, one)
    ratio = block(256, 256) / c.roof.block_time(0, 256, 256, 2)
    assert c.compute_time(blocks(128, 256)) == pytest.approx(
        c.roof.block_time(0, 128, 256, 2) * ratio, rel=1e-12)
    assert c.source(blocks(128, 256)) == "roofline"
    assert any("outside the measured range (q 256..256, kv 256..256 at batch 2)" in n
               for n in c.describe()["notes"])


def test_token_ops_and_unmeasured_ops() -> None:
    c = tiny_cost()
    e = Compute("embed", 0, 0, q_tokens=64, kv_tokens=256, batch=2)
    assert (c.compute_time(e), c.source(e)) == (pytest.approx(embed(64)), "measured")
    e = Compute("embed", 0, 0, q_tokens=100, kv_tokens=256, batch=2)
    assert c.source(e) == "interpolated"
    assert c.compute_time(e) == pytest.approx(embed(100), rel=5e-3)
    s = Compute("scheduler_step", 0, 0, q_tokens=300, kv_tokens=1024, batch=1)
    assert c.compute_time(s) == pytest.approx(sched_step(300), rel=5e-3)
    s = Compute("scheduler_step", 0, 0, q_tokens=4096, kv_tokens=4096, batch=1)
    assert c.source(s) == "roofline"
    # pixart-tiny has no text encoder or VAE in the registry: zero time, from the roofline.
    t = Compute("text_encode", -1, -1, batch=2)
    assert (c.compute_time(t), c.source(t)) == (0.0, "roofline")


def test_unmeasured_op_uses_the_profile_efficiency() -> None:
    wl = Workload(get_model("pixart-alpha"), 512, 512, 20, "fp32")
    c = ProfileCost(wl, CPU, synthetic(model="pixart-alpha"))
    op = Compute("vae_decode", -1, -1, batch=1)
    s = max(c.profile.select("block"), key=lambda s: s.q_tokens * s.kv_tokens)
    ratio = s.median_s / c.roof.block_time(0, s.q_tokens, s.kv_tokens, 2)
    assert c.compute_time(op) == pytest.approx(c.roof.compute_time(op) * ratio)
    assert c.source(op) == "roofline"


def test_mismatched_profile_is_a_user_error() -> None:
    wl = Workload(get_model("pixart-small"), 512, 512, 8, "fp32")
    with pytest.raises(UserError, match="measured for model pixart-tiny"):
        ProfileCost(wl, CPU, synthetic())
    wl = Workload(get_model("pixart-tiny"), 512, 512, 8, "bf16")
    with pytest.raises(UserError, match="fp32"):
        ProfileCost(wl, CPU, synthetic())


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    prof = synthetic()
    path = prof.write(tmp_path / "p.csv")
    back = ComputeProfile.read(path)
    assert back.meta["model"] == "pixart-tiny" and len(back.samples) == len(prof.samples)
    wl = Workload(get_model("pixart-tiny"), 512, 512, 8, "fp32")
    c = ProfileCost(wl, CPU, path)
    assert c.compute_time(blocks(352, 1024)) == pytest.approx(block(352, 1024), rel=5e-3)


def test_engine_with_the_shipped_cpu_profile() -> None:
    path = next(DATA.glob("cpu-*_pixart-tiny_fp32.csv"))
    wl = Workload(get_model("pixart-tiny"), 256, 256, 4, "fp32")
    cfg = ParallelConfig(gpus=2, pipefusion=2, patches=2, warmup=1)
    cost = ProfileCost(wl, CPU, path)
    pred = evaluate(wl, cfg, CPU, build_topology(CPU, 2, "pcie"), cost)
    summary = source_summary(pred.trace)
    # 256 px: kv = 256 tokens; warmup q = 256 and patches q = 128 are both on the grid.
    assert summary["blocks"] == {"measured": 2 * (1 + 3 * 2)}
    assert set(summary) == {"blocks", "embed", "final", "scheduler_step", "condition",
                            "text_encode", "vae_decode"}
    assert summary["text_encode"] == {"roofline": 2}
    assert summary["condition"] == {"measured": 2 * 4}  # every rank, every step
    assert pred.latency_s > 0
    rows = [r for r in pred.trace.rows if r.op == "blocks" and r.patch == 0 and r.rank == 0]
    assert rows[0].duration_s == pytest.approx(
        cost.compute_time(Compute("blocks", 1, 0, (0, 1), 128, 256, 2)))


# ---- link profiles -------------------------------------------------------------------------

def link_profile(kind: str = "loopback") -> LinkProfile:
    sizes = [1024 * 4**k for k in range(8)]
    times = [40e-6 + n / 3e9 for n in sizes]
    samples = [LinkSample("p2p", 2, n, 9, t, t, t, t, t, n / t, n / t)
               for n, t in zip(sizes, times)]
    meta = {"backend": "gloo", "link_kind": kind, "world_size": 2,
            "fits": {"p2p": fit_regimes(sizes, times)}}
    return LinkProfile(meta, samples, "links.csv")


def test_link_profile_overrides_matching_edges() -> None:
    topo = build_topology(CPU, 2, "pcie")
    new = apply_link_profile(topo, link_profile())
    assert new.route_latency(0, 1) == pytest.approx(40e-6, rel=1e-6)
    assert new.route_bandwidth(0, 1) == pytest.approx(3e9, rel=1e-6)
    # The input is left alone.
    assert topo.route_bandwidth(0, 1) == LINKS["loopback"].bandwidth
    # A message costs latency + size / bandwidth in the engine: check through a prediction.
    wl = Workload(get_model("pixart-tiny"), 256, 256, 3, "fp32")
    cfg = ParallelConfig(gpus=2, pipefusion=2, patches=2, warmup=1)
    pred = evaluate(wl, cfg, CPU, new)
    sends = [r for r in pred.trace.rows if r.op == "send"]
    for r in sends:
        assert r.duration_s == pytest.approx(40e-6 + r.nbytes / 3e9, rel=1e-6)


def test_link_profile_host_rows_reach_the_topology() -> None:
    prof = link_profile()
    assert prof.host_table() == ()
    assert apply_link_profile(build_topology(CPU, 2, "pcie"), prof).route_host(0, 1, 4096) == 0
    prof.samples += [LinkSample("host_msg", 2, n, 9, t, t, t, t, t, 0.0, 0.0)
                     for n, t in ((4096, 2e-4), (65536, -1e-5))]
    assert prof.host_table() == ((4096, 2e-4), (65536, 0.0))  # noise below zero is zero
    topo = apply_link_profile(build_topology(CPU, 2, "pcie"), prof)
    assert topo.route_host(0, 1, 1024) == pytest.approx(2e-4)
    assert topo.route_host(1, 0, 16384) == pytest.approx(1e-4)  # halfway in log size


def test_host_coll_rows_reach_the_topology_and_older_profiles_serve_both() -> None:
    """``host_coll`` rows (both directions on one group) become the collectives' host table
    beside ``host_msg``'s; a profile without them (timed before they existed, on one group)
    serves both kinds of message from its ``host_msg`` rows."""
    prof = link_profile()
    prof.samples += [LinkSample("host_msg", 2, 4096, 9, 2e-4, 2e-4, 2e-4, 2e-4, 2e-4, 0.0, 0.0,
                                3e-4)]
    old = apply_link_profile(build_topology(CPU, 2, "pcie"), prof)
    assert old.route_host_coll(0, 1, 4096) == old.route_host(0, 1, 4096) == pytest.approx(3e-4)
    prof.samples += [LinkSample("host_coll", 2, 4096, 9, 4e-4, 4e-4, 4e-4, 4e-4, 4e-4, 0.0,
                                0.0, 6e-4)]
    assert prof.host_table("host_coll") == ((4096, 6e-4),)
    topo = apply_link_profile(build_topology(CPU, 2, "pcie"), prof)
    assert topo.route_host(0, 1, 4096) == pytest.approx(3e-4)
    assert topo.route_host_coll(1, 0, 4096) == pytest.approx(6e-4)


def test_host_rows_are_charged_their_mean_where_recorded() -> None:
    """A run pays the sum of its iterations, so a host_msg row's difference of means is
    charged; the medians only in profiles older than the mean column."""
    prof = link_profile()
    prof.samples += [LinkSample("host_msg", 2, 4096, 9, 2e-4, 2e-4, 2e-4, 2e-4, 2e-4, 0.0, 0.0,
                                5e-4),
                     LinkSample("host_msg", 2, 65536, 9, 3e-4, 3e-4, 3e-4, 3e-4, 3e-4, 0.0, 0.0)]
    assert prof.host_table() == ((4096, 5e-4), (65536, 3e-4))


def test_link_profile_on_a_topology_without_that_link() -> None:
    topo = build_topology(GPUS["l40"], 4, "pcie")
    with pytest.raises(UserError, match="loopback"):
        apply_link_profile(topo, link_profile())
    # Naming the kind explicitly applies it there.
    new = apply_link_profile(topo, link_profile(), kind="pcie-gen4")
    assert new.route_bandwidth(0, 1) == pytest.approx(3e9, rel=1e-6)


def test_link_profile_regime_follows_the_message_size() -> None:
    sizes = [1024 * 4**k for k in range(8)]

    def t(n: int) -> float:
        return 20e-6 + n / 1e9 if n <= 65536 else 800e-6 + n / 4e9

    samples = [LinkSample("p2p", 2, n, 9, t(n), t(n), t(n), t(n), t(n), n / t(n), n / t(n))
               for n in sizes]
    prof = LinkProfile({"backend": "gloo", "link_kind": "loopback",
                        "fits": {"p2p": fit_regimes(sizes, [t(n) for n in sizes])}}, samples)
    topo = build_topology(CPU, 2, "pcie")
    small = apply_link_profile(topo, prof, nbytes=4096)
    large = apply_link_profile(topo, prof, nbytes=1 << 22)
    assert small.route_latency(0, 1) == pytest.approx(20e-6, rel=1e-6)
    assert large.route_latency(0, 1) == pytest.approx(800e-6, rel=1e-6)
    assert large.route_bandwidth(0, 1) == pytest.approx(4e9, rel=1e-6)


def test_link_regime_choice() -> None:
    prof = link_profile()
    assert prof.fit("p2p").regime == "all"
    assert prof.fit("p2p", 2048).regime == "small"
    assert prof.fit("p2p", 1 << 30).regime == "large"
    with pytest.raises(UserError, match="no fit"):
        prof.fit("all_reduce")


def test_shipped_link_profile_is_usable() -> None:
    path = next(DATA.glob("links_gloo_loopback_w2_cpu-*.csv"))  # the full-range one
    prof = LinkProfile.read(path)
    assert prof.link_kind == "loopback" and prof.meta["world_size"] == 2
    assert {s.op for s in prof.samples} == {"p2p", "all_reduce", "all_gather", "all_to_all"}
    sizes = [s.nbytes for s in prof.select("p2p")]
    assert min(sizes) == 1024 and max(sizes) == 256 * 1024 * 1024
    fit = prof.fit("p2p")
    assert fit.latency_s >= 0 and math.isfinite(fit.bandwidth_Bps) and fit.bandwidth_Bps > 0
    topo = apply_link_profile(build_topology(CPU, 2, "pcie"), path)
    assert topo.route_bandwidth(0, 1) == pytest.approx(fit.bandwidth_Bps)


def test_predict_cli_with_profiles_reports_sources(capsys) -> None:
    """--profile / --link-profile reach the engine, and the JSON says per op kind where each
    time came from; a missing file is one line and exit 2."""
    import json as _json

    from sim import predict
    from sim.cli import run_main

    data = Path(__file__).resolve().parents[1] / "profiles" / "data"
    prof = data / "cpu-amd-epyc-t1_pixart-small_fp32.csv"
    link = data / "links_gloo_loopback_w2_cpu-amd-epyc-t1.csv"
    argv = ["--model", "pixart-small", "--gpu", "cpu", "--gpus", "2", "--resolution", "512",
            "--steps", "4", "--patches", "4", "--dtype", "fp32", "--no-text-encoder",
            "--no-vae", "--json"]
    with pytest.raises(SystemExit):
        run_main(predict.main, argv)
    roof = _json.loads(capsys.readouterr().out)
    assert roof["cost_model"]["kind"] == "roofline"
    assert set(roof["cost_source"]["blocks"]) == {"roofline"}
    with pytest.raises(SystemExit):
        run_main(predict.main, argv + ["--profile", str(prof), "--link-profile", str(link)])
    got = _json.loads(capsys.readouterr().out)
    assert got["cost_model"]["kind"] == "profile"
    assert set(got["cost_source"]["blocks"]) <= {"measured", "interpolated"}
    assert got["latency_s"] != roof["latency_s"]
    with pytest.raises(SystemExit) as exc:
        run_main(predict.main, argv + ["--profile", "nope.csv"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "no such file" in err and err.count("\n") == 1


def test_profile_cost_splits_sequence_parallel_blocks() -> None:
    """Projection and attention pieces of a block add up to the profiled block."""
    from sim.config import Workload
    from sim.hardware import get_gpu
    from sim.models import get_model
    from sim.schedule import Compute

    data = Path(__file__).resolve().parents[1] / "profiles" / "data"
    wl = Workload(get_model("pixart-small"), 512, 512, 4, dtype="fp32")
    cost = ProfileCost(wl, get_gpu("cpu"), data / "cpu-amd-epyc-t1_pixart-small_fp32.csv")
    whole = Compute("blocks", 0, 0, (0, 3), 256, 1024, 2)
    proj = Compute("blocks", 0, 0, (0, 3), 256, 1024, 2, part="proj")
    attn = Compute("blocks", 0, 0, (0, 3), 256, 1024, 2, part="attn")
    assert cost.compute_time(proj) + cost.compute_time(attn) == pytest.approx(
        cost.compute_time(whole))
    assert 0 < cost.compute_time(attn) < cost.compute_time(whole)
    assert cost.source(proj) == "interpolated"


def test_cpu_profile_from_another_cpu_model_leaves_a_note() -> None:
    from sim.cost.profile import other_host, this_cpu

    meta = {"device": "cpu", "device_name": "Some Other CPU 9000", "model": "pixart-tiny",
            "date": "2026-01-01"}
    note = other_host(meta)
    assert note is not None and "Some Other CPU 9000" in note and this_cpu() in note
    assert "profiles.collect --model pixart-tiny --device cpu" in note
    assert other_host({**meta, "device_name": this_cpu()}) is None
    assert other_host({**meta, "device": "cuda"}) is None  # GPU profiles plan from anywhere
