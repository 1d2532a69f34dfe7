"""CFG x PipeFusion x Ulysses x ring x tensor hybrids (xDiT-style), pure strategies included.

Ranks are laid out by ``sim.layout.RankLayout``: sequence parallelism innermost (tensor
innermost of all), then pipeline stages, then the CFG halves.

Per diffusion step, per patch (the whole image in warmup steps and without PipeFusion):

- each rank of a stage holds ``1/(U*R)`` of the patch's tokens (``1/T`` of heads and MLP
  columns under tensor parallelism);
- per block: projections, then Ulysses' four all-to-alls (Q, K, V in, output back), the
  ring's K,V rotation overlapped with attention (asynchronous, waited for after attention),
  and tensor parallelism's all-reduces (2 per block, 3 with cross-attention);
- PipeFusion forwards each patch's hidden states to the same position of the next stage and
  the last stage returns the latent patch to stage 0; every rank of a stage keeps the full
  stale K,V of its layers;
- with CFG parallelism the two halves of the guidance batch run on two groups, which
  all-gather the noise prediction before the scheduler step.

With every degree 1 but PipeFusion this emits exactly the PipeFusion schedule.

``coarse=True`` merges the per-block ops of a stage into one unit (compute summed, collectives
standing for ``count`` back-to-back ones). The planner uses it: for identical blocks under
steady link sharing it gives the same time with a fraction of the events. The executor and
``sim.predict`` use the per-block schedule.

The builders below read top to bottom as one rank's ops for one patch of one step:
``stage_inputs`` (receive, or embed on stage 0), ``block_ops`` (each block, or one merged unit),
``stage_outputs`` (send on), ``final_ops`` on the last stage; ``decode_ops`` once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

from sim.config import ParallelConfig, Workload
from sim.layout import Coords, RankLayout
from sim.models import DiTModel
from sim.partition import partition_layers, split_even
from sim.schedule import (
    Collective,
    Compute,
    Op,
    OpKind,
    Recv,
    Schedule,
    Send,
    Tag,
    Wait,
    numel,
)

# A Tag built without its generated ``__new__`` (which parses its arguments in Python): the
# builders make one per message of every rank, patch and step.
_tag = partial(tuple.__new__, Tag)


@dataclass(frozen=True)
class Job:
    """The workload facts every op builder reads (sizes in tokens, messages in bytes)."""

    model: DiTModel
    layout: RankLayout
    steps: int
    warmup: int
    batch: int  # per CFG half
    images: int  # images of the same shape run together (Workload.images)
    dtype_bytes: int
    rows: int  # token rows of the whole image
    cols: int  # token columns
    patches: int  # PipeFusion patches per step after warmup
    patch_rows: list[int]
    stages: list[tuple[int, int]]  # inclusive block range of each stage
    stage_of: dict[int, int]  # stage holding each block
    skips: list[tuple[int, int]]  # long skips (from block, to block) that cross a stage
    merge_blocks: bool  # one op per stage instead of one per block
    full: int  # tokens of the whole image
    seq: int  # ranks splitting one patch's tokens: Ulysses x ring
    last_stage: int
    forwards_text: bool  # the text stream runs through the blocks (MM-DiT) and moves with them
    tensor_reduces: int  # tensor-parallel all-reduces per block: attention, MLP, cross-attention
    # the ops of ``block_ops``, shared by the ranks that list the same ones
    block_memo: dict = field(default_factory=dict, compare=False, repr=False)

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of a tensor of ``shape`` in the run's dtype."""
        return numel(shape) * self.dtype_bytes

    def hidden(self, tokens: int) -> tuple[int, ...]:
        """Shape of the hidden states of ``tokens`` tokens."""
        return (self.batch, tokens, self.model.hidden)

    def latent_shape(self, patch: int, share: int) -> tuple[int, ...]:
        """Shape of the latent of ``patch`` (-1: whole image) as one rank holds it, ``share``
        of its tokens."""
        m = self.model
        lat_rows = (self.rows if patch < 0 else self.patch_rows[patch]) * m.patch_size
        if self.seq == 1:
            return (self.images, m.latent_channels, lat_rows, self.cols * m.patch_size)
        # A sequence-parallel rank holds a run of tokens, not whole rows: flatten.
        return (self.images, m.latent_channels, share * m.patch_size**2)


