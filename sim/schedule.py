"""The schedule: per-rank ordered ops, the one contract between simulator and executor.

A strategy turns (model, resolution, steps, parallel config) into a ``Schedule``. The simulator
costs each op; the executor performs each op with torch. Nothing here knows about time, links
or simpy: both consumers read the same plain data.

Ops:

- ``Compute``: a run of transformer blocks on some tokens, or one of the ops around them
  (``condition``: the step's timestep conditioning, once per rank and step; ``embed``,
  ``final``, ``scheduler_step``, ``text_encode``, ``vae_decode``).
- ``Send`` / ``Recv``: point-to-point; a send is asynchronous, a receive blocks until its data
  has arrived. Both ends carry the tensor shape, so no run-time handshake is needed.
- ``Collective``: all-reduce, all-gather, all-to-all over a group of ranks (every member lists
  it with the same tag); an asynchronous one returns at once and a later ``Wait`` blocks on it.

Tags identify (what, step, patch, layer), so traces join op by op.

The contract (``Schedule.validate`` checks it; every strategy's schedule passes it):

- every ``Send`` has exactly one ``Recv`` on its destination with the same tag, size and shape;
- every member of a collective's group lists the same (kind, tag, group) the same number of
  times;
- an asynchronous collective is followed, on each member, by one ``Wait`` with its tag before
  the tag is used again; no ``Wait`` comes without its collective.

A schedule that passes can still deadlock if ranks order their blocking ops inconsistently;
``Schedule.check_progress`` finds that without running anything, and the engine reports it
if it happens.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from operator import attrgetter
from typing import Any, NamedTuple

from sim.layout import RankLayout


class OpKind:
    """Op kinds, defined once: strategies emit them, the engine and cost models price them,
    the executor performs them, and trace rows carry them in their ``op`` column. Plain
    strings (not an enum) so they print, compare and write to CSV as themselves."""

    # compute (``Compute.kind``)
    BLOCKS = "blocks"
    EMBED = "embed"
    FINAL = "final"
    SCHEDULER_STEP = "scheduler_step"
    CONDITION = "condition"
    TEXT_ENCODE = "text_encode"
    VAE_DECODE = "vae_decode"
    # collectives (``Collective.kind``); an asynchronous one's trace row adds ``ASYNC_SUFFIX``
    ALL_REDUCE = "all_reduce"
    ALL_GATHER = "all_gather"
    ALL_TO_ALL = "all_to_all"
    REDUCE_SCATTER = "reduce_scatter"
    RING_KV = "ring_kv"
    ASYNC_SUFFIX = "_async"
    # point to point and waits
    SEND = "send"
    RECV = "recv"
    WAIT = "wait"

    COMPUTE = (BLOCKS, EMBED, FINAL, SCHEDULER_STEP, CONDITION, TEXT_ENCODE, VAE_DECODE)
    COLLECTIVES = (ALL_REDUCE, ALL_GATHER, ALL_TO_ALL, REDUCE_SCATTER, RING_KV)
    OUTSIDE_LOOP = (TEXT_ENCODE, VAE_DECODE)  # once per image, before and after the loop


class Tag(NamedTuple):
    """What a message carries: ``what`` is ``hidden``, ``text``, ``skip`` or ``latent``."""

    what: str
    step: int
    patch: int  # -1 = the whole image
    layer: int  # block index the data enters (or leaves, for skips); -1 for latents


@dataclass(frozen=True, slots=True)
class Compute:
    """Work on one rank. ``layers`` is an inclusive block range for ``kind == "blocks"``.
    ``q_tokens`` query image tokens attend over ``kv_tokens`` image tokens (a patch against the
    full, partly stale buffer under PipeFusion); ``batch`` is the effective batch."""

    kind: str
    step: int
    patch: int
    layers: tuple[int, int] = (-1, -1)
    q_tokens: int = 0
    kv_tokens: int = 0
    batch: int = 1
    warmup: bool = False
    part: str = "all"  # "all", or for sequence/tensor parallel blocks "proj" / "attn"
    shard: int = 1  # tensor-parallel degree: this rank holds 1/shard of heads and MLP columns


@dataclass(frozen=True, slots=True)
class Send:
    """Asynchronous point-to-point send of a tensor of ``shape`` (elements) to ``dst``."""

    dst: int
    nbytes: int
    tag: Tag
    shape: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Recv:
    """Blocking receive of a tensor of ``shape`` from ``src``."""

    src: int
    nbytes: int
    tag: Tag
    shape: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Collective:
    """A collective over ``group`` (global ranks); ``nbytes`` is each rank's input size.
    Asynchronous collectives return at once and complete in the background."""

    kind: str  # "all_reduce", "all_gather", "all_to_all", "reduce_scatter", "ring_kv"
    group: tuple[int, ...]
    nbytes: int
    tag: Tag
    asynchronous: bool = False
    count: int = 1  # back-to-back collectives of this size this op stands for


@dataclass(frozen=True, slots=True)
class Wait:
    """Block until the asynchronous collective with ``tag`` (issued earlier) has completed."""

    tag: Tag


Op = Compute | Send | Recv | Collective | Wait


def _slot_init(cls: type) -> None:
    """Give the frozen, slotted op dataclass ``cls`` an ``__init__`` of the same signature
    that stores each field through its slot directly. The generated one goes through
    ``object.__setattr__`` per field (the way around ``frozen``), about twice the cost; a
    schedule builds thousands of ops (a tenth of a prediction's time). The instances stay
    frozen: only ``__init__`` writes the slots."""
    params, body = [], []
    scope: dict[str, Any] = {}
    for f in fields(cls):
        scope[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if f.default is MISSING:
            params.append(f.name)
        else:
            scope[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        body.append(f"    _set_{f.name}(self, {f.name})")
    exec(f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body), scope)
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[misc]


for _cls in (Compute, Send, Recv, Collective, Wait):
    _slot_init(_cls)


class ScheduleError(ValueError):
    """A schedule breaks the contract (unmatched messages or collectives, a ``Wait`` without
    its collective) or cannot finish (deadlock). The message names each rank concerned, the
    op's index in that rank's list (0-based) and the op."""


def describe_op(op: Op) -> str:
    """A short label of ``op`` for error messages, e.g. ``Recv(src=0, tag=Tag(...))``."""
    if isinstance(op, Send):
        return f"Send(dst={op.dst}, tag={op.tag})"
    if isinstance(op, Recv):
        return f"Recv(src={op.src}, tag={op.tag})"
    if isinstance(op, Collective):
        mode = ", asynchronous" if op.asynchronous else ""
        return f"Collective({op.kind!r}, group={op.group}, tag={op.tag}{mode})"
    if isinstance(op, Wait):
        return f"Wait(tag={op.tag})"
    return f"Compute({op.kind!r}, step={op.step}, patch={op.patch}, layers={op.layers})"


# What matches across ranks (``Schedule.validate`` builds the same keys inline, for speed): a
# send's key equals its receive's; a collective's key without the rank is the same on every
# member.
def _send_key(rank: int, op: Send) -> tuple:
    return (rank, op.dst, op.tag, op.nbytes, op.shape)


def _recv_key(rank: int, op: Recv) -> tuple:
    return (op.src, rank, op.tag, op.nbytes, op.shape)


def _collective_key(rank: int, op: Collective) -> tuple:
    return (op.kind, op.tag, op.group, rank)


_TAG = attrgetter("tag")
_GROUP = attrgetter("group")


@dataclass
class Schedule:
    """Per-rank ordered op lists plus the facts both consumers need to interpret them."""

    model: str
    strategy: str
    height: int
    width: int
    steps: int
    warmup: int
    patches: int
    batch: int
    dtype_bytes: int
    stage_layers: list[tuple[int, int]]  # inclusive block range of each pipeline stage
    patch_rows: list[int]  # token rows of each patch (top to bottom)
    token_cols: int
    ranks: list[list[Op]] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    # rank <-> (cfg half, stage, sequence position); set by the strategies, None on
    # hand-built schedules
    layout: RankLayout | None = None

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    def patch_tokens(self, patch: int) -> int:
        """Image tokens of ``patch`` (-1: the whole image)."""
        if patch < 0:
            return sum(self.patch_rows) * self.token_cols
        return self.patch_rows[patch] * self.token_cols

    def patch_row_offset(self, patch: int) -> int:
        """First token row of ``patch``."""
        return sum(self.patch_rows[:patch])

    def validate(self, orbits: dict[int, Any] | None = None) -> None:
        """Check the contract (module docstring): messages and collectives match across ranks
        and every asynchronous collective is waited for. Raises ``ScheduleError`` naming the
        rank, the op and its tag. Linear in the ops, with filtering comprehensions and Counter
        (which counts in C) doing the work: it runs on every schedule built, the planner's
        hundreds of candidates included.

        ``orbits`` (``sim.symmetry.shift_classes`` of this schedule, when the caller has
        them) lets the images of a whole orbit be checked through their representative
        (``_implied``): their ops are its ops' images, op by op, so their waits are its
        waits, their messages its messages' images, and a collective the representative
        lists once in a group of its orbit is listed once by every member of that group."""
        implied = self._implied(orbits) if orbits else {}
        sends: list[tuple] = []
        recvs: list[tuple] = []
        collectives: list[tuple] = []  # (kind, tag, group) of each rank's collectives
        usual = True  # each rank lists collectives of distinct tags, in its own groups
        for rank, ops in enumerate(self.ranks):
            if rank in implied and implied[rank] is None:
                continue  # an image: its representative, earlier, added its messages
            # The filters below walk the communication alone (most of a block's ops are
            # compute).
            comm = [op for op in ops if type(op) is not Compute]
            present = set(map(type, comm))
            images = implied.get(rank, ())
            if Send in present:
                picked = [(op.dst, op.tag, op.nbytes, op.shape) for op in comm
                          if type(op) is Send]
                for m, perm in ((rank, None), *images):
                    sends += [(m, d if perm is None else perm[d], *rest)
                              for d, *rest in picked]
            if Recv in present:
                picked = [(op.src, op.tag, op.nbytes, op.shape) for op in comm
                          if type(op) is Recv]
                for m, perm in ((rank, None), *images):
                    recvs += [(src if perm is None else perm[src], m, *rest)
                              for src, *rest in picked]
            if Collective in present:
                group_ops = [op for op in comm if type(op) is Collective]
                tags = set(map(_TAG, group_ops))
                groups = set(map(_GROUP, group_ops))
                if len(tags) < len(group_ops) or not all(rank in g for g in groups):
                    usual = False
                if not images:  # else each is listed by every member (``_implied``)
                    collectives += [(op.kind, op.tag, op.group) for op in group_ops]
                if Wait in present or any(op.asynchronous for op in group_ops):
                    self._check_waits(rank, comm)
            elif Wait in present:
                self._check_waits(rank, comm)
        sent, received = Counter(sends), Counter(recvs)
        if not dict.__eq__(sent, received):  # Counter's own == compares in Python
            raise self._unmatched_messages(sent, received)
        # Usually each member lists each collective once (distinct tags on every rank, all
        # in groups it is a member of): then it is enough that as many ranks list it as its
        # group has. Otherwise, or if not, the check by rank names the error.
        listed = Counter(collectives)
        if not usual or not all(n == len(key[2]) for key, n in listed.items()):
            self._check_collectives(Counter(
                _collective_key(rank, op) for rank, ops in enumerate(self.ranks)
                for op in ops if type(op) is Collective))

    def _implied(self, orbits: dict[int, Any]) -> dict[int, Any]:
        """The orbits (``sim.symmetry.Orbit``) whose images ``validate`` may check through
        their representative, as representative -> its images [(rank, shift)] and image ->
        None. An orbit qualifies when its images run the images of all the
        representative's ops (``prefix``: every op, groups as exact tuples), and every group
        the representative lists lies within the orbit and is its own image under the shift
        that takes the representative to each of its members: then each member lists that
        collective once for each time the representative does, and no other rank of the
        orbit lists it. (A rank outside the orbit that lists it is not a member: the
        membership check names it.)"""
        out: dict[int, Any] = {}
        for rep, orbit in orbits.items():
            ops = self.ranks[rep]
            if not orbit.exact_groups or orbit.prefix != len(ops) or any(
                    len(self.ranks[m]) != len(ops) for m, _ in orbit.images):
                continue
            shift_to = {m: perm for m, perm in orbit.images}
            groups = {op.group for op in ops if type(op) is Collective}
            if all(m == rep or (m in shift_to and tuple(sorted(shift_to[m][x] for x in g)) == g)
                   for g in groups for m in g):
                out[rep] = orbit.images
                out.update((m, None) for m, _ in orbit.images)
        return out

    def where(self, rank: int, index: int) -> str:
        """Op ``index`` of ``rank`` for an error message: ``rank 0, op 3 of 30: Send(...)``."""
        ops = self.ranks[rank]
        return f"rank {rank}, op {index} of {len(ops)}: {describe_op(ops[index])}"

    def _check_waits(self, rank: int, comm: list[Op]) -> None:
        """Each asynchronous collective of ``rank`` is followed by one ``Wait`` with its tag
        before the tag is issued again (the engine and a ``Wait`` find it by tag alone), and
        each ``Wait`` follows its collective. ``comm`` is the rank's ops but compute."""
        seq = [op for op in comm if type(op) is Wait
               or type(op) is Collective and op.asynchronous]
        # Usually each collective is waited for before the next one is issued (the ring's
        # rotation of every block): then the list alternates collective, its wait, ... which
        # is checked in C. Otherwise (several in flight, or an error) op by op below.
        issued, waited = seq[0::2], seq[1::2]
        if len(issued) == len(waited) and set(map(type, issued)) <= {Collective} \
                and set(map(type, waited)) <= {Wait} \
                and list(map(_TAG, issued)) == list(map(_TAG, waited)):
            return
        in_flight: set[Tag] = set()
        for op in seq:
            if type(op) is Wait:
                if op.tag not in in_flight:
                    self._raise_wait_error(rank)
                in_flight.remove(op.tag)
            else:
                if op.tag in in_flight:
                    self._raise_wait_error(rank)
                in_flight.add(op.tag)
        if in_flight:
            self._raise_wait_error(rank)

    def _raise_wait_error(self, rank: int) -> None:
        """Replay ``_check_waits`` with op indices and raise for the first op out of place."""
        in_flight: dict[Tag, int] = {}
        ops = self.ranks[rank]
        for i, op in enumerate(ops):
            if type(op) is Collective and op.asynchronous:
                if op.tag in in_flight:
                    raise ScheduleError(f"{self.where(rank, i)} reuses the tag of an "
                                        "asynchronous collective not yet waited for")
                in_flight[op.tag] = i
            elif type(op) is Wait:
                if op.tag not in in_flight:
                    raise ScheduleError(f"{self.where(rank, i)} waits for no asynchronous "
                                        "collective issued before it")
                del in_flight[op.tag]
        for i in in_flight.values():
            raise ScheduleError(f"{self.where(rank, i)} is never waited for")

    def _first(self, rank: int, cls: type, key_of: Callable[[int, Any], tuple],
               key: tuple) -> int:
        """Index of the first op of ``cls`` on ``rank`` whose key is ``key``."""
        return next(i for i, op in enumerate(self.ranks[rank])
                    if type(op) is cls and key_of(rank, op) == key)

    def _unmatched_messages(self, sends: Counter, recvs: Counter) -> ScheduleError:
        """The error for the first send without its receive, or receive without its send."""
        for key in sends - recvs:
            src, dst, tag, nbytes, shape = key
            where = self.where(src, self._first(src, Send, _send_key, key))
            other = [op for op in self.ranks[dst] if type(op) is Recv and op.src == src
                     and op.tag == tag] if 0 <= dst < self.world_size else []
            if recvs[key]:
                why = f"sent {sends[key]}x but received {recvs[key]}x by rank {dst}"
            elif other:
                why = (f"rank {dst} receives it as {other[0].nbytes} bytes of shape "
                       f"{other[0].shape}, not {nbytes} bytes of shape {shape}")
            else:
                why = f"rank {dst} does not receive it"
            return ScheduleError(f"{where}: {why}")
        for key in recvs - sends:
            src, dst, tag, nbytes, shape = key
            where = self.where(dst, self._first(dst, Recv, _recv_key, key))
            why = (f"received {recvs[key]}x but sent {sends[key]}x by rank {src}" if sends[key]
                   else f"rank {src} does not send it ({nbytes} bytes of shape {shape})")
            return ScheduleError(f"{where}: {why}")
        return ScheduleError("unmatched messages")  # unreachable: the counts differ

    def _check_collectives(self, collectives: Counter) -> None:
        """Every member lists each (kind, tag, group) as often as every other member, and
        only members list it."""
        listed: dict[tuple, dict[int, int]] = {}
        for (kind, tag, group, rank), n in collectives.items():
            listed.setdefault((kind, tag, group), {})[rank] = n
        for (kind, tag, group), by_rank in listed.items():
            counts = {m: by_rank.get(m, 0) for m in group}
            if len(by_rank) == len(group) and len(set(counts.values())) == 1:
                continue
            outsider = next((r for r in by_rank if r not in counts), None)
            if outsider is not None:
                i = self._first(outsider, Collective, _collective_key,
                                (kind, tag, group, outsider))
                raise ScheduleError(f"{self.where(outsider, i)}: rank {outsider} is not a "
                                    "member of the group")
            most = max(counts, key=counts.__getitem__)
            fewest = min(counts, key=counts.__getitem__)
            i = self._first(most, Collective, _collective_key, (kind, tag, group, most))
            raise ScheduleError(f"{self.where(most, i)}: listed {counts[most]}x by rank {most} "
                                f"but {counts[fewest]}x by rank {fewest}")

    def check_progress(self) -> None:
        """Play the schedule in order of dependencies alone (no times): every rank must reach
        its end. Raises ``ScheduleError`` naming each rank that cannot and the op it waits on
        (a deadlock from inconsistent ordering, which ``validate`` cannot see). Semantics as in
        the engine and the executor: sends and asynchronous collectives do not block; a
        receive waits for its send, a blocking collective for every member, a ``Wait`` for
        every member to have issued its collective."""
        ranks = self.ranks
        at = [0] * len(ranks)
        sent: Counter = Counter()  # (src, dst, tag) -> sends issued
        taken: Counter = Counter()  # (src, dst, tag) -> receives completed
        arrived: Counter = Counter()  # (tag, group, occurrence) -> members arrived
        seen: list[Counter] = [Counter() for _ in ranks]  # per rank: (tag, group) -> listed
        joined: list[dict] = [{} for _ in ranks]  # per rank: op index -> rendezvous key
        issued: list[dict] = [{} for _ in ranks]  # per rank: async tag -> rendezvous key
        moved = True
        while moved:
            moved = False
            for rank, ops in enumerate(ranks):
                i = at[rank]
                while i < len(ops):
                    op = ops[i]
                    cls = type(op)
                    if cls is Send:
                        sent[(rank, op.dst, op.tag)] += 1
                    elif cls is Recv:
                        key = (op.src, rank, op.tag)
                        if taken[key] >= sent[key]:
                            break
                        taken[key] += 1
                    elif cls is Collective:
                        meet = joined[rank].get(i)
                        if meet is None:
                            pair = (op.tag, op.group)
                            meet = joined[rank][i] = pair + (seen[rank][pair],)
                            seen[rank][pair] += 1
                            arrived[meet] += 1
                        if op.asynchronous:
                            issued[rank][op.tag] = meet
                        elif arrived[meet] < len(op.group):
                            break
                    elif cls is Wait:
                        meet = issued[rank].get(op.tag)
                        if meet is None or arrived[meet] < len(meet[1]):
                            break
                    i += 1
                if i != at[rank]:
                    at[rank] = i
                    moved = True
        stuck = [r for r, ops in enumerate(ranks) if at[r] < len(ops)]
        if stuck:
            raise ScheduleError(deadlock_message(ranks, {r: at[r] for r in stuck}))


def deadlock_message(ranks: list[list[Op]], stuck: dict[int, int]) -> str:
    """The message for ranks that cannot finish: ``stuck`` maps each to its blocking op's
    index."""
    return "deadlock, no rank can proceed: " + "; ".join(
        f"rank {r} is stuck at op {i} of {len(ranks[r])}: {describe_op(ranks[r][i])}"
        for r, i in sorted(stuck.items()))


def numel(shape: tuple[int, ...]) -> int:
    """Number of elements of a tensor of ``shape``."""
    return math.prod(shape)
