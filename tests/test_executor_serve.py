"""executor.serve: a trace replayed on real replicas (pixart-tiny, CPU) records a consistent
timeline; its inputs are checked before any process starts; the pieces it shares with the
simulation (trace writer, idle-while-queued accounting) agree with it."""

from __future__ import annotations

import csv
import json
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from sim.arrivals import Request, RequestClass, read_trace, scaled, unit_stream, write_trace
from sim.serve_metrics import idle_while_queued_gpu_s
from sim.serving import Policy, simulate_pool


def _serve(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "executor.serve", *argv], capture_output=True,
                          text=True, timeout=timeout)


def _trace(path: Path, arrivals: list[float], sizes: list[int], steps: int = 2,
           slo: float | None = 30.0) -> Path:
    with path.open("w") as f:
        f.write("arrival_s,model,width,height,steps" + (",slo_s" if slo else "") + "\n")
        for t, s in zip(arrivals, sizes):
            f.write(f"{t},pixart-tiny,{s},{s},{steps}" + (f",{slo}" if slo else "") + "\n")
    return path


def _timeline(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _check_timeline(rows: list[dict], arrivals: list[float], replicas: int) -> None:
    """Every request once, started after it arrived, finished after it started; each replica
    serves one request at a time, in order of arrival (FCFS)."""
    assert sorted(int(r["request"]) for r in rows) == list(range(len(arrivals)))
    for r in rows:
        arrival, start, finish = float(r["arrival_s"]), float(r["start_s"]), float(r["finish_s"])
        assert arrival == pytest.approx(sorted(arrivals)[int(r["request"])])
        assert start >= arrival
        assert finish > start
        assert float(r["latency_s"]) == pytest.approx(finish - arrival)
        assert 0 <= int(r["replica"]) < replicas
    for k in range(replicas):
        mine = sorted((r for r in rows if int(r["replica"]) == k),
                      key=lambda r: float(r["start_s"]))
        for a, b in zip(mine, mine[1:]):
            assert float(b["start_s"]) >= float(a["finish_s"])  # one at a time
            assert float(b["arrival_s"]) >= float(a["arrival_s"])  # first come, first served


def test_two_one_process_replicas_record_a_consistent_timeline(tmp_path: Path) -> None:
    # Eight requests arriving within 0.2 s on two replicas: most of them queue.
    arrivals = [0.0, 0.02, 0.05, 0.06, 0.1, 0.12, 0.15, 0.2]
    sizes = [256, 384, 256, 256, 384, 256, 384, 256]
    trace = _trace(tmp_path / "t.csv", arrivals, sizes)
    out = tmp_path / "measured.csv"
    res = _serve(["--model", "pixart-tiny", "--replay", str(trace), "--replicas", "2x1",
                  "--router", "lwl", "--trace", str(out), "--json"])
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    rows = _timeline(out)
    _check_timeline(rows, arrivals, 2)
    assert {int(r["replica"]) for r in rows} == {0, 1}  # both replicas served
    o = result["summary"]["overall"]
    assert o["requests"] == o["served"] == len(arrivals)
    assert o["within_slo"] == sum(int(r["within_slo"]) for r in rows)
    assert max(float(r["start_s"]) - float(r["arrival_s"]) for r in rows) > 0  # some queued
    # The replicas were busy exactly the seconds they served.
    busy = [sum(float(r["finish_s"]) - float(r["start_s"]) for r in rows
                if int(r["replica"]) == k) for k in range(2)]
    window = max(float(r["finish_s"]) for r in rows) - min(arrivals)
    assert result["summary"]["replica_busy_fraction"] == pytest.approx(
        [b / window for b in busy])
    assert set(result["service_cpu_s"]) == {"256", "384"}
    for name in ("256", "384"):  # the loop is part of each request's service
        assert 0 < result["service_loop_s"][name] <= result["service_s"][name]
    # Each replica's pace: reference runs of every class before the first arrival (the
    # router's service times are their medians) and after the last request (the drift).
    assert result["reference_runs"] == 3
    assert len(result["reference_s"]) == 2
    for r, ref in enumerate(result["reference_s"]):
        for name in ("256", "384"):
            before, after = ref["before"][name], ref["after"][name]
            assert len(before) == len(after) == 3 and min(before + after) > 0
            assert result["warm_service_s"][r][name] == statistics.median(before)
            assert result["reference_drift"][r][name] == pytest.approx(
                statistics.median(after) / statistics.median(before) - 1, rel=1e-12)
            # What the replica's served requests took, from the timeline.
            took = [float(x["finish_s"]) - float(x["start_s"]) for x in rows
                    if int(x["replica"]) == r and x["class"] == name]
            got = result["replica_service_s"][r][name]
            assert got == (pytest.approx(statistics.median(took), rel=1e-9) if took else None)


def test_a_two_process_pipefusion_replica_serves_in_order(tmp_path: Path) -> None:
    arrivals = [0.0, 0.01, 0.02]
    trace = _trace(tmp_path / "t.csv", arrivals, [256, 256, 256], slo=None)
    out = tmp_path / "measured.csv"
    res = _serve(["--model", "pixart-tiny", "--replay", str(trace), "--replicas",
                  "1x2:pipefusion=2/patches=2/warmup=1", "--slo", "60", "--warmup-runs", "0",
                  "--reference-runs", "2", "--trace", str(out)])
    assert res.returncode == 0, res.stderr
    assert "3 requests on 1 replica(s) (pipefusion2(M=2,W=1))" in res.stdout
    assert re.search(r"^replica 0 reference \(median of 2 run\(s\) per class\): 256 "
                     r"[0-9.]+ s before, [0-9.]+ s after \([+-][0-9.]+%\)$", res.stdout, re.M), \
        res.stdout
    rows = _timeline(out)
    _check_timeline(rows, arrivals, 1)
    assert [int(r["request"]) for r in sorted(rows, key=lambda r: float(r["start_s"]))] == \
        [0, 1, 2]


@pytest.mark.parametrize("extra, fragment", [
    (["--replicas", "1x2"], "give the configuration of a 2-process replica"),
    (["--slo", "2x"], "takes SLOs in seconds"),
    ([], "has no SLO"),
    (["--replicas", "1x2:pipefusion=2/patches=99"], "class 256 on a replica of"),
    (["--rate", "0"], "--rate must be"),
    (["--reference-runs", "0"], "--reference-runs must be at least 1"),
])
def test_bad_input_is_one_error_line(tmp_path: Path, extra: list[str], fragment: str) -> None:
    trace = _trace(tmp_path / "t.csv", [0.0, 1.0], [256, 256], slo=None)
    argv = ["--model", "pixart-tiny", "--replay", str(trace), *extra]
    if "--slo" not in extra and fragment != "has no SLO":
        argv += ["--slo", "5"]
    res = _serve(argv, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], \
        res.stderr


def test_write_trace_reads_back_the_same_requests(tmp_path: Path) -> None:
    classes = [RequestClass(256, 256, 4, 0.7), RequestClass(512, 256, 8, 0.3)]
    stream = scaled(unit_stream(classes, 50, 1.5, 3), 0.37)
    path = tmp_path / "t.csv"
    write_trace(path, "pixart-tiny", classes, stream, [1.25, 2.5])
    got_classes, got = read_trace(path, "pixart-tiny")
    assert [r.arrival_s for r in got] == [r.arrival_s for r in stream]  # exact
    names = [(c.width, c.height, c.steps) for c in got_classes]
    for a, b in zip(stream, got):
        ca, cb = classes[a.cls], got_classes[b.cls]
        assert (ca.width, ca.height, ca.steps) == names[b.cls] == (cb.width, cb.height,
                                                                    cb.steps)
        assert b.slo_s == [1.25, 2.5][a.cls]


def test_idle_while_queued_from_a_timeline_equals_the_simulations_accounting() -> None:
    rng = random.Random(5)
    t = 0.0
    reqs = []
    for i in range(400):
        t += rng.expovariate(3.0)
        reqs.append(Request(i, rng.randrange(2), t))
    gpus = [1, 1, 2]
    lat = [[0.5, 1.1], [0.5, 1.1], [0.3, 0.6]]
    for router in ("lwl", "jsq"):
        run = simulate_pool(reqs, gpus, lat, lambda r: 5.0, Policy(router))
        assert run.idle_while_queued_gpu_s > 0
        assert idle_while_queued_gpu_s(run.served, gpus) == pytest.approx(
            run.idle_while_queued_gpu_s, rel=1e-9)
