"""The collectors: a --quick compute collection on a tiny config, and bad command lines."""

from __future__ import annotations

import dataclasses
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from profiles.collect import main
from profiles.grid import block_grid
from sim.config import ParallelConfig, Workload
from sim.cost.profile import ProfileCost
from sim.cost.profile_format import HOST_OPS, ComputeProfile, LinkProfile
from sim.evaluate import evaluate
from sim.hardware import GPUS
from sim.metrics import source_summary
from sim.models import get_model
from sim.stats import nearest_rank, quantile
from sim.topology import build_topology

ROOT = Path(__file__).resolve().parents[1]


def test_block_grid_is_patch_shapes() -> None:
    m = get_model("pixart-tiny")
    grid = block_grid(m, (256, 512), (1, 2, 3, 4, 64))
    # 256 px: 16 x 16 tokens; M = 3 bands of ceil(16/3) = 6 rows; M = 64 > 16 rows: skipped.
    assert grid[:4] == [(256, 256, 256), (256, 128, 256), (256, 96, 256), (256, 64, 256)]
    assert (512, 1024, 1024) in grid and (512, 352, 1024) in grid and len(grid) == 8


def test_quantile_rules_of_the_two_profilers() -> None:
    xs = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    # Compute profiles interpolate: position 0.25 * 5 = 1.25, a quarter from 2 to 4.
    assert quantile(xs, 0.25) == 2.5 and quantile(xs, 0.5) == 6.0 and quantile(xs, 1.0) == 32.0
    # Link profiles take the nearest rank: 1.25 -> rank 1, 3.75 -> rank 4; ties go even.
    assert nearest_rank(xs, 0.25) == 2.0 and nearest_rank(xs, 0.75) == 16.0
    assert nearest_rank([1.0, 2.0, 3.0], 0.25) == 1.0  # 0.5 rounds to the even rank 0
    assert quantile([5.0], 0.75) == nearest_rank([5.0], 0.75) == 5.0


