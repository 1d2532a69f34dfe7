"""Output files (issue 18, items 2, 7, 8): every output path is checked before the work starts,
every output is written through a temporary file and renamed, a run whose writing fails part
way leaves none of its outputs, and a killed planner worker ends in one line.

Tests run as root, which ignores permission bits, so unwritable paths are made the ways root
cannot write either: a path under a regular file, a folder given as the file, a missing
folder, and a copy of ``/dev/full`` (every write: "No space left on device") or an injected
``OSError(ENOSPC)`` for a full disk.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from sim import plan, predict
from sim.cli import run_main
from sim.errors import UserError
from sim.trace import Trace

ROOT = Path(__file__).resolve().parent.parent
PREDICT = ["--model", "pixart", "--gpus", "8", "--link", "pcie", "--patches", "8", "--steps",
           "4"]


def _run(main, argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        run_main(main, argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def _one_error_line(err: str, *needles: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)


def _bad_paths(tmp_path: Path) -> list[tuple[str, str]]:
    """(path, words of the error) for outputs nobody, root included, can write."""
    (tmp_path / "file.txt").write_text("a regular file\n")
    (tmp_path / "adir").mkdir(exist_ok=True)
    return [(str(tmp_path / "file.txt" / "out.csv"), "is a file, not a folder"),
            (str(tmp_path / "adir"), "is a folder"),
            (str(tmp_path / "missing" / "out.csv"), "does not exist")]


def _no_work(*args, **kwargs):
    raise AssertionError("the work started before the output paths were checked")


def _leftovers(folder: Path) -> list[str]:
    """Temporary or probe files left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _full_device(path: Path) -> Path:
    """A copy of /dev/full at ``path``: every write fails with ENOSPC, as on a full disk."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    except (OSError, AttributeError) as e:
        pytest.skip(f"cannot create a device node here ({e})")
    return path


def _enospc(partial: str):
    """A writer method (``Trace.write_chrome(self, path)``) that writes ``partial`` and then
    fails as a full disk does."""
    def write(self, path) -> None:
        with open(path, "w") as fh:  # not Path.write_text, which a test may have replaced
            fh.write(partial)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write


def _write_text_enospc(self: Path, data: str, *args, **kwargs) -> int:
    """``Path.write_text`` on a full disk: the first bytes land, then ENOSPC."""
    with open(self, "w") as fh:
        fh.write(data[:10])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --- the helpers ---------------------------------------------------------------------------


def test_check_writable_refuses_unwritable_paths_and_leaves_nothing(tmp_path: Path) -> None:
    from sim.outputs import check_folder, check_writable

    for path, words in _bad_paths(tmp_path):
        with pytest.raises(UserError, match=words) as exc:
            check_writable(path, "--trace")
        assert str(exc.value).startswith(f"--trace {path}")
    check_writable(tmp_path / "ok.csv", "--trace")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "file.txt"]  # probe removed
    # Missing folders may be allowed (profiles create them), but not under a regular file.
    check_writable(tmp_path / "new" / "deeper" / "p.csv", "--out", make_folders=True)
    assert not (tmp_path / "new").exists()
    with pytest.raises(UserError, match="file.txt is a file, not a folder"):
        check_writable(tmp_path / "file.txt" / "new" / "p.csv", "--out", make_folders=True)
    check_folder(tmp_path / "val" / "sub", "--out")
    with pytest.raises(UserError, match="exists and is not a folder"):
        check_folder(tmp_path / "file.txt", "--out")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_folder(tmp_path / "file.txt" / "val", "--out")


def test_write_outputs_is_all_or_none(tmp_path: Path) -> None:
    """A failure in the second write leaves neither file (the first keeps its old content)
    and no temporary file; the error names the flag, the path and the reason."""
    from sim.outputs import write_outputs

    first, second = tmp_path / "latents.pt", tmp_path / "t.csv"
    first.write_text("old")

    def fail(p: Path) -> None:
        p.write_text("half a tra")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(UserError) as exc:
        write_outputs([("--save-latents", str(first), lambda p: p.write_text("new")),
                       ("--trace", str(second), fail)])
    assert str(exc.value) == f"--trace {second}: cannot write (No space left on device)"
    assert first.read_text() == "old" and not second.exists()
    assert _leftovers(tmp_path) == []
    write_outputs([("--save-latents", str(first), lambda p: p.write_text("new")),
                   ("--trace", None, fail), ("--trace", str(second), lambda p: p.write_text("t"))])
    assert first.read_text() == "new" and second.read_text() == "t"
    assert _leftovers(tmp_path) == []


def test_special_files_are_written_in_place_and_a_full_device_is_one_line(tmp_path: Path,
                                                                          capsys) -> None:
    """A device is written, never renamed over (as root, a rename would replace /dev/null);
    a full one (a copy of /dev/full) is one error line naming the flag, exit 2."""
    full = _full_device(tmp_path / "full")
    code, out, err = _run(predict.main, PREDICT + ["--chrome-trace", str(full)], capsys)
    assert code == 2 and out == ""
    _one_error_line(err, f"--chrome-trace {full}", "No space left on device")
    assert stat.S_ISCHR(full.stat().st_mode)
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    code, _, _ = _run(predict.main, PREDICT + ["--trace", str(null)], capsys)
    assert code == 0 and stat.S_ISCHR(null.stat().st_mode)
    assert _leftovers(tmp_path) == []


# --- the sim commands and the reports ------------------------------------------------------


def test_predict_checks_outputs_before_simulating(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(predict, "predict", _no_work)
    for flag in ("--trace", "--chrome-trace"):
        for path, words in _bad_paths(tmp_path):
            code, out, err = _run(predict.main, PREDICT + [flag, path], capsys)
            assert code == 2 and out == ""
            _one_error_line(err, f"{flag} {path}", words)
    code, _, err = _run(predict.main, PREDICT + ["--trace", str(tmp_path / "t"),
                                                 "--chrome-trace", str(tmp_path / "t")], capsys)
    assert code == 2
    _one_error_line(err, "--chrome-trace", "the same file as --trace")


def test_predict_failure_in_the_second_write_leaves_no_output(tmp_path: Path, capsys,
                                                              monkeypatch) -> None:
    monkeypatch.setattr(Trace, "write_chrome", _enospc('{"traceEvents": ['))
    csv_path, chrome = tmp_path / "t.csv", tmp_path / "t.json"
    code, out, err = _run(predict.main, PREDICT + ["--trace", str(csv_path),
                                                   "--chrome-trace", str(chrome)], capsys)
    assert code == 2 and out == ""
    _one_error_line(err, f"--chrome-trace {chrome}", "No space left on device")
    assert list(tmp_path.iterdir()) == []  # no trace CSV, no truncated JSON, no temp file


def test_plan_checks_chrome_trace_before_searching(tmp_path: Path, capsys,
                                                   monkeypatch) -> None:
    monkeypatch.setattr(plan, "run_search", _no_work)
    for path, words in _bad_paths(tmp_path):
        code, _, err = _run(plan.main, ["--model", "pixart", "--gpus", "8", "--chrome-trace",
                                        path], capsys)
        assert code == 2
        _one_error_line(err, f"--chrome-trace {path}", words)


def test_reports_check_outputs_before_the_work(tmp_path: Path, capsys, monkeypatch) -> None:
    pytest.importorskip("plotly")
    from reports import compare as rcompare
    from reports import plan as rplan
    from sim import compare

    monkeypatch.setattr(plan, "run_search", _no_work)
    monkeypatch.setattr(compare, "compare", _no_work)
    base = ["--model", "pixart", "--gpus", "8"]
    ok = str(tmp_path / "ok.html")
    for path, words in _bad_paths(tmp_path):
        for main, argv, flag in (
                (rplan.main, base + ["--report", path], "--report"),
                (rplan.main, base + ["--report", ok, "--chrome-trace", path], "--chrome-trace"),
                (rcompare.main, base + ["--report", path], "--report")):
            code, _, err = _run(main, argv, capsys)
            assert code == 2
            _one_error_line(err, f"{flag} {path}", words)
    assert not Path(ok).exists()


def test_profile_folder_is_named_a_folder(tmp_path: Path, capsys) -> None:
    for flag in ("--profile", "--link-profile"):
        code, _, err = _run(predict.main, PREDICT + [flag, str(tmp_path)], capsys)
        assert code == 2
        _one_error_line(err, f"{flag} {tmp_path} is a folder")
        assert "no such file" not in err


# --- the planner's worker processes --------------------------------------------------------


class _BrokenPool:
    """A process pool whose workers have died."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def map(self, fn, jobs):
        raise BrokenProcessPool("A process in the process pool was terminated abruptly")

    submit = map

    def shutdown(self, *args, **kwargs) -> None:
        pass


