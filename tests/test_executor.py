"""The reference executor against diffusers itself, on CPU processes (issue 5).

Multi-process runs go through torchrun (``--standalone`` picks a free port) or plain
subprocesses with the torchrun environment; the several two-process configurations share one
launch (``executor.batch``) so the file stays well under two minutes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("torch.distributed")

from executor.run import main as run_main  # noqa: E402
from sim.config import ParallelConfig, Workload  # noqa: E402
from sim.errors import UserError  # noqa: E402
from sim.models import get_model  # noqa: E402
from sim.strategies import build_schedule  # noqa: E402
from sim.trace import COLUMNS, Trace  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL, RES, STEPS, SEED = "pixart-tiny", 256, 8, 0
BASE = f"--model {MODEL} --resolution {RES} --steps {STEPS} --seed {SEED}"
TOL = 1e-5  # of the largest latent magnitude: float32 rounding (issue 5)
HANG_GUARD_S = 240  # a broken executor must not hang the suite; not a timing assertion


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
              "DITSIM_EXECUTOR_FAULT"):
        env.pop(k, None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _torchrun(*args: str, nproc: int = 2, env: dict | None = None,
              new_session: bool = False, timeout: float | None = None
              ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, cwd=REPO, env=env or _env(), capture_output=True, text=True,
                          timeout=timeout or HANG_GUARD_S, start_new_session=new_session)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_ranks(args: list[str], world: int, fault: str) -> list[subprocess.Popen]:
    """``world`` plain processes with the environment torchrun would give them."""
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = _env(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, DITSIM_EXECUTOR_FAULT=fault)
        procs.append(subprocess.Popen([sys.executable, "-m", "executor.run", *args], cwd=REPO,
                                      env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def _rel_diff(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max())


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    """Final latents of diffusers' PixArtAlphaPipeline for the test workload."""
    return pipeline_reference()


def pipeline_reference() -> torch.Tensor:
    """Final latents of diffusers' PixArtAlphaPipeline for the test workload."""
    from executor.diffusers_models import build_transformer
    from executor.inputs import random_prompts
    from executor.reference import reference_latents, reference_pipeline

    model = get_model(MODEL)
    net = build_transformer(model, RES, seed=SEED)
    pipe = reference_pipeline(net)
    return reference_latents(pipe, random_prompts(model, SEED), SEED, STEPS, RES, RES)


TWO_PROC = {  # name -> extra options; all on two CPU processes
    "m1": "--patches 1 --warmup 1",
    "m4_w8": "--patches 4 --warmup 8",
    "m3_w8": "--patches 3 --warmup 8",
    "m4_w1": "--patches 4 --warmup 1",
    "m4_w2": "--patches 4 --warmup 2",
    "m4_w4": "--patches 4 --warmup 4",
}


