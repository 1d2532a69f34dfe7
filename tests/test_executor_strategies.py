"""The executor's other strategies against diffusers itself (issue 11): CFG parallel, Ulysses,
ring attention, tensor parallel and DistriFusion at two CPU processes, hybrids at four.

Every configuration of one process count shares one torchrun launch (``executor.batch``).
Ulysses, ring, tensor and CFG parallelism are exact reformulations of the pipeline's
computation, so their final latents equal ``PixArtAlphaPipeline``'s up to float32 reordering;
DistriFusion equals it when every step is a warmup step.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("torch.distributed")

from executor.run import main as run_main  # noqa: E402
from sim.config import ParallelConfig, Workload  # noqa: E402
from sim.models import get_model  # noqa: E402
from sim.predict import build_parser as predict_parser  # noqa: E402
from sim.predict import predict  # noqa: E402
from sim.strategies import build_schedule  # noqa: E402
from sim.trace import Trace  # noqa: E402
from tests.test_executor import (  # noqa: E402
    BASE,
    HANG_GUARD_S,
    MODEL,
    RES,
    STEPS,
    TOL,
    _launch_ranks,
    _rel_diff,
    _torchrun,
    pipeline_reference,
)
from validation.compare import join_traces  # noqa: E402

TWO = {  # name -> (executor flags, ParallelConfig degrees); two CPU processes each
    "cfg2": ("--cfg 2", dict(cfg=2)),
    "ulysses2": ("--ulysses 2", dict(ulysses=2)),
    "ring2": ("--ring 2", dict(ring=2)),
    # Two runs: every run of a process starts from the same state (the shards included).
    "tensor2": ("--tensor 2 --runs 2", dict(tensor=2)),
    "distrifusion2_w8": ("--distrifusion 2 --warmup 8", dict(distrifusion=2, warmup=8)),
    "distrifusion2_w0": ("--distrifusion 2 --warmup 0", dict(distrifusion=2, warmup=0)),
    "distrifusion2_w1": ("--distrifusion 2 --warmup 1", dict(distrifusion=2, warmup=1)),
    "distrifusion2_w2": ("--distrifusion 2 --warmup 2", dict(distrifusion=2, warmup=2)),
    "distrifusion2_w4": ("--distrifusion 2 --warmup 4", dict(distrifusion=2, warmup=4)),
    "pipefusion2_m2_w1": ("--patches 2 --warmup 1", dict(pipefusion=2, patches=2, warmup=1)),
}
FOUR = {  # hybrids on four CPU processes
    "cfg2_pipefusion2": ("--cfg 2 --pipefusion 2 --patches 2 --warmup 8",
                         dict(cfg=2, pipefusion=2, patches=2, warmup=8)),
    "ulysses2_ring2": ("--ulysses 2 --ring 2", dict(ulysses=2, ring=2)),
    "pipefusion2_ulysses2": ("--pipefusion 2 --ulysses 2 --patches 2 --warmup 8",
                             dict(pipefusion=2, ulysses=2, patches=2, warmup=8)),
    "cfg2_tensor2": ("--cfg 2 --tensor 2", dict(cfg=2, tensor=2)),
    "cfg2_distrifusion2": ("--cfg 2 --distrifusion 2 --warmup 8",
                           dict(cfg=2, distrifusion=2, warmup=8)),
    # Stale context: the same numbers as plain PipeFusion with these patches and warmup.
    "pipefusion2_ring2_w1": ("--pipefusion 2 --ring 2 --patches 2 --warmup 1",
                             dict(pipefusion=2, ring=2, patches=2, warmup=1)),
    "pipefusion2_ulysses2_w1": ("--pipefusion 2 --ulysses 2 --patches 2 --warmup 1",
                                dict(pipefusion=2, ulysses=2, patches=2, warmup=1)),
}
EXACT_TWO = ("cfg2", "ulysses2", "ring2", "tensor2", "distrifusion2_w8")
EXACT_FOUR = ("cfg2_pipefusion2", "ulysses2_ring2", "pipefusion2_ulysses2", "cfg2_tensor2",
              "cfg2_distrifusion2")
HYBRID_TIMEOUT_S = 900  # four processes on two cores: slow, and a hang must still end


def _launch(tmp_path_factory, runs: dict, nproc: int, timeout: int | None = None) -> dict:
    out = tmp_path_factory.mktemp(f"proc{nproc}")
    args = [f"{BASE} {flags} --save-latents {out / name}.pt --trace {out / name}.csv"
            for name, (flags, _) in runs.items()]
    proc = _torchrun("-m", "executor.batch", str(out), *args, nproc=nproc, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = {}
    for i, name in enumerate(runs):
        result[name] = (torch.load(out / f"{name}.pt"),
                        json.loads((out / f"run-{i}.json").read_text()),
                        Trace.read_csv(out / f"{name}.csv"))
    return result


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    """Final latents of diffusers' PixArtAlphaPipeline (same weights, embeddings, seed)."""
    return pipeline_reference()


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> dict:
    """name -> (latents, JSON summary, measured trace) of every two-process run."""
    return _launch(tmp_path_factory, TWO, 2)