def test_plan_broken_worker_pool_is_one_line_exit_1(capsys, monkeypatch) -> None:
    """Exit 1 (a failed run, as the executor's), not 2: the input was fine."""
    from sim import search

    monkeypatch.setattr(search, "ProcessPoolExecutor", _BrokenPool)
    monkeypatch.setattr(search.os, "cpu_count", lambda: 4)  # a pool even on one core
    code, out, err = _run(plan.main, ["--model", "pixart", "--gpus", "8", "--steps", "4"],
                          capsys)
    assert code == 1 and out == ""
    _one_error_line(err, "planner worker process died")


def _killed(job):
    os.kill(os.getpid(), signal.SIGKILL)


def test_plan_killed_worker_is_one_line_exit_1(capsys, monkeypatch) -> None:
    """A worker really killed (SIGKILL), as the kernel's out-of-memory killer would."""
    from sim import search

    if "fork" not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip("needs fork: the workers must inherit the patched function")
    monkeypatch.setattr(search, "_bound_chunk", _killed)
    monkeypatch.setattr(search.os, "cpu_count", lambda: 2)
    code, out, err = _run(plan.main, ["--model", "pixart", "--gpus", "8", "--steps", "4"],
                          capsys)
    assert code == 1 and out == ""
    _one_error_line(err, "planner worker process died")


