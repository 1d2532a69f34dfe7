"""Issue 17, a new user's first run: progress on stderr (never on stdout) once a command has
run 2 s, every file written named, a warmed-up recommendation with the W=0 one beside it as
the faster, riskier alternative and a why line a newcomer can read, and warnings when a CPU
profile's speed no longer holds on this machine."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sim
from sim import compare, plan, predict
from sim.cli import run_main
from sim.cost import profile as cost_profile
from sim.cost.profile import speed_check, this_cpu
from sim.cost.profile_format import ComputeProfile
from sim.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "profiles" / "data" / "cpu-amd-epyc-t1_pixart-tiny_fp32.csv"
# A small search whose fastest configuration starts cold (W=0) and a warmed-up one follows.
SMALL = ["--model", "pixart", "--gpus", "4", "--steps", "6", "--link", "nvlink"]


def _run(main, argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        run_main(main, argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


# ---- progress ---------------------------------------------------------------------------

def test_progress_is_silent_for_2_s_then_a_line_per_fifth_off_a_terminal() -> None:
    clock, out = _Clock(), io.StringIO()
    p = Progress(stream=out, clock=clock)
    p("simulating", 1, 10)
    clock.t = 1.9
    p("simulating", 2, 10)
    assert out.getvalue() == ""  # a quick command stays quiet
    clock.t = 2.5
    for done in range(3, 11):
        p("simulating", done, 10)
    assert out.getvalue().splitlines() == ["simulating 3/10", "simulating 4/10",
                                           "simulating 6/10", "simulating 8/10",
                                           "simulating 10/10"]
    quiet_out = io.StringIO()
    q = Progress(quiet=True, stream=quiet_out, clock=clock)
    q("simulating", 10, 10)
    q.line("stage")
    with q.stage("stage"):
        pass
    assert quiet_out.getvalue() == ""


def test_a_stage_still_running_after_the_delay_says_so() -> None:
    out = io.StringIO()
    p = Progress(stream=out)
    with p.stage("quick"):
        pass
    assert out.getvalue() == ""  # done before the delay: nothing
    p.DELAY_S = 0.05
    p.t0 = time.perf_counter()
    with p.stage("long"):
        time.sleep(1.0)
    assert out.getvalue() == "long...\n"
    # The timer thread is not joined: a stage that ended before the delay stays silent
    # after the delay has passed too.
    p.DELAY_S = 0.2
    p.t0 = time.perf_counter()
    with p.stage("short"):
        pass
    time.sleep(0.5)
    assert out.getvalue() == "long...\n"


def test_a_stage_due_sooner_than_a_running_one_is_said_on_time() -> None:
    # One timer thread serves every stage: it must wake for a stage due before the one it
    # waits for.
    late, soon = io.StringIO(), io.StringIO()
    p_late, p_soon = Progress(stream=late), Progress(stream=soon)
    p_late.DELAY_S, p_soon.DELAY_S = 30.0, 0.1
    with p_late.stage("late"):
        with p_soon.stage("soon"):
            time.sleep(1.0)
            assert soon.getvalue() == "soon...\n"
    assert late.getvalue() == ""


def test_plan_json_shows_progress_on_stderr_and_keeps_stdout_clean(monkeypatch,
                                                                   capsys) -> None:
    monkeypatch.setattr(Progress, "DELAY_S", 0.0)
    code, out, err = _run(plan.main, SMALL + ["--json"], capsys)
    assert code == 0
    json.loads(out)  # stdout is the JSON and nothing else
    assert "searching the configurations of pixart-alpha" in err
    assert re.search(r"configurations simulated or ruled out \d+/\d+", err)
    code, out, err = _run(plan.main, SMALL + ["--json", "--quiet"], capsys)
    assert code == 0 and err == ""


def test_predict_and_compare_say_what_they_simulate(monkeypatch, capsys) -> None:
    monkeypatch.setattr(Progress, "DELAY_S", 0.0)
    _, _, err = _run(predict.main, SMALL + ["--patches", "4", "--json"], capsys)
    assert "simulating pipefusion4(M=4,W=1)..." in err
    _, _, err = _run(compare.main, SMALL + ["--resolutions", "512", "--json"], capsys)
    assert "comparing the strategies at 512 px..." in err


def test_every_file_written_is_named_on_stderr(tmp_path: Path, capsys) -> None:
    trace, chrome = tmp_path / "t.csv", tmp_path / "t.json"
    code, _, err = _run(predict.main, SMALL + ["--patches", "4", "--trace", str(trace),
                                               "--chrome-trace", str(chrome), "--quiet"],
                        capsys)
    assert code == 0 and trace.is_file() and chrome.is_file()
    assert err.splitlines() == [f"wrote {trace} (--trace)", f"wrote {chrome} (--chrome-trace)"]
    code, _, err = _run(plan.main, SMALL + ["--chrome-trace", str(chrome), "--quiet"], capsys)
    assert code == 0 and err.splitlines() == [f"wrote {chrome} (--chrome-trace)"]


def test_validation_says_plotly_is_missing_before_the_runs(monkeypatch, tmp_path: Path,
                                                           capsys) -> None:
    from validation import cli

    monkeypatch.setitem(sys.modules, "reports.validation_report", None)  # as if no plotly

    def no_runs(*args, **kwargs):
        raise sim.UserError("stopped before the runs")

    monkeypatch.setattr(cli, "grid_cases", no_runs)
    code, _, err = _run(cli.main, ["--grid", "smoke", "--out", str(tmp_path / "v")], capsys)
    assert code == 2
    lines = err.splitlines()
    assert "plotly is not installed" in lines[0] and lines[-1] == "error: stopped before the runs"


# ---- the recommendation -----------------------------------------------------------------

def test_plan_recommends_a_warmed_up_run_and_shows_w0_as_the_riskier_one(capsys) -> None:
    p = sim.plan(model="pixart", gpus=4, steps=6, link="nvlink")
    fitting = [x for x in p.ranked if not x.oom]
    assert fitting[0].config.cold_start  # the fastest starts cold ...
    rec, risky = p.recommended, p.riskier_alternative
    assert not rec.config.cold_start and risky is fitting[0]  # ... and is not recommended
    assert rec is next(x for x in fitting if not x.config.cold_start)
    # The search's pruning keeps the true best warmed-up configuration.
    full = sim.plan(model="pixart", gpus=4, steps=6, link="nvlink", exhaustive=True)
    assert full.recommended.config == rec.config
    code, out, _ = _run(plan.main, SMALL + ["--quiet"], capsys)
    assert code == 0
    assert f"recommended: {rec.config.label()} on 4 GPUs" in out
    assert f"why: {p.why}" in out and "W=0 starts from empty" not in p.why
    risky_line = next(ln for ln in out.splitlines() if ln.startswith("faster, riskier:"))
    assert risky.config.label() in risky_line and "image quality" in risky_line
    # The ranking marks both rows.
    lines = out.splitlines()
    assert any(ln.endswith("<- recommended") and f" {rec.config.label()} " in ln for ln in lines)
    assert any(ln.endswith("<- faster, riskier (W=0)") and f" {risky.config.label()} " in ln
               for ln in lines)
    _, out, _ = _run(plan.main, SMALL + ["--json", "--quiet"], capsys)
    every = json.loads(out)
    assert [d["config"]["label"] for d in every if d.get("recommended")] == [
        rec.config.label()]
    assert [d["config"]["label"] for d in every if d.get("riskier_alternative")] == [
        risky.config.label()]


def test_why_reads_time_not_overlapped_out_of_the_latency() -> None:
    p = sim.plan(model="pixart", gpus=4, steps=6, link="nvlink")
    rec = p.recommended
    exposed = max(rec.metrics.exposed_comm_s)
    m = re.search(r"communication: ([\d.]+) (ms|s) of ([\d.]+) (ms|s) is not overlapped "
                  r"with compute", p.why) or re.search(
        r"communication: all of it overlapped with compute", p.why)
    assert m, p.why
    if m.groups():
        shown = float(m.group(1)) * (1e-3 if m.group(2) == "ms" else 1)
        total = float(m.group(3)) * (1e-3 if m.group(4) == "ms" else 1)
        assert shown == pytest.approx(exposed, rel=0.01)
        assert total == pytest.approx(rec.latency_s, rel=0.01)
    assert "not hidden by compute" not in p.why and "MB sent per step only" not in p.why


def test_w0_only_search_still_recommends_a_run_without_a_cold_start(capsys) -> None:
    # --warmup 0 searches W=0 for the stale strategies; Ulysses, ring, tensor and CFG need no
    # warmup and are recommended before a cold start, which stays the riskier alternative.
    p = sim.plan(model="pixart", gpus=4, steps=6, link="nvlink", warmup=[0])
    assert not p.recommended.config.cold_start
    assert p.riskier_alternative is None or p.riskier_alternative.config.cold_start


# ---- the CPU profile's speed ------------------------------------------------------------

def _same_cpu_meta(ref_s: float | None = 1e-3) -> dict:
    meta = dict(ComputeProfile.read(SHIPPED).meta, device_name=this_cpu())
    if ref_s is not None:
        meta["reference_op_s"] = ref_s
    return meta


def test_speed_check_warns_beyond_ten_percent_with_the_factor_and_the_command() -> None:
    warning, note = speed_check(_same_cpu_meta(1e-3), probe=lambda threads, clock: 1.5e-3)
    assert note is None and "1.50x slower" in warning
    assert "python -m profiles.collect --model pixart-tiny --device cpu --quick" in warning
    warning, note = speed_check(_same_cpu_meta(1e-3), probe=lambda threads, clock: 0.8e-3)
    assert "1.25x faster" in warning
    warning, note = speed_check(_same_cpu_meta(1e-3), probe=lambda threads, clock: 1.05e-3)
    assert warning is None and "factor 1.05, within 10%" in note


def test_speed_check_says_when_the_probe_was_skipped() -> None:
    def never(threads, clock):
        raise AssertionError("probed")

    warning, note = speed_check(_same_cpu_meta(None), probe=never)
    assert warning is None and "speed probe skipped" in note and "no reference-op" in note
    warning, note = speed_check(_same_cpu_meta(), probe=lambda threads, clock: None)
    assert warning is None and "torch is not installed" in note
    # Another CPU model: the host warning, and no probe (the CPUs differ anyway).
    other = dict(_same_cpu_meta(), device_name="Some Other CPU 9000")
    warning, note = speed_check(other, probe=never)
    assert "Some Other CPU 9000" in warning and note is None
    assert speed_check(dict(other, device="cuda"), probe=never) == (None, None)


def test_a_slow_machine_warns_on_stderr_once_and_the_json_keeps_the_note(
        tmp_path: Path, monkeypatch, capsys) -> None:
    prof = ComputeProfile.read(SHIPPED)
    prof.meta.update(device_name=this_cpu(), reference_op_s=1e-3)
    path = tmp_path / "here.csv"
    prof.write(path)
    monkeypatch.setattr(cost_profile, "_probe_once", lambda threads, clock: 2e-3)
    monkeypatch.setattr("sim.cli._WARNED", set())
    base = ["--model", "pixart-tiny", "--gpu", "cpu", "--gpus", "2", "--steps", "4",
            "--dtype", "fp32", "--no-text-encoder", "--no-vae", "--profile", str(path),
            "--json", "--quiet"]
    code, out, err = _run(predict.main, base + ["--resolution", "256", "--patches", "2"],
                          capsys)
    assert code == 0
    warning = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1 and "2.00x slower" in warning[0] and str(path) in warning[0]
    assert any("2.00x slower" in n for n in json.loads(out)["cost_model"]["notes"])
    code, _, err = _run(compare.main, base + ["--resolutions", "256,512"], capsys)
    assert code == 0 and "warning:" not in err  # once per process


def test_the_probe_imports_torch_only_when_due_and_says_so_without_it(tmp_path: Path) -> None:
    prof = ComputeProfile.read(SHIPPED)
    prof.meta.update(device_name=this_cpu(), reference_op_s=1e-3)
    path = tmp_path / "here.csv"
    prof.write(path)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import sim\n"
        "sim.plan(model='pixart', gpus=2, steps=3)  # no profile: no probe\n"
        "assert 'sim.cost.probe' not in sys.modules\n"
        f"p = sim.predict(model='pixart-tiny', gpu='cpu', gpus=1, resolution=256, steps=3,"
        f" dtype='fp32', text_encoder=False, vae=False, profile={str(path)!r})\n"
        "print(p.as_dict()['cost_model']['notes'])\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "torch is not installed" in res.stdout
