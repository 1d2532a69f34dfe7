"""In-process checks of the executor's parts: stale K,V attention, band embedding, per-patch
schedulers, message tags, stage pruning, local checkpoints, memory probe (issue 5)."""

from __future__ import annotations

import argparse

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from executor.comm import tag_number  # noqa: E402
from executor.diffusers_models import build_transformer  # noqa: E402
from executor.inputs import keep_stage, local_model, random_prompts  # noqa: E402
from executor.interpreter import StageExecutor  # noqa: E402
from executor.kv_attention import PatchWindow, StaleKVAttnProcessor  # noqa: E402
from executor.memory import PeakMemory  # noqa: E402
from sim.config import ParallelConfig, Workload  # noqa: E402
from sim.models import get_model  # noqa: E402
from sim.schedule import Recv, Send  # noqa: E402
from sim.strategies import build_schedule  # noqa: E402

TINY = get_model("pixart-tiny")


@pytest.fixture(scope="module")
def net():
    return build_transformer(TINY, 256, seed=0)


def _schedule(world: int, patches: int, warmup: int, steps: int = 4, res: int = 256):
    wl = Workload(TINY, res, res, steps, dtype="fp32", text_encoder=False, vae=False)
    return build_schedule(wl, ParallelConfig(gpus=world, pipefusion=world, patches=patches,
                                             warmup=warmup))


def test_stale_kv_processor_full_call_equals_stock_and_fresh_patches_equal_full(net):
    attn = net.transformer_blocks[0].attn1
    torch.manual_seed(1)
    x = torch.randn(2, 256, 64)
    with torch.no_grad():
        ref = diffusers.models.attention_processor.AttnProcessor2_0()(attn, x)
        window = PatchWindow(0, 256)
        proc = StaleKVAttnProcessor(window)
        assert torch.equal(proc(attn, x), ref)  # full image: same numbers, buffer filled
        assert proc.nbytes == 2 * 2 * 2 * 256 * 32 * 4
        # Same inputs patch by patch: the buffer holds exactly the fresh K,V, so each patch's
        # rows equal the full result.
        for lo, hi in ((0, 96), (96, 160), (160, 256)):
            window.offset = lo
            out = proc(attn, x[:, lo:hi])
            assert torch.allclose(out, ref[:, lo:hi], atol=1e-6, rtol=0)


def test_stale_kv_processor_uses_stale_slices_and_no_unwritten_memory(net):
    attn = net.transformer_blocks[0].attn1
    torch.manual_seed(2)
    old, new = torch.randn(2, 256, 64), torch.randn(2, 256, 64)
    stock = diffusers.models.attention_processor.AttnProcessor2_0()
    with torch.no_grad():
        window = PatchWindow(0, 256)
        proc = StaleKVAttnProcessor(window)
        proc(attn, old)  # step t-1, full image
        window.offset = 0
        out = proc(attn, new[:, :128])  # step t, first patch: rows 128.. are still stale
        mixed = torch.cat([new[:, :128], old[:, 128:]], dim=1)
        expect = stock(attn, mixed)[:, :128]  # queries only depend on their own rows
        assert torch.allclose(out, expect, atol=1e-6, rtol=0)
        assert not torch.allclose(out, stock(attn, new)[:, :128], atol=1e-4, rtol=0)
        # Without warmup the first patch sees only what has been written: itself.
        fresh = StaleKVAttnProcessor(PatchWindow(0, 256))
        assert torch.allclose(fresh(attn, new[:, :64]), stock(attn, new[:, :64]),
                              atol=1e-6, rtol=0)


def test_band_embedding_equals_rows_of_full_embedding():
    net = build_transformer(TINY, 256, seed=0)  # own copy: the executor installs processors
    sched = _schedule(world=2, patches=3, warmup=1)
    stage = StageExecutor(net, sched, 0, random_prompts(TINY, 0), seed=0, guidance_scale=4.5,
                          scheduler=diffusers.DPMSolverMultistepScheduler(),
                          device=torch.device("cpu"), dtype=torch.float32)
    with torch.no_grad():
        full = net.pos_embed(torch.cat([stage.latent] * 2))
        cols = sched.token_cols
        for j in range(sched.patches):
            stage.embed(0, j)
            t0 = sched.patch_row_offset(j) * cols
            assert stage.h.shape == (2, sched.patch_tokens(j), 64)
            assert torch.allclose(stage.h, full[:, t0:t0 + sched.patch_tokens(j)],
                                  atol=1e-6, rtol=0)


