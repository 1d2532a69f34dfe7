"""sim.serve: the serving simulation against queueing theory, its policies' exact properties,
capacity, trace replay, reproducibility and bad input.

Closed forms: the mean waiting time of an M/G/1 queue is Pollaczek-Khinchine's
``Wq = rate * E[S^2] / (2 * (1 - rho))``: ``rho / (mu - rate)`` for exponential service
(M/M/1), ``rho * S / (2 * (1 - rho))`` for a constant one (M/D/1). A simulated mean is compared
with it within four standard errors estimated by batch means (batches far longer than the
queue's relaxation time), and the standard error itself must be small (enough requests), so
the check can fail either way. Seeds are fixed: the runs are reproducible.
"""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pytest

from sim.arrivals import Request, RequestClass, parse_mix, read_trace, unit_stream
from sim.errors import UserError
from sim.serve import main as serve_main
from sim.serving import Policy, simulate_pool
from sim.stats import quantile
from tests.conftest import run_cli


def _serve(argv: list[str]) -> tuple[int, str, str]:
    """Run ``python -m sim.serve argv`` in-process: (exit status, stdout, stderr)."""
    return run_cli(serve_main, argv)


def _serve_json(argv: list[str]) -> dict:
    code, out, err = _serve(argv + ["--json"])
    assert code == 0, err
    return json.loads(out)


