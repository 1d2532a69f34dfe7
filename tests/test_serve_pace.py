"""sim.serve --replica-pace: each replica's service times are the simulated ones times its
measured pace. Closed forms on deterministic traces (a D/D/1 queue), per-replica routing, the
exact scaling of capacity and bound, the default unchanged, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.serve import main as serve_main
from tests.conftest import run_cli

ONE = ["--model", "pixart", "--gpu", "l40", "--link", "pcie", "--quiet"]


def _serve_json(argv: list[str]) -> dict:
    code, out, err = run_cli(serve_main, argv + ["--json"])
    assert code == 0, err
    return json.loads(out)


def _isolated(gpus: int = 1) -> float:
    """The simulated isolated latency of one 1024 px request on one L40, seconds."""
    res = _serve_json(ONE + ["--gpus", str(gpus), "--replicas", f"{gpus}x1", "--rate", "0.01",
                             "--requests", "1", "--no-capacity"])
    return res["widths"][0]["isolated_latency_s"]["1024"]


def _trace(path: Path, arrivals: list[float], slo: float = 1e6) -> Path:
    with path.open("w") as f:
        f.write("arrival_s,model,width,height,steps,slo_s\n")
        for t in arrivals:
            f.write(f"{t!r},pixart,1024,1024,20,{slo!r}\n")
    return path


def _run(trace: Path, gpus: int, extra: list[str]) -> dict:
    return _serve_json(ONE + ["--gpus", str(gpus), "--replicas", f"{gpus}x1", "--replay",
                              str(trace), "--no-capacity", *extra])


def _rows(res: dict) -> dict:
    return res["candidates"][0]["at_rate"]


@pytest.mark.parametrize("pace", [2.0, 1.25, 0.5])
def test_a_paced_replica_is_a_deterministic_queue_with_scaled_service(tmp_path: Path,
                                                                       pace: float) -> None:
    # Arrivals every 1.5 S on one replica of service pace * S: a D/D/1 queue. Faster than
    # the arrivals (pace < 1.5) every request takes pace * S; slower, the replica never idles
    # and request i finishes at (i + 1) * pace * S, so its latency is
    # (i + 1) * pace * S - i * 1.5 * S.
    s = _isolated()
    gap = 1.5 * s
    n = 12
    trace = _trace(tmp_path / "t.csv", [i * gap for i in range(n)])
    out = tmp_path / "timeline.csv"
    _run(trace, 1, ["--replica-pace", repr(pace), "--trace", str(out)])
    rows = out.read_text().splitlines()[1:]
    assert len(rows) == n
    for line in rows:
        i, _, arrival, replica, start, finish, *_ = line.split(",")
        i = int(i)
        want = pace * s if pace * s <= gap else (i + 1) * pace * s - i * gap
        assert float(finish) - float(arrival) == pytest.approx(want, rel=1e-12)
        assert float(finish) - float(start) == pytest.approx(pace * s, rel=1e-12)
        assert replica == "0"


@pytest.mark.parametrize("router", ["lwl", "jsq"])
@pytest.mark.parametrize("paces, fast", [((3.0, 1.0), 1), ((1.0, 3.0), 0)])
def test_at_low_load_every_request_goes_to_the_faster_replica(
        tmp_path: Path, router: str, paces: tuple[float, float], fast: int) -> None:
    # The two replicas run the same configuration; only the pace tells them apart, in
    # --replicas order.
    s = _isolated(2)
    trace = _trace(tmp_path / "t.csv", [10 * s * i for i in range(8)])
    out = tmp_path / "timeline.csv"
    res = _run(trace, 2, ["--router", router, "--replica-pace", ",".join(map(repr, paces)),
                          "--trace", str(out)])
    for line in out.read_text().splitlines()[1:]:
        _, _, arrival, replica, start, finish, *_ = line.split(",")
        assert int(replica) == fast
        assert float(finish) - float(arrival) == pytest.approx(s, rel=1e-12)
    assert res["replica_pace"] == list(paces)


@pytest.mark.parametrize("max_batch", [1, 4])
def test_a_uniform_pace_of_two_with_twice_the_slo_halves_capacity_and_bound(
        max_batch: int) -> None:
    # Every time of the run doubles (doubling is exact in binary floating point): arrivals at
    # half the rate, service and batch times and SLO twice as long. So the bisection walks
    # the same path at half the rates and the capacity is exactly half.
    base = ONE + ["--gpus", "2", "--replicas", "2x1", "--resolution", "512", "--requests",
                  "300", "--max-batch", str(max_batch)]
    plain = _serve_json(base + ["--slo", "3"])["candidates"][0]
    paced = _serve_json(base + ["--slo", "6", "--replica-pace", "2,2"])["candidates"][0]
    assert plain["capacity_rps"] > 0
    assert paced["capacity_rps"] == pytest.approx(plain["capacity_rps"] / 2, rel=1e-12)
    assert paced["bound_rps"] == pytest.approx(plain["bound_rps"] / 2, rel=1e-12)


def test_a_pace_of_one_changes_nothing(tmp_path: Path) -> None:
    argv = ONE + ["--gpus", "4", "--mix", "512:0.5,1024:0.5", "--replicas", "2x1,1x2",
                  "--rate", "0.8", "--requests", "300", "--slo", "4x"]
    a_trace, b_trace = tmp_path / "a.csv", tmp_path / "b.csv"
    a = _serve_json(argv + ["--trace", str(a_trace)])
    b = _serve_json(argv + ["--replica-pace", "1,1,1", "--trace", str(b_trace)])
    assert b.pop("replica_pace") == [1.0, 1.0, 1.0]
    for res in (a, b):
        res.pop("elapsed_s")
    assert a == b
    assert a_trace.read_bytes() == b_trace.read_bytes()


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--replicas", "2x1", "--replica-pace", "0,1"], "--replica-pace must be positive"),
    (["--replicas", "2x1", "--replica-pace", "1,-1"], "--replica-pace must be positive"),
    (["--replicas", "2x1", "--replica-pace", "nan,1"], "--replica-pace must be positive"),
    (["--replicas", "2x1", "--replica-pace", "1,inf"], "--replica-pace must be positive"),
    (["--replicas", "2x1", "--replica-pace", "1,fast"], "'fast' is not a number"),
    (["--replicas", "2x1", "--replica-pace", "1.1"], "1 factor(s) for 2 replica(s)"),
    (["--replicas", "1x2", "--replica-pace", "1,1"], "2 factor(s) for 1 replica(s)"),
    (["--replica-pace", "1,1"], "--replica-pace applies to --replicas"),
    (["--replicas", "2x1", "--replica-pace", "2048=1,1"], "unknown class '2048'"),
    (["--replicas", "2x1", "--replica-pace", "1024=0/1024=1,1"], "must be positive"),
    (["--replicas", "2x1", "--replica-pace", "1024=x,1"], "'1024=x' is not a number"),
])
def test_bad_pace_is_one_error_line(extra: list[str], fragment: str) -> None:
    code, out, err = run_cli(serve_main, ONE + ["--gpus", "2", "--requests", "50", "--rate",
                                                "0.1", *extra])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err


def test_a_per_class_pace_scales_each_class_by_its_own_factor(tmp_path: Path) -> None:
    # One replica, two classes, requests far apart (no queue): each request takes its class's
    # isolated latency times that class's factor, and naming one factor for every class is
    # the single-factor form (printed back as one number).
    argv = ONE + ["--gpus", "1", "--mix", "512:0.5,1024:0.5", "--replicas", "1x1",
                  "--rate", "0.01", "--requests", "1", "--no-capacity"]
    iso = _serve_json(argv)["widths"][0]["isolated_latency_s"]
    gap = 10 * max(iso.values())
    trace = tmp_path / "t.csv"
    with trace.open("w") as f:
        f.write("arrival_s,model,width,height,steps,slo_s\n")
        for i, px in enumerate([512, 1024, 1024, 512]):
            f.write(f"{i * gap!r},pixart,{px},{px},20,1e6\n")
    out = tmp_path / "timeline.csv"
    base = ONE + ["--gpus", "1", "--replicas", "1x1", "--replay", str(trace), "--no-capacity"]
    res = _serve_json(base + ["--replica-pace", "512=1.5/1024=0.75", "--trace", str(out)])
    assert res["replica_pace"] == [{"512": 1.5, "1024": 0.75}]
    factor = {"512": 1.5, "1024": 0.75}
    header, *rows = out.read_text().splitlines()
    cols = header.split(",")
    assert len(rows) == 4
    for line in rows:
        row = dict(zip(cols, line.split(",")))
        name = row["class"]
        assert float(row["finish_s"]) - float(row["arrival_s"]) == pytest.approx(
            factor[name] * iso[name], rel=1e-12)
    same = _serve_json(base + ["--replica-pace", "512=1.25/1024=1.25"])
    assert same["replica_pace"] == [1.25]
    assert _rows(same) == _rows(_serve_json(base + ["--replica-pace", "1.25"]))