def test_per_patch_dpm_solver_equals_full_latent_step():
    steps = 6
    full = diffusers.DPMSolverMultistepScheduler()
    full.set_timesteps(steps)
    parts = []
    for _ in range(3):
        s = diffusers.DPMSolverMultistepScheduler()
        s.set_timesteps(steps)
        parts.append(s)
    bands = [(0, 10), (10, 21), (21, 32)]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 32, 32, generator=g)
    xs = [x[:, :, lo:hi].clone() for lo, hi in bands]
    for t in full.timesteps:
        eps = torch.randn(1, 4, 32, 32, generator=g)
        x = full.step(eps, t, x, return_dict=False)[0]
        xs = [s.step(eps[:, :, lo:hi].contiguous(), t, xp, return_dict=False)[0]
              for s, (lo, hi), xp in zip(parts, bands, xs)]
    assert torch.equal(torch.cat(xs, dim=2), x)  # multistep history included, bit for bit


def test_tags_are_unique_per_peer_pair():
    wl = Workload(get_model("pixart-alpha"), 1024, 1024, 20, text_encoder=False, vae=False)
    sched = build_schedule(wl, ParallelConfig(gpus=8, pipefusion=8, patches=16, warmup=2))
    for ops in sched.ranks:
        seen: set = set()
        for op in ops:
            if isinstance(op, Send | Recv):
                peer = op.dst if isinstance(op, Send) else op.src
                key = (type(op).__name__, peer, tag_number(op.tag, 16, 28))
                assert key not in seen
                seen.add(key)
                assert 0 <= key[2] < 2**31


def test_keep_stage_drops_what_a_stage_never_uses():
    def params(m):
        return sum(p.numel() for p in m.parameters())

    whole = build_transformer(TINY, 256, seed=0)
    total = params(whole)
    middle = build_transformer(TINY, 256, seed=0)
    keep_stage(middle, 1, 2, is_first=False, is_last=False)
    assert middle.pos_embed is None and middle.proj_out is None
    assert isinstance(middle.transformer_blocks[0], torch.nn.Identity)
    assert not isinstance(middle.transformer_blocks[1], torch.nn.Identity)
    block = params(whole.transformer_blocks[0])
    assert params(middle) < total - 2 * block


def test_local_checkpoint_runs_like_the_registry_model(tmp_path, net):
    from executor.request import plan_run
    from executor.run import build_parser
    from executor.runtime import execute

    net.save_pretrained(tmp_path / "ckpt")
    m = local_model(tmp_path / "ckpt")
    assert (m.num_blocks, m.hidden, m.heads, m.caption_channels) == (4, 64, 2, 64)
    common = ["--resolution", "256", "--steps", "3"]
    results = []
    for src in (["--model", "pixart-tiny"], ["--model-dir", str(tmp_path / "ckpt")]):
        args = build_parser().parse_args(src + common)
        results.append(execute(plan_run(args, 1), args, 0, 1, 0))
    # Random prompt embeddings take their length from the model: 8 tokens for the registry
    # model, 120 for a checkpoint without one; give both the same file instead.
    prompts = random_prompts(TINY, 0)
    torch.save(prompts.as_dict(), tmp_path / "p.pt")
    lat = []
    for src in (["--model", "pixart-tiny"], ["--model-dir", str(tmp_path / "ckpt")]):
        out = tmp_path / f"lat{len(lat)}.pt"
        args = build_parser().parse_args(src + common + ["--prompt-embeds",
                                                         str(tmp_path / "p.pt"),
                                                         "--save-latents", str(out)])
        execute(plan_run(args, 1), args, 0, 1, 0)
        lat.append(torch.load(out))
    assert torch.equal(lat[0], lat[1])
    assert all(r["config"]["world_size"] == 1 for r in results)


def test_peak_memory_probe_sees_a_new_allocation():
    probe = PeakMemory(torch.device("cpu"))
    probe.reset()
    before = probe.peak_bytes()
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert probe.peak_bytes() >= before + 60 * 2**20
    del x
    assert probe.kind == "rss"


def test_plan_rejects_what_sim_rejects_with_the_same_message():
    from executor.request import plan_run
    from executor.run import build_parser
    from sim.errors import UserError

    args = build_parser().parse_args(["--model", "pixart-tiny", "--resolution", "256",
                                      "--patches", "99"])
    with pytest.raises(UserError) as ours:
        plan_run(args, 2)
    with pytest.raises(UserError) as theirs:
        _schedule(world=2, patches=99, warmup=1, steps=TINY.default_steps)
    assert str(ours.value) == str(theirs.value)
    assert isinstance(args, argparse.Namespace)