@pytest.fixture(scope="module")
def four(tmp_path_factory) -> dict:
    """The same for the four-process hybrids."""
    return _launch(tmp_path_factory, FOUR, 4, HYBRID_TIMEOUT_S)


def _schedule(world: int, degrees: dict):
    wl = Workload(get_model(MODEL), RES, RES, STEPS, dtype="fp32", text_encoder=False,
                  vae=False)
    d = dict(degrees)
    d.setdefault("warmup", 1)
    return build_schedule(wl, ParallelConfig(gpus=world, **d))


# ---- correctness against diffusers --------------------------------------------------------
@pytest.mark.parametrize("name", EXACT_TWO)
def test_two_process_strategies_match_diffusers(two, reference, name):
    lat, summary, _ = two[name]
    assert summary["config"]["world_size"] == 2
    assert lat.shape == reference.shape
    assert _rel_diff(lat, reference) <= TOL


def test_distrifusion_stale_context_differs_slightly_and_shrinks_with_warmup(two, reference):
    d0, d1, d2, d4 = (_rel_diff(two[f"distrifusion2_w{w}"][0], reference) for w in (0, 1, 2, 4))
    # Stale K,V of the other patch from the previous step: small, and smaller with every
    # warmup step (README table).
    assert TOL < d1 < 0.05 and d0 < 0.05
    assert d0 > d1 > d2 > d4


@pytest.mark.parametrize("name", EXACT_FOUR)
def test_four_process_hybrids_match_diffusers(four, reference, name):
    lat, summary, _ = four[name]
    assert summary["config"]["world_size"] == 4
    assert _rel_diff(lat, reference) <= TOL


@pytest.mark.parametrize("name", ["pipefusion2_ring2_w1", "pipefusion2_ulysses2_w1"])
def test_sequence_parallel_stages_keep_pipefusion_stale_context(two, four, name):
    # Splitting each stage's patch over two ranks changes nothing in what attends to what:
    # the latents equal plain PipeFusion's with the same patches and warmup (which differ
    # from the pipeline's by the stale context).
    lat = four[name][0]
    plain = two["pipefusion2_m2_w1"][0]
    assert _rel_diff(lat, plain) <= TOL
    assert _rel_diff(plain, four["pipefusion2_ulysses2"][0]) > TOL


# ---- traces -----------------------------------------------------------------------------------
def _predicted(world: int, degrees: dict) -> Trace:
    d = dict(degrees)
    argv = ["--model", MODEL, "--gpu", "cpu", "--gpus", str(world), "--resolution", str(RES),
            "--steps", str(STEPS), "--dtype", "fp32", "--no-text-encoder", "--no-vae",
            "--patches", str(d.pop("patches", 1)), "--warmup", str(d.pop("warmup", 1))]
    for k, v in d.items():
        argv += [f"--{k}", str(v)]
    return predict(predict_parser().parse_args(argv)).trace