@dataclass(frozen=True)
class Seat:
    """One rank: its coordinates, its stage's blocks and its collective groups (worked out
    once, not per block)."""

    rank: int
    at: Coords
    first: int  # first block of its stage
    last: int  # last block of its stage
    ulysses: tuple[int, ...]
    ring: tuple[int, ...]
    tensor: tuple[int, ...]
    cfg: tuple[int, ...]
    stage_peers: tuple[int, ...]  # the rank at this CFG half and sequence position per stage


@dataclass(frozen=True)
class Slot:
    """One patch of one step, as each rank of a stage holds it."""

    step: int
    patch: int  # -1: the whole image (warmup steps, or no PipeFusion)
    tokens: int  # query tokens per rank: the patch's share of one sequence-parallel rank
    warm: bool  # a warmup step (no stale K,V)
    prev_warm: bool  # the step before was a warmup step (or there was none)
    # Worked out once per slot, not per rank: the shape of ``tokens`` tokens' hidden states
    # and its bytes (what stages pass on), read by every rank's ops.
    hidden: tuple[int, ...] = ()
    hidden_bytes: int = 0


def build(wl: Workload, cfg: ParallelConfig, coarse: bool = False,
          only: frozenset[int] | None = None) -> Schedule:
    """Per-rank ops of the hybrid ``cfg`` for ``wl``; with ``only``, the ops of those ranks
    alone (the others' lists stay empty: a partial schedule, for the planner's bounds)."""
    job = _job(wl, cfg, coarse)
    sched = Schedule(
        model=job.model.name, strategy=cfg.strategy, height=wl.height, width=wl.width,
        steps=job.steps, warmup=job.warmup, patches=job.patches, batch=job.batch,
        dtype_bytes=job.dtype_bytes, stage_layers=job.stages, patch_rows=job.patch_rows,
        token_cols=job.cols, ranks=[[] for _ in range(job.layout.world)],
        config=cfg.as_dict(), layout=job.layout,
    )
    seats = [_seat(job, rank) for rank in range(job.layout.world)
             if only is None or rank in only]
    if wl.text_encoder:
        for seat in seats:
            sched.ranks[seat.rank].append(Compute(OpKind.TEXT_ENCODE, -1, -1,
                                                  batch=job.model.batch * job.images))
    for step in range(job.steps):
        for slot in _slots(job, step):
            for seat in seats:
                sched.ranks[seat.rank].extend(patch_ops(job, seat, slot))
    for rank, op in decode_ops(job, wl.vae):
        if only is None or rank in only:
            sched.ranks[rank].append(op)
    return sched


def patch_ops(job: Job, seat: Seat, slot: Slot) -> list[Op]:
    """Everything ``seat`` does for one patch of one step, in order."""
    ops: list[Op] = []
    if slot.patch <= 0:  # every rank computes the step's conditioning itself
        # Ops that depend on the slot alone are built once and shared by the ranks that list
        # them (in ``block_memo``, keyed by their kind first): ops are immutable, and ranks
        # sharing an op compare cheaply (``sim.symmetry``).
        key = (OpKind.CONDITION, slot.step)
        op = job.block_memo.get(key)
        if op is None:
            op = job.block_memo[key] = Compute(OpKind.CONDITION, slot.step, -1, (-1, -1), 0,
                                               0, job.batch, slot.warm)
        ops.append(op)
    ops += stage_inputs(job, seat, slot)
    # The ranks of a stage that share their groups (all of a pure Ulysses, ring or tensor
    # stage) list the same block ops: built once, for the first of them. A group of one rank
    # runs no collective (``block_ops`` never reads it), so it is left out of the key:
    # otherwise every rank of a pure Ulysses stage, its ring and tensor groups being itself,
    # would build its own copy.
    lay = job.layout
    if lay.ulysses == lay.ring == lay.tensor == 1:
        # No sequence or tensor parallelism: the stage's blocks are one op (``block_ops``),
        # shared by the CFG halves' ranks of the stage.
        key = (slot.step, slot.patch, seat.first)
        op = job.block_memo.get(key)
        if op is None:
            op = job.block_memo[key] = Compute(OpKind.BLOCKS, slot.step, slot.patch,
                                               (seat.first, seat.last), slot.tokens, job.full,
                                               job.batch, slot.warm)
        ops.append(op)
    else:
        key = (slot.step, slot.patch, seat.first, seat.last,
               seat.ulysses if lay.ulysses > 1 else (), seat.ring if lay.ring > 1 else (),
               seat.tensor if lay.tensor > 1 else ())
        blocks = job.block_memo.get(key)
        if blocks is None:
            blocks = job.block_memo[key] = block_ops(job, seat, slot)
        ops += blocks
    ops += stage_outputs(job, seat, slot)
    if seat.at.stage == job.last_stage:
        ops += final_ops(job, seat, slot)
    return ops