def test_every_pixart_strategy_is_accepted_and_other_ops_refused():
    from dataclasses import replace

    from executor.interpreter import unsupported_ops
    from sim.schedule import Collective, Tag

    wl = Workload(TINY, 256, 256, 2, dtype="fp32", text_encoder=False, vae=False)
    for degrees in (dict(pipefusion=2, patches=4, warmup=1), dict(ulysses=2), dict(ring=2),
                    dict(tensor=2), dict(cfg=2), dict(distrifusion=2, warmup=1),
                    dict(cfg=2, pipefusion=2, patches=2), dict(ulysses=2, ring=2)):
        world = 1
        for k in ("pipefusion", "ulysses", "ring", "tensor", "cfg", "distrifusion"):
            world *= degrees.get(k, 1)
        sched = build_schedule(wl, ParallelConfig(gpus=world, **degrees))
        assert unsupported_ops(sched) is None, degrees
    # MM-DiT's text stream between stages is performed (executor.mmdit); HunyuanDiT's long
    # skips between stages are not.
    sd3 = Workload(get_model("sd3-medium"), 256, 256, 2, dtype="fp32", text_encoder=False,
                   vae=False)
    assert unsupported_ops(build_schedule(sd3, ParallelConfig(2, pipefusion=2))) is None
    hunyuan = Workload(get_model("hunyuan-dit"), 256, 256, 2, dtype="fp32",
                       text_encoder=False, vae=False)
    assert "'skip'" in unsupported_ops(build_schedule(hunyuan, ParallelConfig(2, pipefusion=2)))
    # A collective no strategy of the executor performs.
    sched = build_schedule(wl, ParallelConfig(gpus=2, tensor=2))
    odd = Collective("reduce_scatter", (0, 1), 64, Tag("tensor", 0, -1, 0))
    sched = replace(sched, ranks=[ops + [odd] for ops in sched.ranks])
    assert "reduce_scatter" in unsupported_ops(sched)


def test_token_plan_gives_each_rank_the_same_elements_in_every_step():
    from executor.tokens import TokenPlan, count, to_image, to_tokens

    plan = TokenPlan(rows=6, cols=4, patch_rows=(2, 2, 2), seq=4)
    for s in range(4):
        # The whole image (a warmup step) is the union of the rank's runs of every patch.
        assert plan.owned(-1, s) == [r for j in range(3) for r in plan.owned(j, s)]
    every = sorted(r for s in range(4) for j in range(3) for r in plan.owned(j, s))
    assert every[0][0] == 0 and every[-1][1] == plan.full
    assert all(a[1] == b[0] for a, b in zip(every, every[1:]))  # a partition of the tokens
    assert sum(count(plan.owned(-1, s)) for s in range(4)) == plan.full
    x = torch.randn(1, 4, 12, 8)
    assert torch.equal(to_image(to_tokens(x, 2), 2, 6, 4), x)
    # Token (row 1, col 2) holds the 2x2 pixels at rows 2-3, columns 4-5.
    assert torch.equal(to_tokens(x, 2)[0, :, 1 * 4 + 2].reshape(4, 2, 2), x[0, :, 2:4, 4:6])


def test_online_softmax_merge_equals_attention_over_all_keys():
    import torch.nn.functional as F

    from executor.parallel_attention import attention_lse, merge

    torch.manual_seed(3)
    q = torch.randn(2, 3, 16, 8)
    k, v = torch.randn(2, 3, 40, 8), torch.randn(2, 3, 40, 8)
    acc = None
    for lo, hi in ((24, 40), (0, 10), (10, 24)):  # any order, as the ring delivers them
        acc = merge(acc, attention_lse(q, k[:, :, lo:hi], v[:, :, lo:hi]))
    assert torch.allclose(acc[0], F.scaled_dot_product_attention(q, k, v), atol=1e-6, rtol=0)


def test_memory_line_splits_the_peak_and_compares_like_with_like():
    from executor.summary import comparable_memory, memory_line

    def rank(i: int, model: float, loop: float) -> dict:
        return {"rank": i, "peak_memory_gb": 0.4 + model + loop, "baseline_memory_gb": 0.4,
                "weights_memory_gb": model, "loop_memory_gb": loop,
                "predicted_weights_gb": 0.001, "predicted_loop_gb": 0.002}

    ranks = [rank(0, 0.010, 0.003), rank(1, 0.012, 0.004)]
    cm = comparable_memory(ranks)
    assert cm["rank"] == 1 and cm["measured_gb"] == pytest.approx(0.016)
    line = memory_line({"peak_memory_gb": 0.416, "memory_kind": "rss",
                        "comparable_memory": cm})
    assert "0.416 GB (rss, rank 1) = baseline 0.400" in line
    assert "model 0.012 + loop 0.004" in line
    # The process baseline is not set beside the simulator's figure: model + loop is.
    assert "model + loop 0.016 GB against the simulator's 0.003 GB" in line
