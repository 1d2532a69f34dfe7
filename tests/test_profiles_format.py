"""The profile file format: round trips, bad files and shipped profiles (that the loader
imports no torch or numpy is checked with the rest of ``sim`` in ``test_layers``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.cost.profile_format import (
    HEADER_PREFIX,
    ComputeProfile,
    LinkProfile,
    ProfileError,
    Sample,
    slug,
)
from sim.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "profiles" / "data"


def small_profile() -> ComputeProfile:
    rows = [Sample("block", "cross", 2, 128, 256, 2, 5, 1.5e-3, 1.4e-3, 1.45e-3, 1.55e-3,
                   1.6e-3),
            Sample("embed", "", 2, 128, 256, 2, 5, 2e-4, 1.9e-4, 1.95e-4, 2.05e-4, 2.1e-4)]
    return ComputeProfile({"model": "pixart-tiny", "dtype": "fp32", "device": "cpu"}, rows)


def test_round_trip(tmp_path: Path) -> None:
    path = small_profile().write(tmp_path / "x.csv")
    text = path.read_text().splitlines()
    assert text[0].startswith(HEADER_PREFIX)
    assert text[1].startswith("op,variant,batch,q_tokens,kv_tokens,heads,repeats,median_s")
    back = ComputeProfile.read(path)
    assert back.samples == small_profile().samples
    assert back.meta["format"] == "ditsim-compute-profile/1"


@pytest.mark.parametrize("mutate,match", [
    (lambda t: "op,variant\nblock,cross\n", "not a ditsim profile"),
    (lambda t: t.replace("ditsim-compute-profile/1", "other/9"), "format"),
    (lambda t: t.replace("median_s", "middle_s"), "missing column 'median_s'"),
    (lambda t: t.replace("0.0015,", "fast,"), "not a number"),
    (lambda t: t.replace("0.0015,", "-0.0015,"), "non-positive"),
    (lambda t: t.splitlines()[0] + "\n" + t.splitlines()[1] + "\n", "no measurements"),
    (lambda t: t.replace('"model": ', '"modelname": '), "lacks 'model'"),
])
def test_bad_files_are_user_errors(tmp_path: Path, mutate, match: str) -> None:
    path = small_profile().write(tmp_path / "x.csv")
    path.write_text(mutate(path.read_text()))
    with pytest.raises(ProfileError, match=match):
        ComputeProfile.read(path)
    assert issubclass(ProfileError, UserError)


def test_missing_file_and_wrong_kind(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read"):
        ComputeProfile.read(tmp_path / "nope.csv")
    path = small_profile().write(tmp_path / "x.csv")
    with pytest.raises(ProfileError, match="link profile"):
        LinkProfile.read(path)


def test_slug() -> None:
    assert slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert slug("  AMD EPYC (tm) ") == "amd-epyc-tm"


@pytest.mark.parametrize("model", ["pixart-tiny", "pixart-small", "sd3-tiny", "flux-tiny"])
def test_shipped_cpu_profiles(model: str) -> None:
    paths = sorted(DATA.glob(f"cpu-*-t1_{model}_fp32.csv"))
    assert len(paths) == 1, paths
    prof = ComputeProfile.read(paths[0])
    m = prof.meta
    assert (m["model"], m["dtype"], m["device"], m["threads"]) == (model, "fp32", "cpu", 1)
    assert m["resolutions"] == [256, 384, 512] and not m["quick"] and m["clock"] == "thread"
    for key in ("device_name", "torch", "diffusers", "attention_backend", "date"):
        assert m[key]
    ops = {s.op for s in prof.samples}
    assert ops == {"block", "attention", "embed", "final", "scheduler_step", "condition"}
    blocks = prof.select("block")
    # Both full attention (q = kv) and PipeFusion patches (q = kv / M) at 256 and 1024 tokens.
    assert {(256, 256), (128, 256), (576, 576), (144, 576), (1024, 1024), (256, 1024),
            (32, 1024), (64, 64)} <= {(s.q_tokens, s.kv_tokens) for s in blocks}
    # Head-sharded attention shapes (Ulysses) are there too.
    assert any(s.heads < blocks[0].heads for s in prof.select("attention"))
    for s in prof.samples:
        assert 0 < s.min_s <= s.p25_s <= s.median_s <= s.p75_s <= s.max_s


@pytest.mark.parametrize("model", ["pixart-alpha", "sd3-medium", "flux-dev"])
def test_shipped_h200_profiles(model: str) -> None:
    """The GPU check's profiles (one H200, 2026-11-30) load, hold full-image and PipeFusion
    patch shapes at 1024 and 2048 px, and cost every op of a serial run from measurements."""
    import sim

    path = DATA / f"cuda-nvidia-h200_{model}_bf16.csv"
    prof = ComputeProfile.read(path)
    m = prof.meta
    assert (m["model"], m["dtype"], m["device"]) == (model, "bf16", "cuda")
    assert m["device_name"] == "NVIDIA H200" and m["resolutions"] == [1024, 2048]
    assert m["patches"] == list(range(1, 9)) and not m["quick"]
    tokens = {(s.q_tokens, s.kv_tokens) for s in prof.select("block")}
    assert {(4096, 4096), (16384, 16384), (2048, 4096), (2048, 16384)} <= tokens
    for s in prof.samples:
        assert 0 < s.min_s <= s.p25_s <= s.median_s <= s.p75_s <= s.max_s
    for px in (1024, 2048):
        pred = sim.predict(model=model, gpu="h200", gpus=1, resolution=px, steps=2,
                           text_encoder=False, vae=False, profile=str(path)).as_dict()
        sources = pred["cost_source"]
        assert set(sources) == {"blocks", "condition", "embed", "final", "scheduler_step"}
        assert all(set(v) == {"measured"} for v in sources.values()), sources


def test_host_floor_reads_host_bound_blocks() -> None:
    """benchmarks/host_floor.py divides the H200 profile's small-token block times by the
    block's dispatched operators, and keeps only rows whose GPU work is small."""
    import importlib.util
    import statistics

    spec = importlib.util.spec_from_file_location("host_floor",
                                                  ROOT / "benchmarks" / "host_floor.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.host_floor(str(DATA / "cuda-nvidia-h200_pixart-alpha_bf16.csv"), 0.15)
    assert r["rows"] and all(x["host_ops"] == 78 for x in r["rows"])
    assert max(x["q_tokens"] for x in r["rows"]) < 4096  # full 1024-px blocks are GPU-bound
    assert r["per_op_median_s"] == statistics.median(x["median_s"] / 78 for x in r["rows"])
    with pytest.raises(UserError, match="not a profile of a known GPU"):
        mod.host_floor(str(next(DATA.glob("cpu-*_pixart-tiny_fp32.csv"))), 0.15)


def test_gpu_block_shapes_compares_every_patch_shape() -> None:
    """benchmarks/gpu_block_shapes.py sets each full-image and PipeFusion patch block of the
    H200 profile beside the larger of the roofline's and the host's time."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_block_shapes",
                                                  ROOT / "benchmarks" / "gpu_block_shapes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.compare(str(DATA / "cuda-nvidia-h200_pixart-alpha_bf16.csv"))
    assert {(x["resolution"], x["kv_tokens"]) for x in r["rows"]} == {(1024, 4096),
                                                                     (2048, 16384)}
    assert len(r["rows"]) == 16  # M = 1..8 at each resolution
    for x in r["rows"]:
        assert x["predicted_s"] == max(x["roofline_s"], x["host_s"])
        assert x["rel_err"] == x["predicted_s"] / x["measured_s"] - 1


def test_profile_shipped_finds_the_gpu_model_and_dtype(capsys) -> None:
    """``--profile shipped`` costs from the file in profiles/data/ of that GPU, model (aliases
    resolved) and data type, and refuses with one line naming what is shipped otherwise."""
    import json

    from sim.predict import main

    args = ["--gpu", "h200", "--gpus", "1", "--steps", "2", "--no-text-encoder", "--no-vae",
            "--json"]
    main(["--model", "pixart", "--profile", "shipped", *args])
    shipped = json.loads(capsys.readouterr().out)
    path = DATA / "cuda-nvidia-h200_pixart-alpha_bf16.csv"
    main(["--model", "pixart-alpha", "--profile", str(path), *args])
    explicit = json.loads(capsys.readouterr().out)
    assert shipped["loop_s"] == explicit["loop_s"]
    assert shipped["cost_model"] == explicit["cost_model"]
    for bad in (["--gpu", "l40"], ["--gpu", "h200", "--dtype", "fp16"]):
        with pytest.raises(UserError, match="no shipped profile of pixart-alpha") as e:
            main(["--model", "pixart", "--gpus", "1", "--profile", "shipped", *bad])
        assert "pixart-alpha on h200 (bf16)" in str(e.value)  # what is shipped, named