@pytest.fixture(scope="module")
def two_process(tmp_path_factory) -> dict[str, tuple[torch.Tensor, dict]]:
    """Every two-process configuration in one torchrun launch: name -> (latents, JSON)."""
    out = tmp_path_factory.mktemp("two_proc")
    runs = [f"{BASE} {opts} --save-latents {out / name}.pt" for name, opts in TWO_PROC.items()]
    runs[0] += f" --trace {out / 'm1.csv'}"
    proc = _torchrun("-m", "executor.batch", str(out), *runs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = {}
    for i, name in enumerate(TWO_PROC):
        summary = json.loads((out / f"run-{i}.json").read_text())
        result[name] = (torch.load(out / f"{name}.pt"), summary)
    result["trace"] = Trace.read_csv(out / "m1.csv")
    return result


# ---- correctness against diffusers ---------------------------------------------------------
def test_one_process_cli_matches_diffusers(reference, tmp_path):
    lat_file, trace_file = tmp_path / "lat.pt", tmp_path / "trace.csv"
    chrome = tmp_path / "trace.json"
    proc = subprocess.run(
        [sys.executable, "-m", "executor.run", *BASE.split(), "--json", "--save-latents",
         str(lat_file), "--trace", str(trace_file), "--chrome-trace", str(chrome)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    lat = torch.load(lat_file)
    assert lat.shape == reference.shape == (1, 4, RES // 8, RES // 8)
    assert _rel_diff(lat, reference) <= TOL
    assert summary["config"]["world_size"] == 1
    assert summary["latency_s"] > 0 and summary["peak_memory_gb"] > 0
    trace = Trace.read_csv(trace_file)
    kinds = [r.op for r in trace.rows]
    assert kinds.count("blocks") == STEPS and kinds.count("scheduler_step") == STEPS
    assert {r.source for r in trace.rows} == {"measured"}
    events = json.loads(chrome.read_text())["traceEvents"]
    assert sum(e["name"] == "blocks" for e in events) == STEPS


@pytest.mark.parametrize("name", ["m1", "m4_w8", "m3_w8"])
def test_two_processes_match_diffusers(two_process, reference, name):
    lat, summary = two_process[name]
    assert summary["config"]["world_size"] == 2
    assert summary["config"]["stage_layers"] == [[0, 1], [2, 3]]
    assert _rel_diff(lat, reference) <= TOL


def test_stale_context_differs_slightly_and_shrinks_with_warmup(two_process, reference):
    d1, d2, d4 = (_rel_diff(two_process[n][0], reference) for n in ("m4_w1", "m4_w2", "m4_w4"))
    # Stale K,V for patches not yet refreshed this step: a real but small deviation
    # (measured on this config: 1.8e-3, 9.9e-5, 7.4e-7 of the largest latent magnitude).
    assert TOL < d1 < 0.05
    assert d1 > d2 > d4


def test_two_process_trace_and_json(two_process):
    trace = two_process["trace"]
    _, summary = two_process["m1"]
    rows = trace.dicts()
    assert set(rows[0]) == set(COLUMNS)
    sched = build_schedule(Workload(get_model(MODEL), RES, RES, STEPS, dtype="fp32",
                                    text_encoder=False, vae=False),
                           ParallelConfig(gpus=2, pipefusion=2, patches=1, warmup=1))
    # One trace row per op of the schedule, rank by rank.
    for rank, ops in enumerate(sched.ranks):
        assert sum(1 for r in rows if r["rank"] == rank) == len(ops)
    sends = {(r["rank"], r["peer"], r["step"], r["patch"], r["tag"]): r
             for r in rows if r["op"] == "send"}
    recvs = [r for r in rows if r["op"] == "recv"]
    assert recvs and len(recvs) == len(sends)
    for r in recvs:
        s = sends[(r["peer"], r["rank"], r["step"], r["patch"], r["tag"])]
        assert s["nbytes"] == r["nbytes"] > 0
        assert r["end_s"] >= r["start_s"] and s["end_s"] >= s["start_s"]
    # Hidden states of the guidance batch of two, whole image, fp32.
    hidden = [r for r in recvs if r["tag"] == "hidden"]
    assert hidden[0]["nbytes"] == 2 * (RES // 16) ** 2 * 64 * 4
    for key in ("latency_s", "peak_memory_gb", "config", "memory_per_rank", "metrics"):
        assert key in summary
    per_rank = summary["memory_per_rank"]
    assert [m["rank"] for m in per_rank] == [0, 1]
    assert all(m["peak_memory_gb"] > 0 and m["predicted_memory_gb"] > 0 for m in per_rank)
    assert summary["config"]["backend"] == "gloo"
    # Issue 17: the peak as baseline + model + loop, and model + loop against the simulator's
    # figure for the same parts (its runtime allowance left out).
    for m in per_rank:
        parts = m["baseline_memory_gb"] + m["weights_memory_gb"] + m["loop_memory_gb"]
        assert parts >= m["peak_memory_gb"] - 1e-9
        pred = m["predicted_memory"]
        assert m["predicted_weights_gb"] + m["predicted_loop_gb"] == pytest.approx(
            pred["total"] - pred["runtime"])
    cm = summary["comparable_memory"]
    assert cm["measured_gb"] == pytest.approx(cm["model_gb"] + cm["loop_gb"])
    assert cm["predicted_gb"] == pytest.approx(cm["predicted_model_gb"] + cm["predicted_loop_gb"])


def test_stale_runs_hold_kv_buffers_of_the_full_sequence(two_process):
    _, stale = two_process["m4_w1"]
    _, fresh = two_process["m1"]
    # 2 blocks per stage x K and V x batch 2 x 256 tokens x hidden 64 x fp32
    expected_gb = 2 * 2 * 2 * 256 * 64 * 4 / 1e9
    for m in stale["memory_per_rank"]:
        assert m["kv_buffer_gb"] == pytest.approx(expected_gb)
        assert m["predicted_memory"]["kv_buffers"] == pytest.approx(expected_gb)
    assert all(m["kv_buffer_gb"] == 0 for m in fresh["memory_per_rank"])


# ---- faults ------------------------------------------------------------------------------------
def test_dead_rank_makes_the_other_exit_nonzero_naming_it():
    procs = _launch_ranks([*BASE.split(), "--patches", "4", "--timeout", "60"], 2, "1:2:exit")
    outs = [p.communicate(timeout=HANG_GUARD_S) for p in procs]
    assert procs[1].returncode == 3  # the injected death
    assert procs[0].returncode == 1
    assert "rank 0:" in outs[0][1] and "rank 1 died" in outs[0][1]


def test_hung_rank_times_out_everywhere_without_orphans():
    args = [*BASE.split(), "--patches", "4", "--timeout", "3"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "executor.run", *args]
    # Own session, so every process of the run (torchrun and its workers) is in group pid.
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(DITSIM_EXECUTOR_FAULT="1:2:hang"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        leftover = _group_alive(proc.pid)
        if leftover:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert "rank 0: receive from rank 1" in err and "within --timeout 3 s" in err
    assert not leftover, "processes of the run outlived torchrun"


@pytest.mark.parametrize("fault,culprit,phrase", [
    ("1:startup:exit", 1, "rank 1 died (its last phase: start-up)"),
    ("1:barrier:exit", 1, "rank 1 died"),
    ("0:barrier:hang", 0, "rank 0 is alive but hung or too slow (its last phase: start-up)"),
])
def test_dead_or_hung_rank_named_outside_the_loop(fault, culprit, phrase):
    """Issue 18: at start-up and in the barrier gloo said only "Connection reset by peer"
    (or "Timed out waiting 5000ms"); the healthy rank's line now names the culprit."""
    procs = _launch_ranks([*BASE.split(), "--patches", "2", "--timeout", "10"], 2, fault)
    healthy = procs[1 - culprit]
    try:
        _, err = healthy.communicate(timeout=HANG_GUARD_S)
    finally:
        for p in procs:  # the hung one never ends by itself outside torchrun
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert healthy.returncode == 1, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: rank {1 - culprit}: "), line
    assert " failed: " in line and phrase in line, line
    assert "Connection reset" not in line.split("(", 1)[0]


def _group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still alive (zombies reaped by init aside),
    allowing a moment for torchrun's workers to be reaped."""
    for _ in range(50):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.1)
    return True


# ---- bad input -------------------------------------------------------------------------------
def _sim_message(patches: int) -> str:
    wl = Workload(get_model(MODEL), RES, RES, STEPS, dtype="fp32", text_encoder=False,
                  vae=False)
    with pytest.raises(UserError) as e:
        build_schedule(wl, ParallelConfig(gpus=2, pipefusion=2, patches=patches, warmup=1))
    return str(e.value)


@pytest.mark.parametrize("rank", [0, 1])
def test_rejected_config_fails_before_any_process_group_with_sim_message(rank):
    # A lone rank of a world of two: had it started a process group it would wait for its
    # peer (until the hang guard); it must instead exit 2 at once with the simulator's message.
    env = _env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()))
    proc = subprocess.run([sys.executable, "-m", "executor.run", *BASE.split(), "--patches",
                           "99"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=HANG_GUARD_S)
    assert proc.returncode == 2
    if rank == 0:
        assert proc.stderr.strip() == f"error: {_sim_message(99)}"
        predict = subprocess.run([sys.executable, "-m", "sim.predict", "--model", MODEL,
                                  "--resolution", str(RES), "--steps", str(STEPS), "--gpus",
                                  "2", "--pipefusion", "2", "--patches", "99"], cwd=REPO,
                                 env=_env(), capture_output=True, text=True,
                                 timeout=HANG_GUARD_S)
        assert predict.returncode == 2 and predict.stderr.strip() == proc.stderr.strip()
    else:  # only rank 0 speaks, so a launch of N ranks prints the line once
        assert proc.stderr.strip() == ""


@pytest.mark.parametrize("argv, needle", [
    (["--model", "pixart-tiny", "--resolution", "250"], "not a multiple of 16 px"),
    (["--model", "hunyuan-dit", "--resolution", "256"], "the executor runs"),
    (["--model", "nope"], "unknown model"),
    (["--resolution", "256"], "give --model"),
    (["--model", "pixart-tiny", "--resolution", "256", "--warmup", "9", "--steps", "8"],
     "--warmup must be between 0"),
    (["--model", "pixart-tiny", "--resolution", "abc"], "--resolution must be N or WIDTHx"),
    (["--model", "pixart-tiny", "--stage-blocks", "2,x"], "--stage-blocks must be comma"),
    (["--model", "pixart-tiny", "--steps", "x"], "invalid int value"),
    (["--model", "pixart-tiny", "--resolution", "256", "--runs", "0"], "--runs must be at least"),
    (["--model", "pixart-tiny", "--resolution", "256", "--warmup-runs", "-1"],
     "--warmup-runs must be at least 0"),
    (["--model", "pixart-tiny", "--resolution", "256", "--pace-probe", "-1"],
     "--pace-probe must be at least 0"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys, monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    try:
        status = run_main(argv)
    except SystemExit as e:  # argparse errors
        status = e.code
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and needle in err


def test_bad_prompt_embeds_file(tmp_path):
    from executor.inputs import load_prompts

    bad = tmp_path / "p.pt"
    torch.save({"prompt_embeds": torch.zeros(1, 8, 64)}, bad)
    with pytest.raises(UserError, match="expected a dict with keys"):
        load_prompts(bad, get_model(MODEL))
    wrong = {k: torch.zeros(1, 8, 32) for k in ("prompt_embeds", "negative_prompt_embeds")}
    wrong.update({k: torch.ones(1, 8) for k in ("prompt_attention_mask",
                                                  "negative_prompt_attention_mask")})
    torch.save(wrong, bad)
    with pytest.raises(UserError, match=r"shape \(1, tokens, 64\)"):
        load_prompts(bad, get_model(MODEL))


def _prompts(pos: torch.Tensor, neg: torch.Tensor) -> dict:
    return {"prompt_embeds": pos, "negative_prompt_embeds": neg,
            "prompt_attention_mask": torch.ones(pos.shape[:2], dtype=torch.long),
            "negative_prompt_attention_mask": torch.ones(neg.shape[:2], dtype=torch.long)}


@pytest.mark.parametrize("pos,neg,needle", [
    (torch.zeros(1, 8, 64), torch.zeros(1, 5, 64), "8 tokens, negative_prompt_embeds 5"),
    (torch.zeros(1, 0, 64), torch.zeros(1, 0, 64), "has no tokens"),
    (torch.full((1, 8, 64), float("nan")), torch.zeros(1, 8, 64), "NaN or infinite"),
    (torch.zeros(1, 8, 64), torch.full((1, 8, 64), float("inf")), "NaN or infinite"),
    (torch.zeros(1, 8, 64, dtype=torch.long), torch.zeros(1, 8, 64), "floating-point"),
])
def test_prompt_embeds_checked_before_the_run(tmp_path, pos, neg, needle) -> None:
    """Issue 18: these reached torch as RuntimeError, or ran to all-NaN latents."""
    from executor.inputs import load_prompts

    bad = tmp_path / "p.pt"
    torch.save(_prompts(pos, neg), bad)
    with pytest.raises(UserError, match=needle):
        load_prompts(bad, get_model(MODEL))
    ok = tmp_path / "ok.pt"
    torch.save(_prompts(torch.zeros(1, 8, 64), torch.zeros(1, 8, 64)), ok)
    assert load_prompts(ok, get_model(MODEL)).prompt_embeds.shape == (1, 8, 64)