def _timeline(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _batch_means(values: list[float], batches: int = 20) -> tuple[float, float]:
    """Mean of ``values`` and its standard error from ``batches`` consecutive batch means."""
    n = len(values) // batches
    means = [sum(values[i * n:(i + 1) * n]) / n for i in range(batches)]
    mean = sum(means) / batches
    var = sum((m - mean) ** 2 for m in means) / (batches - 1)
    return mean, math.sqrt(var / batches)


def _poisson(rate: float, count: int, seed: int) -> list[Request]:
    stream = unit_stream([RequestClass(1024, 1024, 20, 1.0)], count, 1.0, seed)
    return [Request(r.index, r.cls, r.arrival_s / rate, r.slo_s) for r in stream]


def _waits(served) -> list[float]:
    return [s.wait_s for s in served]


# --- closed forms ---------------------------------------------------------------------------

def test_mm1_mean_wait_matches_pollaczek_khinchine() -> None:
    rate, mu = 0.5, 1.0
    rng = random.Random(7)
    run = simulate_pool(_poisson(rate, 60000, seed=3), [1],
                        lambda r, req: rng.expovariate(mu), lambda req: 1e9, Policy())
    mean, se = _batch_means(_waits(run.served))
    rho = rate / mu
    exact = rho / (mu - rate)  # PK with E[S^2] = 2 / mu^2
    assert se < 0.05 * exact  # enough requests for the comparison to mean something
    assert abs(mean - exact) < 4 * se, (mean, exact, se)


def test_md1_mean_wait_matches_pollaczek_khinchine() -> None:
    rate, service = 0.6, 1.0
    run = simulate_pool(_poisson(rate, 60000, seed=11), [1], lambda r, req: service,
                        lambda req: 1e9, Policy())
    mean, se = _batch_means(_waits(run.served))
    rho = rate * service
    exact = rho * service / (2 * (1 - rho))
    assert se < 0.05 * exact
    assert abs(mean - exact) < 4 * se, (mean, exact, se)


def test_mg1_through_the_command_matches_pollaczek_khinchine(tmp_path: Path) -> None:
    """Two classes of simulated latencies on one GPU, Poisson arrivals, the whole command:
    the mean waiting time is PK's with the mix's first two moments of service time."""
    trace = tmp_path / "t.csv"
    argv = ["--model", "pixart", "--gpus", "1", "--mix", "512:0.6,1024:0.4", "--replicas",
            "1x1", "--requests", "40000", "--seed", "5", "--no-capacity", "--quiet",
            "--trace", str(trace)]
    first = _serve_json(argv + ["--rate", "1"])  # only for the latencies
    lat = first["widths"][0]["isolated_latency_s"]
    shares = {"512": 0.6, "1024": 0.4}
    es = sum(shares[c] * lat[c] for c in shares)
    es2 = sum(shares[c] * lat[c] ** 2 for c in shares)
    rate = 0.6 / es  # rho = 0.6
    _serve_json(argv + ["--rate", repr(rate)])
    rows = _timeline(trace)
    waits = [float(r["start_s"]) - float(r["arrival_s"]) for r in rows]
    mean, se = _batch_means(waits)
    exact = rate * es2 / (2 * (1 - rate * es))
    assert se < 0.06 * exact
    assert abs(mean - exact) < 4 * se, (mean, exact, se)


def test_single_replica_at_low_load_has_the_isolated_latency(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    res = _serve_json(["--model", "pixart", "--gpus", "2", "--replicas",
                       "1x2:pipefusion=2/patches=4/warmup=1", "--rate", "1e-4",
                       "--requests", "200", "--no-capacity", "--quiet", "--trace", str(trace)])
    isolated = res["widths"][0]["isolated_latency_s"]["1024"]
    rows = _timeline(trace)
    assert len(rows) == 200
    # At 1e-4 req/s the arrivals reach 2e6 s, where float spacing is about 5e-10 s: latency
    # (finish - arrival) is the isolated one to 1e-9, not to the last bit.
    for r in rows:
        assert float(r["start_s"]) == float(r["arrival_s"])  # nobody waited
        assert float(r["latency_s"]) == pytest.approx(isolated, rel=1e-9)
    overall = res["candidates"][0]["at_rate"]["overall"]
    assert overall["latency_s"]["p99"] == pytest.approx(isolated, rel=1e-9)
    assert overall["queueing_s"]["p99"] == pytest.approx(0.0, abs=1e-9)


# --- policies -------------------------------------------------------------------------------

def test_edf_equals_fcfs_when_every_request_has_the_same_slo() -> None:
    """Deadlines = arrival + one SLO: earliest deadline is first come."""
    stream = _poisson(0.9, 3000, seed=2)
    runs = [simulate_pool(stream, [1, 1], lambda r, req: 1.0 + 0.5 * r, lambda req: 5.0,
                          Policy("jsq", q)) for q in ("fcfs", "edf")]
    fcfs, edf = ([(s.replica, s.start_s, s.finish_s) for s in run.served] for run in runs)
    assert max(s.wait_s for s in runs[0].served) > 1.0  # the queues were not empty
    assert fcfs == edf


def test_edf_minimises_maximum_lateness_for_simultaneous_arrivals(tmp_path: Path) -> None:
    """Jackson's rule: requests released together on one server, served in deadline order,
    have the least maximum lateness of any order; FCFS (file order) is one such order."""
    rows = [(0.0, 1024, 1024, 20, slo) for slo in (90, 30, 60, 10, 120, 20)]
    trace = tmp_path / "in.csv"
    trace.write_text("arrival_s,model,width,height,steps,slo_s\n" + "".join(
        f"{a},pixart,{w},{h},{s},{slo}\n" for a, w, h, s, slo in rows))
    lateness = {}
    order = {}
    for q in ("fcfs", "edf"):
        out = tmp_path / f"{q}.csv"
        _serve_json(["--model", "pixart", "--gpus", "1", "--replicas", "1x1", "--replay",
                     str(trace), "--queue", q, "--quiet", "--trace", str(out)])
        tl = _timeline(out)
        lateness[q] = max(float(r["finish_s"]) - float(r["deadline_s"]) for r in tl)
        order[q] = [float(r["deadline_s"]) for r in sorted(tl, key=lambda r: float(r["start_s"]))]
    assert order["edf"] == sorted(order["edf"])
    assert order["fcfs"] != sorted(order["fcfs"])
    assert lateness["edf"] < lateness["fcfs"]


def test_admission_under_fcfs_serves_only_requests_that_finish_in_time() -> None:
    """With known service times a FCFS queue's predicted finish is exact, so admission
    control never lets a late request in; without it, the same load makes some late."""
    stream = _poisson(2.5, 4000, seed=4)

    def run(admission: bool):
        return simulate_pool(stream, [1, 1], lambda r, req: 1.0, lambda req: 2.5,
                             Policy("lwl", "fcfs", admission)).served

    on, off = run(True), run(False)
    assert all(s.good for s in on if not s.dropped)
    assert any(s.dropped for s in on)
    assert any(not s.good for s in off)


def test_least_work_left_at_low_load_uses_the_fastest_replica() -> None:
    stream = _poisson(0.001, 300, seed=8)
    served = simulate_pool(stream, [1, 4, 2], lambda r, req: (3.0, 1.0, 2.0)[r],
                           lambda req: 10.0, Policy("lwl")).served
    assert {s.replica for s in served} == {1}


def test_pools_send_each_class_only_to_its_replicas() -> None:
    classes = [RequestClass(1024, 1024, 20, 0.5), RequestClass(2048, 2048, 20, 0.5)]
    stream = [Request(r.index, r.cls, r.arrival_s / 3) for r in unit_stream(classes, 2000,
                                                                             1.0, 1)]
    served = simulate_pool(stream, [1, 1, 4], lambda r, req: 1.0, lambda req: 10.0,
                           Policy("pools", pools=((0, 1), (2,)))).served
    assert {s.replica for s in served if s.request.cls == 0} == {0, 1}
    assert {s.replica for s in served if s.request.cls == 1} == {2}


def test_slo_multiples_refer_to_the_one_gpu_latency_of_each_class() -> None:
    res = _serve_json(["--model", "pixart", "--gpus", "4", "--mix", "1024:0.5,2048:0.5",
                       "--slo", "1.5x,2048:40", "--replicas", "1x4", "--requests", "200",
                       "--quiet"])
    by_name = {c["name"]: c for c in res["classes"]}
    serial = _serve_json(["--model", "pixart", "--gpus", "1", "--mix", "1024:0.5,2048:0.5",
                          "--replicas", "1x1", "--requests", "50", "--quiet", "--slo", "100"])
    one_gpu = serial["widths"][0]["isolated_latency_s"]
    assert by_name["1024"]["reference_gpus"] == 1
    assert by_name["1024"]["slo_s"] == pytest.approx(1.5 * one_gpu["1024"])
    assert by_name["2048"]["slo_s"] == 40.0


# --- capacity and search --------------------------------------------------------------------

def test_capacity_grows_with_the_pool() -> None:
    caps = []
    for gpus in (1, 2, 4):
        res = _serve_json(["--model", "pixart", "--gpus", str(gpus), "--mix",
                           "1024:0.7,2048:0.3", "--slo", "2x", "--requests", "600", "--quiet"])
        best = res["candidates"][0]
        assert 0 < best["capacity_rps"] <= best["bound_rps"]
        caps.append(best["capacity_rps"])
    assert caps[0] < caps[1] < caps[2], caps


def test_capacity_meets_the_target_and_just_above_misses_it(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    base = ["--model", "pixart", "--gpus", "4", "--replicas", "2x2", "--slo", "2x",
            "--requests", "800", "--quiet"]
    cap = _serve_json(base)["candidates"][0]["capacity_rps"]
    for rate, meets in ((cap, True), (cap * 1.1, False)):
        res = _serve_json(base + ["--rate", repr(rate), "--no-capacity", "--trace", str(trace)])
        att = res["candidates"][0]["at_rate"]["overall"]["attainment"]
        assert (att >= 0.9) == meets, (rate, att)


def test_above_the_bound_the_target_is_missed() -> None:
    """The bound is a real limit, not only a cap: 20 % above it the pool is overloaded and
    misses the target (here with a loose SLO, so only throughput limits)."""
    base = ["--model", "pixart", "--gpus", "2", "--replicas", "2x1", "--slo", "20x",
            "--requests", "3000", "--quiet"]
    bound = _serve_json(base)["candidates"][0]["bound_rps"]
    res = _serve_json(base + ["--rate", repr(1.2 * bound), "--no-capacity"])
    assert res["candidates"][0]["at_rate"]["overall"]["attainment"] < 0.9


def test_search_ranks_by_capacity_and_reports_the_recommendation() -> None:
    code, out, err = _serve(["--model", "pixart", "--gpus", "4", "--mix",
                             "1024:0.7,2048:0.3", "--rate", "0.2", "--price", "2",
                             "--requests", "400", "--quiet"])
    assert code == 0, err
    assert "recommended:" in out and "why:" in out and "cost/1k" in out
    res = _serve_json(["--model", "pixart", "--gpus", "4", "--mix", "1024:0.7,2048:0.3",
                       "--rate", "0.2", "--requests", "400", "--quiet"])
    caps = [c["capacity_rps"] for c in res["candidates"] if c["capacity_rps"] is not None]
    assert caps == sorted(caps, reverse=True)
    assert {c["split"] for c in res["candidates"]} >= {"4x1", "2x2", "1x4", "1x2 + 2x1"}


def test_same_seed_same_answer_other_seed_other_stream() -> None:
    argv = ["--model", "pixart", "--gpus", "2", "--replicas", "2x1", "--rate", "0.5",
            "--requests", "300", "--no-capacity", "--quiet"]
    a, b = _serve_json(argv), _serve_json(argv)
    c = _serve_json(argv + ["--seed", "1"])
    for d in (a, b, c):
        d.pop("elapsed_s")
    assert a == b
    assert a["candidates"] != c["candidates"]


# --- arrivals and traces --------------------------------------------------------------------

def test_gamma_arrivals_have_the_asked_mean_and_variation() -> None:
    xs = [r.arrival_s for r in unit_stream([RequestClass(1024, 1024, 20, 1.0)], 40000, 2.0, 9)]
    gaps = [b - a for a, b in zip([0.0] + xs, xs)]
    mean = sum(gaps) / len(gaps)
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / (len(gaps) - 1))
    # Gamma of shape 1/4: relative standard errors about 1 % (mean) and 2 % (CV) here.
    assert mean == pytest.approx(1.0, rel=0.05)
    assert sd / mean == pytest.approx(2.0, rel=0.08)


def test_mix_shares_and_classes() -> None:
    classes = parse_mix("1024:0.7,2048x1024@30:0.3", 512, 512, 20)
    assert [(c.width, c.height, c.steps) for c in classes] == [(1024, 1024, 20),
                                                                (2048, 1024, 30)]
    stream = unit_stream(classes, 20000, 1.0, 0)
    share = sum(1 for r in stream if r.cls == 0) / len(stream)
    assert share == pytest.approx(0.7, abs=4 * math.sqrt(0.21 / 20000))


def test_trace_replay_reads_sorts_and_keeps_per_request_slos(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text("arrival_s,model,width,height,steps,slo_s\n"
                    "100,pixart,1024,1024,20,\n"
                    "0,pixart-alpha,2048,2048,20,50\n"
                    "200,pixart,1024,1024,20,9\n")
    classes, stream = read_trace(path, "pixart")
    assert [(c.width, c.steps) for c in classes] == [(2048, 20), (1024, 20)]
    assert [c.weight for c in classes] == pytest.approx([1 / 3, 2 / 3])
    assert [(r.arrival_s, r.cls, r.slo_s) for r in stream] == [(0.0, 0, 50.0), (100.0, 1, None),
                                                              (200.0, 1, 9.0)]
    out = tmp_path / "tl.csv"
    res = _serve_json(["--model", "pixart", "--gpus", "1", "--replicas", "1x1", "--replay",
                       str(path), "--slo", "10", "--quiet", "--trace", str(out)])
    lat = res["widths"][0]["isolated_latency_s"]
    rows = _timeline(out)
    # Far apart: each request alone, so latency = isolated; deadlines from its own SLO.
    assert [float(r["latency_s"]) for r in rows] == pytest.approx([lat["2048"], lat["1024"],
                                                                  lat["1024"]])
    assert [float(r["deadline_s"]) for r in rows] == pytest.approx([50.0, 110.0, 209.0])
    assert [int(r["within_slo"]) for r in rows] == [1, 1, 1]


def test_trace_whose_own_slos_cannot_be_met_has_capacity_zero(tmp_path: Path) -> None:
    """Per-request SLOs (0.1 s) below any latency: the bound cannot tell (a trace's SLOs are
    per request), so the bisection halves down to an idle pool and reports 0."""
    path = tmp_path / "trace.csv"
    path.write_text("".join(f"{10.0 * i},pixart,1024,1024,20,0.1\n" for i in range(40)))
    res = _serve_json(["--model", "pixart", "--gpus", "1", "--replicas", "1x1", "--replay",
                       str(path), "--quiet"])
    assert res["candidates"][0]["bound_rps"] > 0
    assert res["candidates"][0]["capacity_rps"] == 0.0


def test_trace_replay_time_scaled_to_a_rate(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    path.write_text("".join(f"{10.0 * i},pixart,1024,1024,20\n" for i in range(50)))
    out = tmp_path / "tl.csv"
    _serve_json(["--model", "pixart", "--gpus", "1", "--replicas", "1x1", "--replay",
                 str(path), "--rate", "0.5", "--no-capacity", "--quiet", "--trace", str(out)])
    arrivals = [float(r["arrival_s"]) for r in _timeline(out)]
    # 50 requests over 490 s is 50/490 req/s; at 0.5 req/s they are 490 / 50 / 0.5 / 10 as far.
    assert arrivals[1] - arrivals[0] == pytest.approx(10.0 * (50 / 490) / 0.5)


def test_metrics_quantiles_use_sim_stats() -> None:
    stream = _poisson(0.8, 500, seed=1)
    run = simulate_pool(stream, [1], lambda r, req: 1.0, lambda req: 3.0, Policy())
    from sim.serve_metrics import summarize
    s = summarize(run, ["1024"], price_per_gpu_hour=3.6)
    lats = sorted(x.latency_s for x in run.served)
    assert s.overall["latency_s"]["p90"] == quantile(lats, 0.9)
    good = sum(1 for x in run.served if x.good)
    assert s.overall["attainment"] == good / 500
    assert s.cost_per_1000_good == pytest.approx(3.6 * s.window_s / 3600 / good * 1000)
    assert s.busy_fraction == pytest.approx(500 * 1.0 / s.window_s)


# --- bad input ------------------------------------------------------------------------------

BASE = ["--model", "pixart", "--gpus", "2", "--requests", "50", "--quiet"]


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--rate", "0"], "--rate must be positive"),
    (["--rate", "-1"], "--rate must be positive"),
    (["--rate", "nan"], "--rate must be positive"),
    (["--mix", "1024:0.6,2048:0.3"], "sum to 0.9, not 1"),
    (["--mix", "1024:0.6,1024:0.4"], "twice"),
    (["--mix", "1024"], "SIZE[@STEPS]:WEIGHT"),
    (["--mix", "1000:1"], "not a multiple of 16"),
    (["--slo", "4096:3"], "unknown class '4096'"),
    (["--mix", "1024:0.5,2048:0.5", "--slo", "1024:3"], "no SLO for class 2048"),
    (["--slo", "0.1"], "below its isolated latency on every replica width"),
    (["--slo", "fast"], "neither seconds nor Kx"),
    (["--replicas", "3x1"], "uses 3 GPUs but --gpus is 2"),
    (["--replicas", "2"], "COUNTxGPUS"),
    (["--replicas", "1x2:pipefusion=3"], "multiply to 3"),
    (["--router", "random"], "unknown 'random'"),
    (["--replicas", "2x1", "--router", "pools"], "needs --pools"),
    (["--replicas", "2x1", "--router", "jsq,lwl"], "one --router"),
    (["--target", "1.5"], "--target must be"),
    (["--requests", "0"], "--requests must be at least 1"),
    (["--no-capacity"], "--no-capacity needs --replicas"),
    (["--widths", "3"], "does not pack"),
    (["--mix", "1024:0.5,2048:0.5", "--replicas", "1x2", "--router", "pools", "--pools",
      "4096:2"], "unknown class '4096'"),
    (["--mix", "1024:0.5,2048:0.5", "--replicas", "1x2", "--router", "pools", "--pools",
      "1024:2"], "no replicas to class 2048"),
    (["--pools", "1024:1"], "--pools applies to --replicas"),
    (["--cv", "0"], "--cv must be positive"),
    (["--price", "-2"], "--price must be positive"),
])
def test_bad_input_is_one_error_line(argv: list[str], fragment: str) -> None:
    code, out, err = _serve(BASE + argv)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(("content", "fragment"), [
    ("", "no requests (an empty trace)"),
    ("arrival_s,model,width,height,steps\n", "no requests (an empty trace)"),
    ("0,flux,1024,1024,20\n", "the pool serves pixart-alpha"),
    ("0,pixart,1024\n", "expected arrival_s,model,width,height,steps"),
    ("x,pixart,1024,1024,20\n", "must be numbers"),
    ("-1,pixart,1024,1024,20\n", "arrival_s must be finite and >= 0"),
    ("0,pixart,1024,1024,20,0\n", "slo_s must be positive"),
    ("0,nosuch,1024,1024,20\n", "unknown model"),
])
def test_bad_trace_is_one_error_line(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    code, out, err = _serve(BASE + ["--replay", str(path)])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err


def test_mix_with_replay_and_missing_trace_are_refused(tmp_path: Path) -> None:
    code, _, err = _serve(BASE + ["--replay", str(tmp_path / "none.csv")])
    assert code == 2 and "no such file" in err
    path = tmp_path / "t.csv"
    path.write_text("0,pixart,1024,1024,20\n")
    code, _, err = _serve(BASE + ["--replay", str(path), "--mix", "1024:1"])
    assert code == 2 and "drop --mix" in err


def test_parse_mix_refuses_non_positive_weights() -> None:
    with pytest.raises(UserError, match="positive"):
        parse_mix("1024:0,2048:1", 1024, 1024, 20)