def test_quick_collection_on_a_tiny_config(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    threads = torch.get_num_threads()
    out = tmp_path / "tiny.csv"
    rc = main(["--model", "pixart-tiny", "--device", "cpu", "--quick", "--resolutions",
               "256", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert torch.get_num_threads() == threads  # the collector restores the thread count
    prof = ComputeProfile.read(out)
    m = prof.meta
    assert (m["model"], m["device"], m["dtype"], m["threads"], m["quick"]) == (
        "pixart-tiny", "cpu", "fp32", 1, True)
    assert m["torch"] == torch.__version__ and m["diffusers"] and m["date"]
    assert "scaled_dot_product_attention" in m["attention_backend"]
    # Issue 17: the reference op's time on this machine, which a later use compares with.
    assert m["reference_op_s"] > 0 and "torch.mm" in m["reference_op"]
    shapes = {(s.op, s.q_tokens, s.kv_tokens) for s in prof.samples}
    for q in (256, 128, 64, 32):  # M = 1, 2, 4, 8 patches of a 256-token image
        assert ("block", q, 256) in shapes and ("attention", q, 256) in shapes
        for op in ("embed", "final", "scheduler_step"):
            assert (op, q, 256) in shapes
    for s in prof.samples:
        assert s.repeats == 3 and 0 < s.min_s <= s.median_s <= s.max_s
        assert s.batch == (1 if s.op == "scheduler_step" else 2)
    blocks = {s.q_tokens: s.median_s for s in prof.select("block")}
    # More query tokens, more work: a full image costs more than an eighth of it.
    assert blocks[256] > blocks[32]
    # The fresh profile drives a prediction whose blocks are all measured shapes.
    wl = Workload(get_model("pixart-tiny"), 256, 256, 3, "fp32")
    cpu = GPUS["cpu"]
    pred = evaluate(wl, ParallelConfig(gpus=2, pipefusion=2, patches=4, warmup=1), cpu,
                    build_topology(cpu, 2, "pcie"), ProfileCost(wl, cpu, out))
    assert set(source_summary(pred.trace)["blocks"]) == {"measured"}


def test_tensor_shards_are_timed_as_the_executor_cuts_them(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from executor.op_runner import ExecutorRunner

    m = get_model("pixart-small")  # 6 heads, MLP of 4 x 384 columns
    runner = ExecutorRunner(m, "cpu", "fp32", (256,), 0)
    fn = runner.block(256, 256, 256, shard=2)
    fn()
    ex = runner.executor(256, 256, None, 0, 2)
    blk = ex.blocks[0]
    # Rank 0 of 2: half the heads of both attentions and half the MLP's inner columns.
    assert (blk.attn1.heads, blk.attn2.heads) == (3, 3)
    assert blk.attn1.to_q.out_features == 192 and blk.ff.net[0].proj.out_features == 768
    assert blk.tensor_shard == (0, 2)
    # The whole block's executor is a different one, left whole.
    assert runner.executor(256, 256).blocks[0].attn1.heads == 6
    # A collection with --tensor-shards 2: whole and shard rows on the same grid, the shard's
    # told apart by its heads, and costed from them.
    out = tmp_path / "tp.csv"
    assert main(["--model", "pixart-small", "--quick", "--resolutions", "256", "--ops",
                 "block", "--tensor-shards", "2", "--no-curve", "--out", str(out),
                 "--no-progress"]) == 0
    prof = ComputeProfile.read(out)
    rows = {(s.heads, s.q_tokens) for s in prof.select("block")}
    assert rows == {(h, q) for h in (6, 3) for q in (256, 128, 64, 32)}
    assert prof.meta["tensor_shards"] == [2]
    wl = Workload(m, 256, 256, 3, "fp32")
    cpu = GPUS["cpu"]
    pred = evaluate(wl, ParallelConfig(gpus=2, tensor=2), cpu,
                    build_topology(cpu, 2, "pcie"), ProfileCost(wl, cpu, out))
    assert set(source_summary(pred.trace)["blocks"]) == {"measured"}


def test_quick_collection_of_an_mmdit_model_times_each_block_kind(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    out = tmp_path / "flux.csv"
    rc = main(["--model", "flux-tiny", "--device", "cpu", "--quick", "--resolutions", "256",
               "--patches", "1,4", "--out", str(out), "--no-progress"])
    assert rc == 0
    prof = ComputeProfile.read(out)
    assert prof.meta["attention_processor"] == "executor.mmdit.JointAttnProcessor"
    # Double-stream (joint) and single-stream blocks, each at the full image and a quarter.
    for kind in ("joint", "single"):
        assert {(s.q_tokens, s.kv_tokens) for s in prof.select("block", kind)} >= {
            (256, 256), (64, 256)}
    assert all(s.batch == 1 for s in prof.samples)  # Flux runs no guidance batch
    # A Flux prediction takes both kinds of blocks from the profile.
    wl = Workload(get_model("flux-tiny"), 256, 256, 3, "fp32", text_encoder=False, vae=False)
    cpu = GPUS["cpu"]
    pred = evaluate(wl, ParallelConfig(gpus=2, pipefusion=2, patches=4, warmup=1), cpu,
                    build_topology(cpu, 2, "pcie"), ProfileCost(wl, cpu, out))
    assert set(source_summary(pred.trace)["blocks"]) == {"measured"}
    assert pred.latency_s > 0


def collect_links(tmp_path: Path, *flags: str, timeout: float = 180) -> LinkProfile:
    """``profiles.links`` on gloo between two processes under torchrun, with ``flags``; the
    profile it wrote."""
    pytest.importorskip("torch")
    out = tmp_path / "links.csv"
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
         "profiles.links", "--backend", "gloo", *flags, "--repeats", "3", "--min-time", "0",
         "--out", str(out), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]
    return LinkProfile.read(out)


def test_link_collection_under_torchrun(tmp_path: Path) -> None:
    prof = collect_links(tmp_path, "--ops", "p2p,all_reduce,all_to_all", "--max-bytes",
                         "16KiB", "--factor", "4")
    assert prof.link_kind == "loopback" and prof.backend == "gloo"
    assert prof.meta["world_size"] == 2 and prof.meta["nodes"] == 1
    assert [s.nbytes for s in prof.select("p2p")] == [1024, 4096, 16384]
    for s in prof.samples:
        assert 0 < s.min_s <= s.median_s <= s.max_s and s.algbw_Bps == pytest.approx(
            s.nbytes / s.median_s, rel=1e-4)
        # The mean of the samples, which collectives are costed from (6 significant digits).
        assert s.min_s * (1 - 1e-5) <= s.mean_s <= s.max_s * (1 + 1e-5)
        if s.op == "all_reduce":
            assert s.busbw_Bps == pytest.approx(s.algbw_Bps, rel=1e-4)  # 2(n-1)/n = 1 at n=2
    fit = prof.fit("p2p")
    assert fit.regime in ("all", "small") and fit.bandwidth_Bps > 0
    assert prof.host_table() == ()  # host time per message is measured with --busy only


def test_link_collection_times_the_ring_rotation_and_gathers(tmp_path: Path) -> None:
    """The K,V rotation and the all-gather the executor makes are timed, load as collective
    tables and reach the engine's topology."""
    prof = collect_links(tmp_path, "--ops", "p2p,all_gather,ring_kv", "--max-bytes", "16KiB",
                         "--factor", "4")
    assert {s.op for s in prof.samples} == {"p2p", "all_gather", "ring_kv"}
    for op in ("all_gather", "ring_kv"):
        world, table = prof.collective_table(op)
        assert world == 2 and [n for n, _ in table] == [1024, 4096, 16384]
        assert all(t > 0 for _, t in table)
        assert prof.fit(op).bandwidth_Bps > 0
    from sim.cost.link_profile import CollectiveCurve, apply_link_profile
    from sim.hardware import GPUS
    from sim.topology import build_topology

    # The per-call means go through the monotone interpolation (noise that makes a larger
    # size faster is pooled), and that curve is what the engine's topology holds.
    assert [t for _, t in table] == [x.mean_s for x in prof.select(op)]
    topo = apply_link_profile(build_topology(GPUS["cpu"], 2, "pcie"), prof)
    assert topo.measured_collective(("ring_kv",), (0, 1), [(0, 1), (1, 0)], 4096) == \
        pytest.approx(CollectiveCurve(world, table, "")(4096), rel=1e-9)


def test_busy_link_collection_measures_host_time_per_message(tmp_path: Path) -> None:
    """``--busy`` on CPU ranks writes, per streamed size, one ``host_msg`` row (the two
    directions on separate process groups, as PipeFusion's messages travel) and one
    ``host_coll`` row (both on one group, as an asynchronous collective's), the host time a
    message costs each rank. Their magnitudes are timings, reported by the command in
    profiles/README.md, not asserted here: a unit test asserts that the rows are there and
    finite, and that messages cost some time in both layouts."""
    def measured(prof: LinkProfile) -> bool:
        # A 2 MiB copy through loopback cannot be free; only noise in the difference of two
        # means could hide every size's cost, so one recollection is allowed.
        return all(max(t for _, t in prof.host_table(op)) > 0 for op in HOST_OPS)

    prof = collect_links(tmp_path, "--ops", "p2p", "--max-bytes", "4KiB", "--busy",
                         timeout=300)
    for op in HOST_OPS:
        assert [n for n, _ in prof.host_table(op)] == [4096, 32768, 262144, 2 << 20]
        rows = prof.select(op)
        assert all(r.world == 2 and r.algbw_Bps == 0 and math.isfinite(r.median_s)
                   and r.mean_s is not None and math.isfinite(r.mean_s) for r in rows), rows
    if not measured(prof):
        prof = collect_links(tmp_path, "--ops", "p2p", "--max-bytes", "4KiB", "--busy",
                             timeout=300)
    assert measured(prof), [prof.host_table(op) for op in HOST_OPS]


def test_busy_link_collection_times_blocking_collectives_after_compute(tmp_path: Path) -> None:
    """On gloo, ``--busy`` times the blocking collectives one call per sample, each after
    every rank ran the reference op, as the executor's Ulysses, tensor and CFG calls follow
    compute; the asynchronous rows keep their own timing."""
    prof = collect_links(tmp_path, "--ops", "all_to_all,all_reduce", "--max-bytes", "4KiB",
                         "--busy", timeout=300)
    assert {s.op for s in prof.samples} == {"all_to_all", "all_reduce", "all_to_all_async",
                                            "all_reduce_async", "all_to_all_short",
                                            "all_reduce_short", *HOST_OPS}
    assert all(s.median_s > 0 for s in prof.samples if s.op not in HOST_OPS)
    assert "one call per sample after each rank ran the reference op" in prof.meta["timing"]
    short, reference = prof.stretches()
    assert 0 < short < reference  # seconds of the two stretches, as measured


def test_calls_after_compute_are_one_per_sample(tmp_path: Path, monkeypatch) -> None:
    """Every timed sample of ``after_compute`` is one call preceded by the reference op."""
    pytest.importorskip("torch")
    import torch.distributed as dist

    from profiles import links

    ran = {"compute": 0, "calls": 0}

    def counting_op():
        def run() -> None:
            ran["compute"] += 1
        return run

    monkeypatch.setattr(links, "_reference_op", counting_op)
    real = dist.all_reduce

    def counted(t, *a, **k):  # the op under test; the timer's own reductions use MAX
        if k.get("op") is None:
            ran["calls"] += 1
        return real(t, *a, **k)

    monkeypatch.setattr(dist, "all_reduce", counted)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        s = links.LinkSettings("gloo", "loopback", ("all_reduce",), (1024,), 5, 1, 0.0,
                               None, False, 1, False)
        samples, _ = links._measure(s, after_compute="reference")
    finally:
        dist.destroy_process_group()
    warmups = 3  # max(3, warmup) untimed calls on the first pass
    assert samples[0].repeats == ran["compute"] == ran["calls"] - warmups


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args,match", [
    (["profiles.collect", "--model", "nope"], "unknown model"),
    (["profiles.collect", "--model", "pixart", "--device", "tpu"], "--device"),
    (["profiles.collect", "--model", "pixart", "--dtype", "int8"], "--dtype"),
    (["profiles.collect", "--model", "pixart", "--resolutions", "250"], "multiple of 16"),
    (["profiles.collect", "--model", "pixart", "--resolutions", "a,b"], "integers"),
    (["profiles.collect", "--model", "pixart", "--repeats", "0"], "--repeats"),
    (["profiles.collect", "--model", "pixart", "--processes", "0"], "--processes"),
    (["profiles.collect", "--model", "pixart", "--bogus"], "unrecognized"),
    (["profiles.collect", "--model", "hunyuan", "--quick"], "supports"),
    (["profiles.collect", "--model", "pixart", "--threads", "2", "--clock", "cpu"],
     "--threads 1"),
    (["profiles.collect", "--model", "pixart", "--clock", "sundial"], "--clock"),
    (["profiles.collect", "--model", "pixart", "--tensor-shards", "5"], "divide"),
    (["profiles.collect", "--model", "pixart", "--tensor-shards", "2", "--ops", "embed"],
     "add block"),
    (["profiles.collect", "--model", "sd3-tiny", "--tensor-shards", "2"], "PixArt"),
    (["profiles.links", "--backend", "mpi"], "--backend"),
    (["profiles.links", "--backend", "nccl"], "--link-kind"),
    (["profiles.links", "--backend", "gloo", "--max-bytes", "lots"], "cannot read size"),
    (["profiles.links", "--backend", "gloo", "--host-rounds", "0"], "--host-rounds"),
    (["profiles.links", "--backend", "gloo"], "torchrun"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], match: str) -> None:
    r = run_cli(*args)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in r.stderr


def test_ascending_collection_never_times_a_size_after_a_larger_one(tmp_path: Path,
                                                                    monkeypatch) -> None:
    """``--order ascending`` (an experiment; the default is shuffled): every kind of call at
    one size before the next size, smallest first (blocking collectives, then the busy
    rows, then the host time per message where HOST_SIZES has the size), so no sample
    follows a larger transfer; the file still lists rows by kind, then size. In both orders
    the ping-pong is timed with no compute thread running, the asynchronous rows with it."""
    pytest.importorskip("torch")
    import torch.distributed as dist

    from profiles import links
    from sim.cost.profile_format import LinkSample

    seen: list[tuple[str, int]] = []
    busy_now = [False]
    busy_when: dict[str, set[bool]] = {}

    def fake_busy_thread():
        assert not busy_now[0]
        busy_now[0] = True
        return lambda: busy_now.__setitem__(0, False)

    def fake_measure(s, overlapped=False, after_compute=None, bar=None):
        out = []
        for op in s.ops:
            busy_when.setdefault(op if not overlapped else op + "_async", set()).add(
                busy_now[0])
            for n in s.sizes:
                name = op + "_async" if overlapped and op in links.COLLECTIVES else op
                if after_compute == "short":
                    name = op + "_short"
                seen.append((name, n))
                out.append(LinkSample(name, 2, n, 3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1.0, 1.0,
                                      1e-3))
        return out, {"world_size": 2}

    def fake_host(sizes, rounds):
        assert rounds == 4  # the settings' own, as --host-rounds sets it
        seen.extend(("host_msg", n) for n in sizes)
        return [LinkSample(op, 2, n, 3, 1e-4, 1e-4, 1e-4, 1e-4, 1e-4, 0.0, 0.0, 1e-4)
                for n in sizes for op in HOST_OPS]

    monkeypatch.setattr(links, "_measure", fake_measure)
    monkeypatch.setattr(links, "_host_overhead", fake_host)
    monkeypatch.setattr(links, "_busy_thread", fake_busy_thread)
    sizes = (1024, 16384, 1 << 20, 16 << 20)
    s = links.LinkSettings("gloo", "loopback", ("p2p", "all_to_all"), sizes, 3, 1, 0.0,
                           None, False, 1, True, "ascending", 4)
    assert links.parse(["--backend", "gloo"]).order == "shuffled"
    assert links.parse(["--backend", "gloo"]).host_rounds == links.HOST_ROUNDS
    assert links.parse(["--backend", "gloo", "--host-rounds", "4"]).host_rounds == 4
    assert links.parse(["--backend", "gloo", "--order", "ascending"]).order == "ascending"
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        samples, _ = links._collect(s)
        ascending = list(seen)
        seen.clear()
        shuffled_samples, _ = links._collect(dataclasses.replace(s, order="shuffled"))
        shuffled = list(seen)
        seen[:] = ascending
    finally:
        dist.destroy_process_group()
    # The shuffled order: every size of the blocking collectives, then every size of the busy
    # rows, then the host time at every HOST_SIZES; the rows end up listed the same way.
    assert shuffled == ([("all_to_all", n) for n in sizes]
                        + [("all_to_all_short", n) for n in sizes]
                        + [("p2p", n) for n in sizes]
                        + [("all_to_all_async", n) for n in sizes]
                        + [("host_msg", n) for n in links.HOST_SIZES])
    assert sorted((x.op, x.nbytes) for x in shuffled_samples) == \
        sorted((x.op, x.nbytes) for x in samples)
    ns = [n for _, n in seen]
    assert ns == sorted(ns), seen
    host = set(links.HOST_SIZES)
    want = {("all_to_all", n) for n in sizes} | {("all_to_all_async", n) for n in sizes} | \
        {("all_to_all_short", n) for n in sizes} | \
        {("p2p", n) for n in sizes} | {("host_msg", n) for n in host}
    assert sorted(seen) == sorted(want)  # each once
    # At one size: blocking first, then the busy rows, then the host time.
    at_16k = [k for k, n in seen if n == 16384]
    assert at_16k == ["all_to_all", "all_to_all_short", "p2p", "all_to_all_async"]
    assert [k for k, n in seen if n == 2 << 20] == ["host_msg"]
    assert busy_when == {"all_to_all": {False}, "p2p": {False}, "all_to_all_async": {True}}
    assert not busy_now[0]  # stopped after the busy rows
    kinds = ["all_to_all", "all_to_all_short", "p2p", "all_to_all_async", *HOST_OPS]
    assert [(x.op, x.nbytes) for x in samples] == sorted(
        ((x.op, x.nbytes) for x in samples), key=lambda k: (kinds.index(k[0]), k[1]))


def test_ascending_link_collection_under_torchrun(tmp_path: Path) -> None:
    """The ascending order end to end on gloo: the same rows as the shuffled order (blocking,
    busy, host time per message), and the order recorded in the profile."""
    prof = collect_links(tmp_path, "--ops", "p2p,all_to_all", "--max-bytes", "4KiB",
                         "--busy", "--order", "ascending", timeout=300)
    assert prof.meta["order"] == "ascending"
    assert {s.op for s in prof.samples} == {"p2p", "all_to_all", "all_to_all_async",
                                            "all_to_all_short", *HOST_OPS}
    assert [s.nbytes for s in prof.select("all_to_all")] == [1024, 2048, 4096]
    assert [s.nbytes for s in prof.select("all_to_all_short")] == [1024, 2048, 4096]
    short, reference = prof.stretches()  # the two stretches the blocking rows followed
    assert 0 < short < reference
    for op in HOST_OPS:
        assert [n for n, _ in prof.host_table(op)] == [4096, 32768, 262144, 2 << 20]
    assert all(s.median_s > 0 for s in prof.samples if s.op not in HOST_OPS)


def test_short_rows_are_chains_of_stretch_and_call(tmp_path: Path, monkeypatch) -> None:
    """``after_compute="short"`` times chains of (short op, call) less the short ops alone,
    per call, as ``<op>_short`` rows; a chain no longer than its stretches (here a one-rank
    all_reduce, next to nothing, after a sleep whose length jitters) counts the floor, so
    every time stays positive."""
    pytest.importorskip("torch")
    import time

    import torch.distributed as dist

    from profiles import links

    ran = {"stretches": 0}

    def sleepy():
        def run() -> None:
            ran["stretches"] += 1
            time.sleep(2e-4)
        return run

    monkeypatch.setattr(links, "_short_op", sleepy)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        s = links.LinkSettings("gloo", "loopback", ("all_reduce",), (1024,), 4, 1, 0.0,
                               None, False, 1, False)
        samples, _ = links._measure(s, after_compute="short")
    finally:
        dist.destroy_process_group()
    (row,) = samples
    assert row.op == "all_reduce_short" and row.repeats == 4
    assert row.min_s >= links.CHAIN_FLOOR_S and row.median_s > 0
    # Each sample: CHAIN_CALLS stretches in the chain and as many alone.
    assert ran["stretches"] == 4 * 2 * links.CHAIN_CALLS


def test_host_time_is_the_median_round_so_one_stall_does_not_set_it() -> None:
    """The host time a message costs (``mean_s`` of the host rows) is, of the rounds, the
    median of each round's difference of means: a round with one 4 ms stall (a transport
    thread holding the core) moves that round's figure and the grand mean, not the figure
    charged, while a cost every round pays shows in full."""
    from profiles.links import per_message_seconds

    alone = [[1e-3] * 40 for _ in range(4)]
    streaming = [[1.6e-3] * 40 for _ in range(4)]  # 0.3 ms per message endpoint
    streaming[2][7] += 4e-3
    med, *rounds = per_message_seconds(alone, streaming)
    assert med == pytest.approx(0.3e-3)
    assert statistics.median(rounds) == pytest.approx(0.3e-3)
    assert rounds[2] == pytest.approx(0.35e-3)
    grand = (statistics.fmean(sum(streaming, [])) - statistics.fmean(sum(alone, []))) / 2
    assert grand == pytest.approx(0.3125e-3)