def stage_inputs(job: Job, seat: Seat, slot: Slot) -> list[Op]:
    """What the stage needs before its blocks: on stage 0 the latent back from the last stage
    (after the first step) and the embedding; elsewhere the hidden states (and MM-DiT's text
    stream) from the previous stage and the long skips that enter this stage."""
    t, j, qs = slot.step, slot.patch, slot.tokens
    p = seat.at.stage
    ops: list[Op] = []
    if p == 0:
        if t > 0 and job.last_stage > 0:
            src = seat.stage_peers[job.last_stage]
            if slot.prev_warm and j <= 0:
                # The warmup step before returned the whole latent at once.
                shape = job.latent_shape(-1, job.full // job.seq)
                ops.append(Recv(src, job.nbytes(shape), _tag(("latent", t - 1, -1, -1)), shape))
            elif not slot.prev_warm:
                shape = job.latent_shape(j, qs)
                ops.append(Recv(src, job.nbytes(shape), _tag(("latent", t - 1, j, -1)), shape))
        op = job.block_memo.get((OpKind.EMBED, t, j))  # shared, as in ``patch_ops``
        if op is None:
            op = job.block_memo[(OpKind.EMBED, t, j)] = Compute(
                OpKind.EMBED, t, j, (-1, -1), qs, job.full, job.batch, slot.warm)
        ops.append(op)
        return ops
    src = seat.stage_peers[p - 1]
    hidden, size = slot.hidden, slot.hidden_bytes
    ops.append(Recv(src, size, _tag(("hidden", t, j, seat.first)), hidden))
    if job.forwards_text and j <= 0:
        text = job.hidden(job.model.text_tokens)
        ops.append(Recv(src, job.nbytes(text), _tag(("text", t, j, seat.first)), text))
    for src_layer, dst_layer in job.skips:
        if job.stage_of[dst_layer] == p:
            ops.append(Recv(seat.stage_peers[job.stage_of[src_layer]], size,
                            _tag(("skip", t, j, src_layer)), hidden))
    return ops


def block_ops(job: Job, seat: Seat, slot: Slot) -> list[Op]:
    """The stage's blocks, each (or, merged, the whole stage as one unit) with the collectives
    of Ulysses, ring and tensor parallelism: the projections, Ulysses' all-to-alls, the
    ring's K,V rotation issued before attention and waited for after it, and the
    tensor-parallel all-reduces."""
    # Every rank of a stage runs the same blocks on the same slot, and the ranks of a group
    # list the same collective: ops are immutable, so each is built once and shared (which
    # also makes comparing two ranks' lists cheap).
    memo = job.block_memo
    key = (slot.step, slot.patch, seat.first, seat.last)
    units = memo.get(key)
    if units is None:
        units = memo[key] = _block_parts(job, slot, seat.first, seat.last)
    # Each part of a block, unit after unit (a column): the compute ops and waits as they
    # are, the collectives over the rank's own groups (which kinds a configuration has is
    # the same for every unit). The rank's list takes them row by row.
    if len(units) == 1 and units[0][1:] == _ALONE:  # a stage of one rank per patch
        return [units[0][0]]
    groups = (None, seat.ulysses, seat.ring, None, None, seat.tensor)
    columns = [_column(memo, key, units, part, groups[part])
               for part in range(6) if units[0][part] is not None]
    # Row by row: each column fills every len(columns)-th place (slice assignments, in C).
    ops: list[Op] = [None] * (len(columns) * len(units))  # type: ignore[list-item]
    for k, column in enumerate(columns):
        ops[k::len(columns)] = column
    return ops


# The parts of a unit after its projections where the stage has no Ulysses, ring or tensor
# parallelism: the blocks are one op (``_block_parts``).
_ALONE = (None,) * 5


def _column(memo: dict, key: tuple, units: list[tuple], part: int,
            group: tuple[int, ...] | None) -> list[Op]:
    """Part ``part`` of every unit of ``units`` (the block ops of slot and stage ``key``),
    built once per (slot and stage, part, group) and shared: a compute op or wait as it is
    (``group`` None), a collective as the template over ``group``."""
    column_key = (key, part, group)
    column = memo.get(column_key)
    if column is None:
        if group is None:
            column = memo[column_key] = [unit[part] for unit in units]
        else:
            column = memo[column_key] = [
                Collective(kind, group, nbytes, tag, asynchronous, count)
                for kind, nbytes, tag, asynchronous, count in (unit[part] for unit in units)]
    return column


class _Template(NamedTuple):
    """A collective of ``_block_parts`` before ``_column`` gives it each group (a plain
    tuple: cheaper to build than the op, which every group gets its own of)."""

    kind: str
    nbytes: int
    tag: Tag
    asynchronous: bool
    count: int


_template = partial(tuple.__new__, _Template)  # as ``_tag``: no argument parsing


def _block_parts(job: Job, slot: Slot, first: int, last: int) -> list[tuple]:
    """The ops of ``block_ops`` for any rank of the stage of blocks ``first..last``, per
    unit (``_units``), its collectives as templates (``_Template``, no group yet):
    projections (or the whole blocks), Ulysses' all-to-alls, the ring's rotation, the
    attention core, the wait for the rotation, the tensor-parallel all-reduces (None where
    the configuration has none). What depends on the slot alone is worked out once."""
    t, j, qs, warm = slot.step, slot.patch, slot.tokens, slot.warm
    U, R, T = job.layout.ulysses, job.layout.ring, job.layout.tensor
    full, batch = job.full, job.batch
    split = U > 1 or R > 1
    shard = job.nbytes((batch, qs, job.model.hidden // T)) if split else 0
    part = "proj" if split else "all"
    # MM-DiT: the text stream is replicated, and its queries ride in the query exchange and
    # come back in the output exchange (executor/mmdit.py; K,V carry image rows only): the
    # four exchanges of a block average qs + text/2 rows each.
    size = (shard if not job.forwards_text else job.nbytes(
        (batch, 2 * qs + job.model.text_tokens, job.model.hidden // T)) // 2) if U > 1 else 0
    out = []
    for lo, hi in _units(first, last, job.merge_blocks):
        n = hi - lo + 1
        proj = Compute(OpKind.BLOCKS, t, j, (lo, hi), qs, full, batch, warm, part, T)
        a2a = ring = attn = wait = reduce = None
        if U > 1:
            a2a = _template((OpKind.ALL_TO_ALL, size, _tag(("ulysses", t, j, lo)), False,
                             4 * n))
        if R > 1:
            ring = _template((OpKind.RING_KV, 2 * shard, _tag(("ring", t, j, lo)), True, n))
            wait = Wait(ring.tag)
        if split:
            attn = Compute(OpKind.BLOCKS, t, j, (lo, hi), qs, full, batch, warm, "attn", T)
        if T > 1:
            reduce = _template((OpKind.ALL_REDUCE, slot.hidden_bytes,
                                _tag(("tensor", t, j, lo)), False, job.tensor_reduces * n))
        out.append((proj, a2a, ring, attn, wait, reduce))
    return out


def stage_outputs(job: Job, seat: Seat, slot: Slot) -> list[Op]:
    """What the stage sends on after its blocks: the long skips that leave it, and the hidden
    states (and MM-DiT's text stream) to the same position of the next stage."""
    t, j = slot.step, slot.patch
    p = seat.at.stage
    hidden, size = slot.hidden, slot.hidden_bytes
    ops: list[Op] = []
    for src_layer, dst_layer in job.skips:
        if job.stage_of[src_layer] == p:
            ops.append(Send(seat.stage_peers[job.stage_of[dst_layer]], size,
                            _tag(("skip", t, j, src_layer)), hidden))
    if p < job.last_stage:
        dst = seat.stage_peers[p + 1]
        ops.append(Send(dst, size, _tag(("hidden", t, j, seat.last + 1)), hidden))
        if job.forwards_text and j <= 0:
            text = job.hidden(job.model.text_tokens)
            ops.append(Send(dst, job.nbytes(text), _tag(("text", t, j, seat.last + 1)), text))
    return ops


def final_ops(job: Job, seat: Seat, slot: Slot) -> list[Op]:
    """The last stage finishes the patch: final layer, the CFG halves' all-gather of the noise
    prediction, the scheduler step, and the latent back to stage 0 for the next step."""
    t, j, qs = slot.step, slot.patch, slot.tokens
    # Shared by the ranks of the stage, as in ``patch_ops``.
    shared = job.block_memo.get((OpKind.FINAL, t, j))
    if shared is None:
        shared = job.block_memo[(OpKind.FINAL, t, j)] = (
            Compute(OpKind.FINAL, t, j, (-1, -1), qs, job.full, job.batch, slot.warm),
            Compute(OpKind.SCHEDULER_STEP, t, j, (-1, -1), qs, job.full, job.images,
                    slot.warm))
    ops: list[Op] = [shared[0]]
    if job.layout.cfg > 1:
        # Guidance needs both halves' noise predictions: one all-gather per step (patch).
        ops.append(Collective(OpKind.ALL_GATHER, seat.cfg, job.nbytes(job.latent_shape(j, qs)),
                              _tag(("cfg", t, j, -1))))
    ops.append(shared[1])
    if t < job.steps - 1 and job.last_stage > 0:
        shape = job.latent_shape(j, qs)
        ops.append(Send(seat.stage_peers[0], job.nbytes(shape), _tag(("latent", t, j, -1)),
                        shape))
    return ops


def decode_ops(job: Job, vae: bool) -> list[tuple[int, Op]]:
    """After the loop, as (rank, op): the sequence-parallel ranks of the first CFG half's last
    stage gather the latent, since the VAE needs all of it on one rank, which decodes it."""
    layout = job.layout
    decoder = layout.rank(stage=job.last_stage)
    out: list[tuple[int, Op]] = []
    if job.seq > 1:
        holders = layout.group(decoder, "ring", "ulysses")
        shape = job.latent_shape(-1, job.full // job.seq)
        out += [(rank, Collective(OpKind.ALL_GATHER, holders, job.nbytes(shape),
                                  _tag(("latent", job.steps - 1, -1, -1)))) for rank in holders]
    if vae:
        out.append((decoder, Compute(OpKind.VAE_DECODE, -1, -1, batch=job.images)))
    return out


def _job(wl: Workload, cfg: ParallelConfig, coarse: bool) -> Job:
    m = wl.model
    layout = RankLayout.of(cfg)
    rows, cols = m.token_grid(wl.height, wl.width)
    # Patches belong to PipeFusion; one rank may still run them (the profiler times such ops).
    patches = cfg.patches if cfg.pipefusion > 1 or layout.world == 1 else 1
    stages = partition_layers(m.num_blocks, cfg.pipefusion,
                              list(cfg.stage_blocks) if cfg.stage_blocks else None)
    stage_of = {layer: s for s, (f, lst) in enumerate(stages) for layer in range(f, lst + 1)}
    skips: list[tuple[int, int]] = []
    if m.long_skips:
        n = m.num_blocks
        skips = [(i, n - 1 - i) for i in range(n // 2 - 1) if stage_of[i] != stage_of[n - 1 - i]]
    return Job(model=m, layout=layout, steps=wl.steps, warmup=cfg.warmup,
               batch=m.batch * wl.images // cfg.cfg, images=wl.images,
               dtype_bytes=wl.dtype_bytes, rows=rows, cols=cols,
               patches=patches, patch_rows=split_even(rows, patches), stages=stages,
               stage_of=stage_of, skips=skips, merge_blocks=coarse or cfg.sp == 1,
               full=rows * cols, seq=cfg.ulysses * cfg.ring, last_stage=len(stages) - 1,
               forwards_text=m.family in ("joint", "flux"),
               tensor_reduces=3 if m.family == "cross" else 2)


def _seat(job: Job, rank: int) -> Seat:
    layout = job.layout
    at = layout.coords(rank)
    first, last = job.stages[at.stage]
    return Seat(rank=rank, at=at, first=first, last=last, ulysses=layout.group(rank, "ulysses"),
                ring=layout.group(rank, "ring"), tensor=layout.group(rank, "tensor"),
                cfg=layout.group(rank, "cfg"), stage_peers=layout.group(rank, "stage"))


def _slots(job: Job, step: int) -> list[Slot]:
    """The patches of ``step``: the whole image in warmup steps, else each PipeFusion patch."""
    warm = step < job.warmup
    slots = []
    for j in [-1] if warm else range(job.patches):
        q = job.full if j < 0 else job.patch_rows[j] * job.cols
        hidden = job.hidden(q // job.seq)
        slots.append(Slot(step, j, q // job.seq, warm, step - 1 < job.warmup, hidden,
                          job.nbytes(hidden)))
    return slots


def _units(first: int, last: int, merge: bool) -> list[tuple[int, int]]:
    """Block ranges that get their own communication: one per block, or one per stage."""
    return [(first, last)] if merge else [(i, i) for i in range(first, last + 1)]
