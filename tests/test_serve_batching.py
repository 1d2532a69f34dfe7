"""sim.serve --max-batch: batching of same-class requests.

What is checked, each against something computed another way:

- the op shapes carry the batch (``Workload.images``), and a batch's latency in a run is the
  engine's own prediction for that batch (``sim.evaluate`` called directly), between one and
  ``b`` times a single request's;
- a limit of 1 everywhere, run through the batching bookkeeping, reproduces the unbatched
  run exactly (every request's replica, start and finish) on a seeded workload with admission
  control, for both routers and both queue disciplines;
- under heavy load batches form, never mix classes, and the capacity of a compute-bound small
  model rises with batching;
- memory caps the batch at what ``sim.memory`` says fits, and ``--json`` says so;
- the throughput bound stays an upper bound with batching;
- ``--max-batch`` below 1 is one ``error:`` line, exit 2.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import pytest

from sim.arrivals import parse_mix, scaled, unit_stream
from sim.capacity import ServeModel, Split
from sim.config import ParallelConfig, Workload
from sim.cost import CostSpec
from sim.evaluate import evaluate
from sim.hardware import get_gpu
from sim.memory import memory_per_rank
from sim.models import get_model
from sim.replicas import Cluster, ReplicaGroup, ServiceTable
from sim.schedule import Compute
from sim.serve import build_parser, plan_pool
from sim.serve import main as serve_main
from sim.serving import Batching, Policy, simulate_pool
from sim.strategies import build_schedule
from tests.conftest import run_cli


def _serve(argv: list[str]) -> tuple[int, str, str]:
    """Run ``python -m sim.serve argv`` in-process: (exit status, stdout, stderr)."""
    return run_cli(serve_main, argv)


def _json(argv: list[str]) -> dict:
    code, out, err = _serve(argv + ["--json", "--quiet"])
    assert code == 0, err
    return json.loads(out)


# A small, compute-light class on two 1-GPU replicas: batching amortises the per-op overheads
# and the weight reads (the engine's latency of 4 is well under 4 x one's).
SMALL = ["--model", "pixart", "--gpu", "l40", "--gpus", "2", "--link", "pcie",
         "--resolution", "512", "--steps", "20", "--replicas", "2x1", "--slo", "20x",
         "--requests", "400"]


def _batches(served) -> dict[tuple[int, float], list]:
    """Requests grouped by the batch they ran in (same replica, same start)."""
    out: dict[tuple[int, float], list] = defaultdict(list)
    for s in served:
        if not s.dropped:
            out[(s.replica, s.start_s)].append(s)
    return out


def test_op_shapes_carry_the_batch():
    m = get_model("pixart")
    for cfg in (ParallelConfig(1), ParallelConfig(2, cfg=2),
                ParallelConfig(4, pipefusion=4, patches=4, warmup=1),
                ParallelConfig(2, distrifusion=2, warmup=1)):
        one = build_schedule(Workload(m, 512, 512, 4), cfg)
        three = build_schedule(Workload(m, 512, 512, 4, images=3), cfg)
        assert three.batch == 3 * one.batch
        for r1, r3 in zip(one.ranks, three.ranks):
            assert len(r1) == len(r3)
            for a, b in zip(r1, r3):
                assert type(a) is type(b)
                if isinstance(a, Compute):
                    assert b.batch == 3 * a.batch, (cfg.label(), a.kind)
                elif hasattr(a, "nbytes") and a.nbytes:
                    assert b.nbytes == 3 * a.nbytes, (cfg.label(), a)
    with pytest.raises(Exception, match="at least 1"):
        Workload(m, 512, 512, 4, images=0)


def test_batch_latency_is_the_engines_prediction():
    args = build_parser().parse_args(SMALL + ["--max-batch", "4", "--rate", "8",
                                              "--no-capacity", "--quiet"])
    plan = plan_pool(args)
    run = plan.timeline
    assert run is not None
    sizes = Counter(s.batch for s in run.served)
    assert max(sizes) > 1  # batches formed at this load
    m, gpu = get_model("pixart"), get_gpu("l40")
    cfg = ParallelConfig(1)
    topo = Cluster(gpu, 2, "pcie").topology(1)
    single = None
    for b in sorted(sizes):
        wl = Workload(m, 512, 512, 20, images=b)
        spec = CostSpec()
        want = evaluate(wl, cfg, gpu, topo, spec.build(wl, gpu, 1.0), 1.0, fast=True,
                        spec=spec).latency_s
        got = {s.finish_s - s.start_s for s in run.served if s.batch == b}
        assert all(abs(g - want) <= 1e-9 * want for g in got), (b, got, want)
        assert all(s.service_s == want for s in run.served if s.batch == b)
        if b == 1:
            single = want
        else:
            assert single is not None and single < want < b * single
    # Every request of a batch starts and finishes with it, and Served.batch is its size.
    for members in _batches(run.served).values():
        assert len({s.finish_s for s in members}) == 1
        assert all(s.batch == len(members) for s in members)


@pytest.mark.parametrize("router,queue", [("lwl", "fcfs"), ("lwl", "edf"), ("jsq", "edf")])
def test_limit_one_reproduces_the_unbatched_run(router, queue):
    # Two classes on three replicas of different speeds, near saturation, with admission
    # control. The limits are 1 for both classes; a third class that never arrives has a limit
    # of 2, so the run goes through the batching bookkeeping (lwl's drain times, admission's
    # batch walk, batch formation) instead of the unbatched shortcut.
    classes = parse_mix("512:0.6,1024:0.4", 512, 512, 20)
    stream = scaled(unit_stream(classes, 1500, 1.0, 7), 1 / 1.6)
    service = [[0.5, 1.9], [0.8, 2.9], [0.3, 1.1]]
    slo = {0: 2.0, 1: 6.0}
    policy = Policy(router, queue, admission=True)
    old = simulate_pool(stream, [1, 1, 2], service, lambda q: slo[q.cls], policy)
    limit = [[1, 1, 2]] * 3
    new = simulate_pool(stream, [1, 1, 2], service, lambda q: slo[q.cls], policy,
                        batching=Batching(limit, lambda r, c, b: b * service[r][c]))
    assert sum(s.dropped for s in old.served) > 0  # admission control acted
    assert [(s.replica, s.start_s, s.finish_s) for s in old.served] == \
        [(s.replica, s.start_s, s.finish_s) for s in new.served]
    assert old.busy_s == new.busy_s
    assert old.idle_while_queued_gpu_s == new.idle_while_queued_gpu_s


def test_batch_one_flag_is_the_default():
    base = _json(SMALL + ["--rate", "6"])
    one = _json(SMALL + ["--rate", "6", "--max-batch", "1"])
    for d in (base, one):
        d.pop("elapsed_s")
    assert base == one
    assert base["candidates"][0]["at_rate"]["batches"]["mean_size"] == 1.0


def test_batches_form_and_raise_capacity_of_a_small_model():
    one = _json(SMALL + ["--rate", "8"])
    four = _json(SMALL + ["--rate", "8", "--max-batch", "4"])
    c1, c4 = one["candidates"][0], four["candidates"][0]
    assert c4["max_batch"] == 4
    batches = c4["at_rate"]["batches"]
    assert batches["mean_size"] > 1.5
    hist = {int(k): v for k, v in batches["histogram"].items()}
    assert sum(hist.values()) == batches["count"]
    assert sum(k * v for k, v in hist.items()) == c4["at_rate"]["overall"]["served"]
    assert max(hist) <= 4
    # Amortised per-request time of a batch of 4 is below one request's: more capacity.
    lat = four["widths"][0]["batch_latency_s"]["512"]
    assert lat[3] / 4 < lat[0]
    assert c4["capacity_rps"] > c1["capacity_rps"]
    assert c4["at_rate"]["overall"]["attainment"] > c1["at_rate"]["overall"]["attainment"]


def test_classes_never_share_a_batch():
    args = build_parser().parse_args([
        "--model", "pixart", "--gpu", "l40", "--gpus", "2", "--link", "pcie",
        "--mix", "512:0.5,768:0.3,512@10:0.2", "--replicas", "2x1", "--slo", "20x",
        "--requests", "600", "--max-batch", "8", "--rate", "8", "--no-capacity",
        "--quiet"])
    run = plan_pool(args).timeline
    assert run is not None
    groups = _batches(run.served)
    mixed = [len({s.request.cls for s in members}) for members in groups.values()]
    assert max(mixed) == 1
    formed = Counter(members[0].request.cls for members in groups.values()
                     if len(members) > 1)
    assert len(formed) == 3  # every class batched, so the check above had batches to see


def test_memory_caps_the_batch():
    # PixArt at 2048 px on one 16 GB T4: activations and K,V grow with the batch.
    argv = ["--model", "pixart", "--gpu", "t4", "--gpus", "1", "--link", "pcie",
            "--resolution", "2048", "--steps", "20", "--replicas", "1x1", "--slo", "100x",
            "--requests", "200", "--max-batch", "16", "--rate", "1", "--no-capacity"]
    d = _json(argv)
    width = d["widths"][0]
    k = width["batch_limit"]["2048"]
    assert 1 < k < 16
    assert width["batch_memory_capped"]["2048"] is True
    assert len(width["batch_latency_s"]["2048"]) == k
    # sim.memory itself: a batch of k fits on the T4, one of k + 1 does not.
    gpu, m = get_gpu("t4"), get_model("pixart")
    for b, fits in ((k, True), (k + 1, False)):
        wl = Workload(m, 2048, 2048, 20, images=b)
        cfg = ParallelConfig(1)
        peak = max(x.total for x in memory_per_rank(wl, cfg, build_schedule(wl, cfg), gpu))
        assert (peak <= gpu.memory_bytes) is fits, (b, peak)
    hist = {int(s): n for s, n in d["candidates"][0]["at_rate"]["batches"]["histogram"].items()}
    assert max(hist) == k  # overloaded: batches form up to the memory limit, never beyond


def test_bound_stays_an_upper_bound_with_batching():
    m, gpu = get_model("pixart"), get_gpu("l40")
    classes = parse_mix("512:0.7,1024:0.3", 512, 512, 20)
    table = ServiceTable(m, classes, Cluster(gpu, 2, "pcie"))
    stream = unit_stream(classes, 400, 1.0, 3)
    refs = [table.latency(ParallelConfig(1), c) for c in range(2)]
    model = ServeModel(table, [20 * r for r in refs], "fcfs", False, stream)
    groups = (ReplicaGroup(2, 1, ParallelConfig(1)),)
    b1 = model.bound(Split(groups, "lwl"), 0.9)
    b4 = model.bound(Split(groups, "lwl", None, 4), 0.9)
    assert b4 > b1  # the bound counts the batch's amortisation
    split = Split(groups, "lwl", None, 4)
    # Bisect without the bound's cap (ten times above it): what is found must not exceed it.
    found = model.capacity(split, 0.9, bound=10 * b4)
    assert found is not None and 0 < found <= b4


@pytest.mark.parametrize("value", ["0", "-2"])
def test_bad_max_batch(value):
    code, out, err = _serve(SMALL + ["--max-batch", value, "--rate", "1"])
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --max-batch"), err

