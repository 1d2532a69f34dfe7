"""The schedule contract: every strategy and hybrid builds schedules that pass it and run to
completion; broken ones are refused with the rank, the op and its tag named."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from sim.config import ParallelConfig, Workload
from sim.cost import RooflineCost
from sim.engine import simulate
from sim.hardware import get_gpu
from sim.models import get_model
from sim.schedule import (
    Collective,
    Compute,
    OpKind,
    Recv,
    Schedule,
    ScheduleError,
    Send,
    Tag,
    Wait,
)
from sim.strategies import build_schedule
from sim.topology import build_topology
from sim.trace import TraceRow

STEPS = 3
# Small images and few steps keep the grid to a few seconds. Hunyuan-DiT has long skips,
# SD3 is an MM-DiT (text tokens travel with the image tokens).
MODELS = {"pixart": 256, "sd3-medium": 256, "hunyuan-dit": 256}
STRATEGIES = {
    "serial": ParallelConfig(1),
    "pipefusion": ParallelConfig(2, pipefusion=2, patches=2),
    "pipefusion-uneven": ParallelConfig(3, pipefusion=3, patches=4),
    "ulysses": ParallelConfig(2, ulysses=2),
    "ring": ParallelConfig(2, ring=2),
    "tensor": ParallelConfig(2, tensor=2),
    "cfg": ParallelConfig(2, cfg=2),
    "distrifusion": ParallelConfig(2, distrifusion=2),
    "cfg x pipefusion x ulysses": ParallelConfig(8, cfg=2, pipefusion=2, patches=2, ulysses=2),
    "pipefusion x ring x tensor": ParallelConfig(8, pipefusion=2, patches=2, ring=2, tensor=2),
    "ulysses x ring": ParallelConfig(4, ulysses=2, ring=2),
    "cfg x distrifusion": ParallelConfig(4, cfg=2, distrifusion=2),
}
GPU = get_gpu("a100-sxm-80g")


def _grid() -> list:
    cases = []
    for model in MODELS:
        for name, cfg in STRATEGIES.items():
            # Warmup steps change only what pipelined and displaced-patch schedules do.
            stale = cfg.pipefusion > 1 or cfg.distrifusion > 1
            for coarse in (False, True):
                for warmup in (0, 1, STEPS) if stale else (0,):
                    cases.append(pytest.param(model, cfg, coarse, warmup,
                                              id=f"{model}-{name}-{'coarse' if coarse else 'fine'}"
                                                 f"-w{warmup}"))
    return cases


@pytest.mark.parametrize("model,cfg,coarse,warmup", _grid())
def test_every_strategy_passes_the_contract_and_every_rank_finishes(
        model: str, cfg: ParallelConfig, coarse: bool, warmup: int) -> None:
    res = MODELS[model]
    wl = Workload(get_model(model), res, res, STEPS)
    sched = build_schedule(wl, replace(cfg, warmup=warmup), coarse=coarse)  # validates
    sched.check_progress()
    trace = simulate(sched, build_topology(GPU, cfg.gpus, "nvlink"), RooflineCost(wl, GPU))
    # One row per op: every rank got through its whole list.
    assert Counter(r.rank for r in trace.rows) == {
        rank: len(ops) for rank, ops in enumerate(sched.ranks) if ops}
    assert all(isinstance(r, TraceRow) for r in trace.rows)


# ---- hand-made schedules -----------------------------------------------------------------

def _schedule(*ranks: list) -> Schedule:
    return Schedule("m", "test", 8, 8, 1, 0, 1, 1, 2, [(0, 0)] * len(ranks), [1], 1,
                    ranks=[list(ops) for ops in ranks])


T = Tag("hidden", 0, 0, 3)
WORK = Compute(OpKind.BLOCKS, 0, 0, (0, 0), 4, 4)


def test_matched_messages_pass() -> None:
    _schedule([WORK, Send(1, 64, T, (4, 4))], [Recv(0, 64, T, (4, 4)), WORK]).validate()


def test_a_receive_of_another_size_is_named() -> None:
    with pytest.raises(ScheduleError, match=r"rank 0, op 1 of 2: Send\(dst=1, tag=Tag\(what="
                                            r"'hidden', step=0, patch=0, layer=3\)\): rank 1 "
                                            r"receives it as 32 bytes"):
        _schedule([WORK, Send(1, 64, T, (4, 4))], [Recv(0, 32, T, (4, 2))]).validate()


def test_a_member_missing_from_a_collective_is_named() -> None:
    ag = Collective(OpKind.ALL_GATHER, (0, 1, 2), 64, Tag("kv", 0, -1, 5))
    with pytest.raises(ScheduleError, match=r"rank [01], op 0 of 1: Collective\('all_gather', "
                                            r"group=\(0, 1, 2\), tag=Tag\(what='kv', step=0, "
                                            r"patch=-1, layer=5\)\): listed 1x by rank [01] but "
                                            r"0x by rank 2"):
        _schedule([ag], [ag], [WORK]).validate()


def test_collectives_of_another_kind_do_not_match() -> None:
    tag = Tag("tensor", 0, 0, 1)
    with pytest.raises(ScheduleError, match="listed 1x by rank"):
        _schedule([Collective(OpKind.ALL_REDUCE, (0, 1), 64, tag)],
                  [Collective(OpKind.ALL_GATHER, (0, 1), 64, tag)]).validate()


def test_a_collective_listed_by_a_non_member_is_named() -> None:
    ar = Collective(OpKind.ALL_REDUCE, (0, 1), 64, Tag("tensor", 0, 0, 1))
    with pytest.raises(ScheduleError, match="rank 2, op 0 of 1: .* rank 2 is not a member"):
        _schedule([ar], [ar], [ar]).validate()


def test_asynchronous_collectives_need_exactly_one_wait_after_them() -> None:
    tag = Tag("ring", 0, 0, 2)
    ring = Collective(OpKind.RING_KV, (0, 1), 64, tag, asynchronous=True)
    _schedule([ring, WORK, Wait(tag)], [ring, Wait(tag)]).validate()
    with pytest.raises(ScheduleError, match=r"rank 1, op 0 of 2: Collective\('ring_kv', .*"
                                            r"asynchronous\) is never waited for"):
        _schedule([ring, Wait(tag)], [ring, WORK]).validate()
    with pytest.raises(ScheduleError, match=r"rank 1, op 0 of 2: Wait\(tag=Tag\(what='ring'.*"
                                            "waits for no asynchronous collective"):
        _schedule([ring, Wait(tag)], [Wait(tag), ring]).validate()
    with pytest.raises(ScheduleError, match=r"rank 0, op 2 of 3: Wait.* waits for no"):
        _schedule([ring, Wait(tag), Wait(tag)], [ring, Wait(tag)]).validate()
    with pytest.raises(ScheduleError, match=r"rank 0, op 1 of 4: .* reuses the tag"):
        _schedule([ring, ring, Wait(tag), Wait(tag)], [ring, Wait(tag), ring, Wait(tag)]
                  ).validate()


def test_several_asynchronous_collectives_may_be_in_flight() -> None:
    # Waits that do not alternate with their collectives take the op-by-op check, which
    # accepts them in any order and still names a wait left out.
    a, b = Tag("ring", 0, 0, 2), Tag("ring", 0, 0, 3)
    ring_a, ring_b = (Collective(OpKind.RING_KV, (0, 1), 64, t, asynchronous=True)
                      for t in (a, b))
    _schedule([ring_a, ring_b, Wait(b), Wait(a)], [ring_a, Wait(a), ring_b, Wait(b)]).validate()
    with pytest.raises(ScheduleError, match=r"rank 0, op 1 of 3: .* is never waited for"):
        _schedule([ring_a, ring_b, Wait(a)], [ring_a, Wait(a), ring_b, Wait(b)]).validate()
    with pytest.raises(ScheduleError, match=r"rank 1, op 3 of 4: Wait.* waits for no"):
        _schedule([ring_a, Wait(a), ring_b, Wait(b)], [ring_a, Wait(a), ring_b, Wait(a)]
                  ).validate()


def _simulate(sched: Schedule) -> None:
    simulate(sched, build_topology(GPU, sched.world_size, "nvlink"),
             RooflineCost(Workload(get_model("pixart"), 256, 256, 1), GPU))


def test_the_engine_refuses_unwaited_and_unissued_asynchronous_collectives() -> None:
    tag = Tag("ring", 0, 0, 2)
    ring = Collective(OpKind.RING_KV, (0, 1), 64, tag, asynchronous=True)
    _simulate(_schedule([ring, WORK, Wait(tag)], [ring, Wait(tag)]))
    with pytest.raises(ScheduleError, match=r"rank 1, op 0 of 2: .* is never waited for"):
        _simulate(_schedule([ring, Wait(tag)], [ring, WORK]))
    with pytest.raises(ScheduleError, match=r"rank 1, op 0 of 1: Wait.* waits for no"):
        _simulate(_schedule([WORK], [Wait(tag)]))


def test_check_progress_finds_a_deadlock_the_counts_cannot_see() -> None:
    other = Tag("latent", 0, 0, -1)
    # Each rank receives before it sends: the messages match, the ranks wait forever.
    sched = _schedule([Recv(1, 64, other), Send(1, 64, T)], [Recv(0, 64, T), Send(0, 64, other)])
    sched.validate()
    expected = (r"rank 0 is stuck at op 0 of 2: Recv\(src=1, tag=Tag\(what='latent', step=0, "
                r"patch=0, layer=-1\)\); rank 1 is stuck at op 0 of 2: Recv\(src=0, ")
    with pytest.raises(ScheduleError, match=expected):
        sched.check_progress()
    with pytest.raises(ScheduleError, match=expected):  # the engine says the same
        _simulate(sched)


def test_check_progress_sees_collectives_listed_in_different_orders() -> None:
    a = Collective(OpKind.ALL_REDUCE, (0, 1), 64, Tag("tensor", 0, 0, 1))
    b = Collective(OpKind.ALL_REDUCE, (0, 1), 64, Tag("tensor", 0, 0, 2))
    _schedule([a, b], [a, b]).check_progress()
    with pytest.raises(ScheduleError, match="rank 0 is stuck at op 0 .*; rank 1 is stuck at op 0"):
        _schedule([a, b], [b, a]).check_progress()


def test_the_executor_checks_the_contract_before_it_starts() -> None:
    pytest.importorskip("torch")
    from executor.interpreter import unsupported_ops

    sched = _schedule([Recv(1, 64, Tag("latent", 0, 0, -1)), Send(1, 64, T)],
                      [Recv(0, 64, T), Send(0, 64, Tag("latent", 0, 0, -1))])
    with pytest.raises(ScheduleError, match="rank 0 is stuck at op 0"):
        unsupported_ops(sched)
    with pytest.raises(ScheduleError, match="rank 0 does not send it"):
        unsupported_ops(_schedule([WORK], [Recv(0, 64, T)]))


def test_ops_keep_their_dataclass_constructor_and_stay_frozen() -> None:
    # The ops' __init__ stores the fields through their slots (sim.schedule._slot_init):
    # same parameters and defaults as the dataclass, every field set, still frozen.
    import dataclasses
    import inspect

    from sim.schedule import Collective, Compute, Recv, Send, Tag, Wait

    tag = Tag("ring", 2, 1, 7)
    built = [Compute("blocks", 2, 1, (3, 4), 64, 256, 2, True, "attn", 2),
             Compute("condition", 2, -1, batch=2),
             Send(3, 128, tag, (1, 64)), Recv(1, 128, tag),
             Collective("ring_kv", (0, 1), 512, tag, asynchronous=True, count=3), Wait(tag)]
    for op in built:
        cls = type(op)
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        assert [(p.name, p.default) for p in params] == [
            (f.name, inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
            for f in dataclasses.fields(cls)]
        assert op == cls(**{f.name: getattr(op, f.name) for f in dataclasses.fields(cls)})
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(op, dataclasses.fields(cls)[0].name, 1)
    assert built[1].layers == (-1, -1) and built[1].part == "all" and built[1].shard == 1
    assert built[3].shape == () and not Collective("all_reduce", (0, 1), 8, tag).asynchronous


# ---- validation through orbits (issue 14) ------------------------------------------------

def _flux_hybrid() -> Schedule:
    """Flux ring2 x tensor2 x pipefusion4 on 16 GPUs, 3 steps: four orbits of four ranks,
    the last one split at the decode."""
    wl = Workload(get_model("flux"), 256, 256, STEPS)
    return build_schedule(wl, ParallelConfig(16, pipefusion=4, patches=4, ring=2, tensor=2))


def test_validation_through_orbits_skips_the_images_of_whole_orbits_only() -> None:
    from sim.strategies import build_schedule_and_orbits
    from sim.symmetry import shift_classes

    sched = _flux_hybrid()
    orbits = shift_classes(sched.ranks, sched.layout)
    implied = sched._implied(orbits)
    # The three whole stages are checked through their representatives; the decoding
    # stage's orbit (split at the latent gather) is checked rank by rank.
    assert {r for r, images in implied.items() if images is not None} == {0, 4, 8}
    assert {r for r, images in implied.items() if images is None} == {
        1, 2, 3, 5, 6, 7, 9, 10, 11}
    sched.validate(orbits)
    wl = Workload(get_model("flux"), 256, 256, STEPS)
    built, found = build_schedule_and_orbits(
        wl, ParallelConfig(16, pipefusion=4, patches=4, ring=2, tensor=2))
    assert built.ranks == sched.ranks and found == orbits


def _broken_image(change) -> Schedule:
    """The Flux hybrid with one op of image rank 5 (orbit of 4) changed by ``change``."""
    sched = _flux_hybrid()
    ops = sched.ranks[5]
    i = next(i for i, op in enumerate(ops) if change(op) is not op)
    ops[i] = change(op := ops[i])
    assert ops[i] != op
    return sched


@pytest.mark.parametrize("change,message", [
    # A collective over another group: rank 5 lists one its group's other member does not.
    (lambda op: replace(op, group=(5, 7)) if type(op) is Collective
     and op.kind == OpKind.ALL_REDUCE else op, "listed"),
    # A message to another rank of the next stage.
    (lambda op: replace(op, dst=op.dst + 1) if type(op) is Send else op, "rank"),
    # A wait for another tag.
    (lambda op: Wait(op.tag._replace(layer=-7)) if type(op) is Wait else op, "wait"),
])
def test_validation_through_orbits_still_names_a_broken_image(change, message: str) -> None:
    from sim.symmetry import shift_classes

    sched = _broken_image(change)
    with pytest.raises(ScheduleError, match=message):
        sched.validate()
    # The broken rank is no image of its representative any more: checked by itself.
    orbits = shift_classes(sched.ranks, sched.layout)
    assert 5 not in sched._implied(orbits)
    with pytest.raises(ScheduleError, match=message):
        sched.validate(orbits)


def test_validation_through_orbits_refuses_what_the_full_validation_refuses() -> None:
    """Random damage (an op dropped, doubled, swapped with the next, its group, tag or peer
    changed), mostly to ranks of whole orbits: the check through orbits, with the orbits of
    the damaged schedule, raises exactly where the check of every rank does."""
    import random

    from sim.symmetry import shift_classes

    rng = random.Random(7)
    base = _flux_hybrid()
    targets = list(base._implied(shift_classes(base.ranks, base.layout)))

    def damage(sched: Schedule) -> None:
        ops = sched.ranks[rng.choice(targets) if rng.random() < 0.8
                          else rng.randrange(len(sched.ranks))]
        i = rng.randrange(len(ops))
        op, how = ops[i], rng.randrange(5)
        if how == 0:
            del ops[i]
        elif how == 1:
            ops.insert(i, op)
        elif how == 2 and i + 1 < len(ops):
            ops[i], ops[i + 1] = ops[i + 1], op
        elif how == 3 and type(op) is Collective:
            ops[i] = replace(op, group=tuple(reversed(op.group)) if rng.random() < 0.5
                             else tuple(sorted(set(op.group) ^ {rng.randrange(16)})) or (0,))
        elif how == 4 and type(op) is not Compute:
            ops[i] = replace(op, tag=op.tag._replace(layer=op.tag.layer + 1))

    def refused(sched: Schedule, orbits: dict | None = None) -> bool:
        try:
            sched.validate(orbits)
        except ScheduleError:
            return True
        return False

    outcomes = Counter()
    for _ in range(150):
        sched = replace(base, ranks=[list(ops) for ops in base.ranks])
        damage(sched)
        orbits = shift_classes(sched.ranks, sched.layout)
        full = refused(sched)
        assert refused(sched, orbits) == full
        outcomes[(full, bool(sched._implied(orbits)))] += 1
    # Damage that breaks the contract and damage that does not (a swap of two compute
    # ops), both with orbits left whole and checked through their representative.
    assert outcomes[(True, True)] and outcomes[(False, True)]