# --- profiles ------------------------------------------------------------------------------


def test_profile_write_is_atomic(tmp_path: Path, monkeypatch) -> None:
    """A full disk mid-write leaves the old profile (or none), never a truncated one that
    would load as a smaller profile."""
    from tests.test_profiles_format import small_profile

    path = small_profile().write(tmp_path / "p.csv")
    before = path.read_text()
    monkeypatch.setattr(Path, "write_text", _write_text_enospc)
    with pytest.raises(OSError):
        small_profile().write(path)
    with pytest.raises(OSError):
        small_profile().write(tmp_path / "new.csv")
    monkeypatch.undo()
    assert path.read_text() == before and not (tmp_path / "new.csv").exists()
    assert _leftovers(tmp_path) == []


def test_profiles_collect_checks_out_first_and_reports_a_full_disk(tmp_path: Path, capsys,
                                                                   monkeypatch) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    import profiles.compute
    from profiles import collect
    from tests.test_profiles_format import small_profile

    argv = ["--model", "pixart-tiny", "--quick", "--resolutions", "256", "--no-progress"]
    monkeypatch.setattr(profiles.compute, "collect", _no_work)
    for path, words in _bad_paths(tmp_path)[:2]:  # a missing folder is created: allowed
        code, _, err = _run(collect.main, argv + ["--out", path], capsys)
        assert code == 2
        _one_error_line(err, f"--out {path}", words)
    prof = small_profile()
    prof.meta.update(device_name="cpu", threads=1, collect_s=0.1)
    monkeypatch.setattr(profiles.compute, "collect", lambda s, progress: prof)
    monkeypatch.setattr(Path, "write_text", _write_text_enospc)
    out = tmp_path / "p.csv"
    code, _, err = _run(collect.main, argv + ["--out", str(out)], capsys)
    assert code == 2
    _one_error_line(err, f"--out {out}", "No space left on device")
    assert not out.exists() and _leftovers(tmp_path) == []


def test_profiles_links_checks_out_before_timing(tmp_path: Path, capsys, monkeypatch) -> None:
    from profiles import links

    monkeypatch.setattr(links, "collect_links", _no_work)
    for path, words in _bad_paths(tmp_path)[:2]:
        code, _, err = _run(links.main, ["--backend", "gloo", "--quick", "--out", path],
                            capsys)
        assert code == 2
        _one_error_line(err, f"--out {path}", words)


# --- validation ----------------------------------------------------------------------------


def test_validation_checks_out_folder_first(tmp_path: Path, capsys, monkeypatch) -> None:
    from validation import cli

    monkeypatch.setattr(cli, "run_cases", _no_work)
    (tmp_path / "file.txt").write_text("x")
    for path, words in ((tmp_path / "file.txt" / "val", "is a file, not a folder"),
                        (tmp_path / "file.txt", "exists and is not a folder")):
        code, _, err = _run(cli.main, ["--grid", "smoke", "--out", str(path)], capsys)
        assert code == 2
        _one_error_line(err, f"--out {path}", words)