@pytest.mark.parametrize("world, name", [
    (2, "cfg2"), (2, "ulysses2"), (2, "ring2"), (2, "tensor2"), (2, "distrifusion2_w1"),
    (4, "ulysses2_ring2"), (4, "pipefusion2_ulysses2_w1"), (4, "cfg2_tensor2"),
])
def test_trace_has_a_row_per_op_that_joins_the_prediction(two, four, world, name):
    _, summary, trace = (two if world == 2 else four)[name]
    degrees = (TWO if world == 2 else FOUR)[name][1]
    sched = _schedule(world, degrees)
    for rank, ops in enumerate(sched.ranks):
        assert sum(1 for r in trace.rows if r.rank == rank) == len(ops)
    assert {r.source for r in trace.rows} == {"measured"}
    assert all(r.end_s >= r.start_s >= 0 for r in trace.rows)
    predicted = _predicted(world, degrees)
    assert Counter(r.op for r in trace.rows) == Counter(r.op for r in predicted.rows)
    pairs = join_traces(trace, predicted)
    assert len(pairs) == len(trace.rows)  # every measured row meets its predicted one
    # Collectives carry the bytes the simulator charges them.
    sent = {(r.rank, r.op, r.step, r.patch, r.layer_first, r.tag): r.nbytes
            for r in predicted.rows}
    for r in trace.rows:
        assert r.nbytes == sent[(r.rank, r.op, r.step, r.patch, r.layer_first, r.tag)]
    assert summary["metrics"]["busy_fraction"]


def test_collective_rows_are_the_strategies_calls(two, four):
    ops = {name: Counter(r.op for r in two[name][2].rows if r.rank == 0) for name in TWO}
    blocks = get_model(MODEL).num_blocks * STEPS
    assert ops["ulysses2"]["all_to_all"] == blocks  # one row standing for four calls
    assert ops["ring2"]["ring_kv_async"] == ops["ring2"]["wait"] == blocks
    assert ops["tensor2"]["all_reduce"] == blocks
    assert ops["cfg2"]["all_gather"] == STEPS
    # DistriFusion, W = 1: a blocking gather per layer in the warmup step, an asynchronous
    # one in every later step but the last, each waited for one step later.
    layers = get_model(MODEL).num_blocks
    d = ops["distrifusion2_w1"]
    assert d["all_gather_async"] == d["wait"] == layers * (STEPS - 2)
    assert d["all_gather"] == layers + 1  # and the final latent
    hybrid = Counter(r.op for r in four["ulysses2_ring2"][2].rows if r.rank == 0)
    assert hybrid["all_to_all"] == hybrid["ring_kv_async"] == blocks


# ---- faults --------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, fault, needle", [
    # A peer that dies: gloo reports the closed connection inside the all-to-all at once.
    ("--ulysses 2 --timeout 60", "1:2:exit",
     "rank 0: all_to_all of ulysses (step 2, patch 0, layer 0) with ranks (0, 1) failed"),
    # A peer that hangs: the ring round it never sends ends the wait at the timeout.
    ("--ring 2 --timeout 3", "1:2:hang",
     "rank 0: wait for ring (step 2, patch 0, layer 0) failed"),
])
def test_a_rank_lost_inside_a_collective_ends_the_run_naming_rank_and_op(flags, fault, needle):
    procs = _launch_ranks([*BASE.split(), *flags.split()], 2, fault)
    try:
        err0 = procs[0].communicate(timeout=HANG_GUARD_S)[1]
        assert procs[0].returncode == 1
        assert needle in err0 and len(err0.strip().splitlines()) == 1
    finally:
        for p in procs:
            if p.poll() is None:  # the hung rank: ours to end
                p.kill()
            p.communicate()


# ---- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("world, argv, needle", [
    (2, ["--cfg", "2", "--guidance-scale", "1"], "--cfg 2 splits the guidance batch"),
    (4, ["--distrifusion", "2", "--ulysses", "2"], "--distrifusion combines only with --cfg"),
    (4, ["--ulysses", "4"], "does not divide the 2 attention heads"),
    (2, ["--ring", "4"], "multiply to 4 but the launch has 2 processes"),
    (2, ["--ulysses", "2", "--patches", "3", "--pipefusion", "1"], "--patches applies to"),
    (2, ["--ring", "2", "--resolution", "272"], "must split evenly over Ulysses x ring"),
])
def test_bad_combinations_are_one_line_and_exit_2(world, argv, needle, capsys, monkeypatch):
    # Rank 0 of a launch: the request is refused before any process group starts.
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", "0")
    status = run_main([*BASE.split(), *argv])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err
