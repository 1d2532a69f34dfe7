"""The GPU check (issue 16): its dry run end to end on CPU, and the stage runner's rules (a
failed stage does not stop the next, a stage the budget cannot fit is skipped with a reason).

The dry run is what keeps the script known to work before a GPU is ever lent, so it runs in
CI (torch CPU and diffusers are installed there); it is skipped only where they are not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import gpu_check as gc  # noqa: E402


def test_dry_run_writes_every_result(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # One progress line per stage, then the table.
    for i, name in enumerate(gc.STAGE_NAMES, 1):
        assert f"[stage {i}/5] {name}:" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["stages"]}
    assert status == {"env": "ok", "profiles": "ok", "executor": "ok", "predict": "ok",
                      "xfuser": "skipped"}
    assert summary["exit_status"] == 0 and summary["stages_not_reached"] == []
    assert "xfuser not installed" in summary["stages"][4]["message"]

    env_json = json.loads((out / "env.json").read_text())
    assert env_json["mode"] == "dry-run" and env_json["torch"] and env_json["diffusers"]

    # The fresh profile loads with the simulator's reader and is the tiny model's; the
    # MM-DiT models are profiled through their tiny configurations too (issue 12), unless the
    # stage's budget ran out first, which is then said.
    from sim.cost.profile_format import ComputeProfile

    tiny = next((out / "profiles").glob("*_pixart-tiny_fp32.csv"))
    prof = ComputeProfile.read(tiny)
    assert (prof.model, prof.dtype, prof.meta["device"]) == ("pixart-tiny", "fp32", "cpu")
    assert {(s.q_tokens, s.kv_tokens) for s in prof.select("block")} >= {(256, 256),
                                                                         (128, 256)}
    for model, tiny_name in (("sd3-medium", "sd3-tiny"), ("flux-dev", "flux-tiny")):
        made = list((out / "profiles").glob(f"*_{tiny_name}_fp32.csv"))
        if made:
            assert ComputeProfile.read(made[0]).select("block")
        else:
            line = next(ln for ln in res.stdout.splitlines()
                        if ln.strip().startswith(f"{model}: skipped: "))
            assert "budget" in line, line

    ex = json.loads((out / "executor.json").read_text())
    assert (ex["model"], ex["resolution"], ex["steps"], ex["dtype"]) == (
        "pixart-tiny", 256, 4, "fp32")
    assert len(ex["executor_loop_s"]) == len(ex["pipeline_loop_s"]) == 2
    assert min(ex["executor_loop_s"] + ex["pipeline_loop_s"]) > 0
    # One process, fp32, same weights, embeddings and seed: the pipeline's latents exactly.
    assert ex["latents_finite"] and ex["latents_abs_max"] > 0
    assert ex["max_abs_latent_diff"] == 0.0

    pr = json.loads((out / "predict.json").read_text())
    assert pr["measured"]["executor_loop_s"] == ex["executor_median_s"]
    assert pr["roofline"]["loop_s"] > 0 and pr["profile"]["loop_s"] > 0
    assert pr["profile"]["file"] == f"profiles/{tiny.name}"
    # Every block time of the profile prediction came from the fresh profile.
    assert set(pr["profile"]["cost_source"]["blocks"]) <= {"measured", "interpolated"}
    assert pr["profile"]["rel_err"] == pytest.approx(
        pr["profile"]["loop_s"] / ex["executor_median_s"] - 1)
    log = (out / "log.txt").read_text()
    assert "profiles.collect pixart-tiny" in log and "exit status 0" in log


def _stage(name: str, fn) -> gc.Stage:
    return gc.Stage(name, name, fn)


def test_a_failed_stage_does_not_stop_the_next_and_fails_the_run(tmp_path: Path) -> None:
    ctx = gc.Context(tmp_path, gc.DRY_RUN, budget_s=60.0, echo=False)
    ran = []

    def boom(ctx: gc.Context, timeout_s: float) -> gc.Outcome:
        raise RuntimeError("no device")

    def fine(ctx: gc.Context, timeout_s: float) -> gc.Outcome:
        ran.append(timeout_s)
        return gc.Outcome(message="measured")

    results = gc.run_stages(ctx, (_stage("env", boom), _stage("predict", fine)))
    assert [r.status for r in results] == ["failed", "ok"]
    assert results[0].message.startswith("RuntimeError: no device")
    assert ran and ran[0] <= gc.DRY_RUN.stage_budget_s["predict"]
    assert gc.exit_status(results) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["exit_status"] == 1 and "profiles" in summary["stages_not_reached"]
    assert "Traceback" in (tmp_path / "log.txt").read_text()


def test_a_stage_the_budget_cannot_fit_is_skipped_with_its_reason(tmp_path: Path) -> None:
    ctx = gc.Context(tmp_path, gc.GPU, budget_s=30.0, echo=False)

    def never(ctx: gc.Context, timeout_s: float) -> gc.Outcome:
        raise AssertionError("must not start")

    def skip(ctx: gc.Context, timeout_s: float) -> gc.Outcome:
        return gc.Outcome("skipped", "not installed")

    # The GPU profile stage needs 60 s; 30 s are left.
    results = gc.run_stages(ctx, (_stage("profiles", never), _stage("xfuser", skip)))
    assert [r.status for r in results] == ["skipped", "skipped"]
    assert "budget left; the stage needs at least 60 s" in results[0].message
    assert gc.exit_status(results) == 0
    # A skip with no reason is not an honest skip.
    assert gc.exit_status([gc.StageResult("x", "skipped", 0.0, "")]) == 1


def test_bad_input_is_one_error_line_and_status_2(tmp_path: Path) -> None:
    for argv in (["--budget-s", "0"], ["--no-such-flag"]):
        res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"),
                              "--out", str(tmp_path), *argv], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 2 and res.stderr.startswith("error: ")
        assert len(res.stderr.strip().splitlines()) == 1


def test_kernel_and_block_part_benchmarks_run_dry(tmp_path: Path) -> None:
    """The follow-up GPU commands (README "GPU check"), dry on CPU: every kernel shape timed,
    every block kind of the three models split into classes that add up to its total."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    kernels = tmp_path / "kernels.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_kernels.py"), "--dry-run",
                    "--repeats", "2", "--out", str(kernels)], cwd=tmp_path, check=True,
                   capture_output=True, text=True, timeout=300)
    rows = json.loads(kernels.read_text())["rows"]
    assert {r["model"] for r in rows} == {"pixart-alpha", "sd3-medium", "flux-dev", "-"}
    assert all(r["seconds"] > 0 and r["of_peak"] > 0 for r in rows)
    # Both timings per shape: the device's own (no CUDA graph on CPU) and one eager call's.
    assert all(r["seconds_eager"] > 0 and r["graph"] is False for r in rows)
    parts = tmp_path / "parts.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_block_parts.py"),
                    "--dry-run", "--calls", "1", "--out", str(parts)], cwd=tmp_path,
                   check=True, capture_output=True, text=True, timeout=300)
    blocks = json.loads(parts.read_text())["blocks"]
    assert [(b["model"], b["kind"]) for b in blocks] == [
        ("pixart-tiny", "cross"), ("sd3-tiny", "joint"), ("flux-tiny", "joint"),
        ("flux-tiny", "single")]
    for b in blocks:
        assert b["classes"]["gemm"] > 0 and b["classes"]["attention"] > 0
        assert sum(b["classes"].values()) == pytest.approx(b["device_seconds_per_block"])