def test_validation_csv_and_html_together_or_neither(tmp_path: Path, capsys,
                                                     monkeypatch) -> None:
    pytest.importorskip("plotly")
    import reports.validation_report
    from sim.trace import Trace
    from validation import cli
    from validation.compare import join_traces

    row = {"model": "pixart-tiny", "resolution": 256, "steps": 2, "nproc": 1,
           "strategy": "serial", "patches": 1, "warmup": 0, "measured_s": 1.0,
           "measured_runs": 1, "measured_iqr": 0.0, "predicted_s": 1.1, "rel_err": 0.1,
           "cpu_share": 0.9, "predicted_busy_share": 1.0, "op_errors": "{}",
           "cost_sources": "{}"}
    # The runs create the folder and give each configuration a launch; the results are then
    # written into it.
    def run_cases(cases: list, out: Path, *a, **k) -> None:
        out.mkdir(parents=True)
        for c in cases:
            c.launches.append([1.0])

    monkeypatch.setattr(cli, "run_cases", run_cases)
    monkeypatch.setattr(cli, "trace_pairs", lambda cases: [join_traces(Trace(), Trace())])
    monkeypatch.setattr(cli, "result_rows", lambda cases, pairs, noise: [row])
    monkeypatch.setattr(reports.validation_report, "write_validation_report",
                        lambda path, *a: _enospc("<html>")(None, path))
    out = tmp_path / "val"
    code, _, err = _run(cli.main, ["--grid", "smoke", "--out", str(out), "--no-progress"],
                        capsys)
    assert code == 2
    _one_error_line(err, f"--out {out / 'validation.html'}", "No space left on device")
    assert list(out.iterdir()) == []  # no validation.csv without its HTML, no temp file


# --- the executor ----------------------------------------------------------------------------

EXECUTOR = ["--model", "pixart-tiny", "--resolution", "256", "--steps", "2"]


def _executor(argv: list[str], cwd: Path, inject: str = "") -> subprocess.CompletedProcess:
    """``executor.run`` with ``argv`` in a fresh process (a failed run ends its process), after
    the Python statements ``inject``."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{inject}\n"
            f"from executor.run import main\nfrom sim.cli import run_main\n"
            f"run_main(main, {argv!r})\n")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_executor_refuses_bad_outputs_before_running(tmp_path: Path) -> None:
    """``--save-latents ok.pt --trace <unwritable>`` is refused up front: no run, no ok.pt."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    (tmp_path / "file.txt").write_text("x")
    bad = str(tmp_path / "file.txt" / "t.csv")
    res = _executor(EXECUTOR + ["--save-latents", "ok.pt", "--trace", bad], tmp_path,
                    inject="import executor.runtime as r\n"
                           "def no(*a, **k): raise SystemExit('the run started')\n"
                           "r.execute = no\nimport executor.run as er; er.execute = no")
    assert res.returncode == 2, res.stderr
    _one_error_line(res.stderr, f"--trace {bad}", "is a file, not a folder")
    assert not (tmp_path / "ok.pt").exists()


def test_executor_failure_in_the_second_write_removes_the_first(tmp_path: Path) -> None:
    """A full disk while writing the trace after the latents: neither is left, one line."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    res = _executor(EXECUTOR + ["--save-latents", "ok.pt", "--trace", "t.csv"], tmp_path,
                    inject="import errno, os\nimport sim.trace\n"
                           "def full(self, path):\n"
                           "    open(path, 'w').write('rank,op')\n"
                           "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
                           "sim.trace.Trace.write_csv = full")
    assert res.returncode == 2, res.stderr
    _one_error_line(res.stderr, "--trace t.csv", "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_executor_batch_checks_its_folder_first(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    (tmp_path / "file.txt").write_text("x")
    bad = tmp_path / "file.txt" / "runs"
    res = subprocess.run([sys.executable, "-m", "executor.batch", str(bad),
                          " ".join(EXECUTOR)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2, res.stderr
    _one_error_line(res.stderr, f"OUTDIR {bad}", "is a file, not a folder")
