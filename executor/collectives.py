"""The ``Collective`` and ``Wait`` ops of a schedule on torch.distributed, and the trace rows of
the ops a transformer block performs.

Process groups are built once per launch from the schedule's layout (``axis_groups``): one per
group of each axis (cfg, DistriFusion patch, ring, Ulysses, tensor, and ring x Ulysses for the
final latent gather), looked up by the member tuple a ``Collective`` names.

Each op maps to the call the strategy really makes:

- ``all_to_all`` (ulysses), four per block: ``all_to_all_single`` of Q, K and V (heads
  scattered, sequence gathered) and of the output back;
- ``ring_kv`` (ring), asynchronous: the K,V rotation, ``R-1`` rounds of ``isend`` to the next
  ring rank and ``irecv`` from the previous, each overlapped with attention on the block in
  hand; its ``Wait`` waits on the rounds;
- ``all_reduce`` (tensor), three per block: the row-sharded output projections of
  self-attention, cross-attention and the MLP;
- ``all_gather`` (cfg): the two guidance halves' noise predictions;
- ``all_gather`` (kv), blocking or asynchronous: DistriFusion's gather of every patch rank's
  fresh K,V of one layer;
- ``all_gather`` (latent): the final latent onto every holder, for the decoding rank.

The schedule splits a sequence-parallel block into ``proj`` (everything but the attention core)
and ``attn`` computes with the collectives between them. The real block interleaves them
(projections, exchanges, attention, exchange back, MLP), so ``BlockOps`` charges the time of
each stretch of the block to the op it belongs to: a compute row starts where its first stretch
starts and lasts as long as its stretches together; a blocking collective's row likewise with
the time spent in its calls; an asynchronous collective's row lasts from its issue to its
completion as a watcher thread stamps it; a ``Wait`` row is the time spent blocked in it.
Every block checks that it made exactly the calls its ops stand for (``count``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

from executor import faults
from executor.comm import Comm, CommError, Pending
from sim.engine import collective_bytes_sent
from sim.layout import AXES, RankLayout
from sim.schedule import Collective, Compute, Op, OpKind, Tag, Wait
from sim.trace import TraceRow

# Axis sets that have collectives in some schedule (``("ring", "ulysses")``: the gather of the
# final latent from a stage's sequence-parallel ranks).
AXIS_SETS: tuple[tuple[str, ...], ...] = (("cfg",), ("patch",), ("ring",), ("ulysses",),
                                          ("tensor",), ("ring", "ulysses"))
Groups = dict[tuple[int, ...], dist.ProcessGroup]
_CACHE: dict[tuple, Groups] = {}


def axis_groups(layout: RankLayout, timeout_s: float, backend: str) -> Groups:
    """Every collective group of ``layout`` as a process group, keyed by its member ranks.
    Every rank must call this with the same layout (``new_group`` is collective); cached per
    layout and backend so several runs of one launch share them."""
    key = (layout, backend, dist.get_world_size())
    if key in _CACHE:
        return _CACHE[key]
    groups: Groups = {}
    timeout = timedelta(seconds=timeout_s)
    for axes in AXIS_SETS:
        if all(layout.degrees[AXES.index(a)] == 1 for a in axes):
            continue
        for members in layout.groups(*axes):
            if len(members) > 1 and members not in groups:
                groups[members] = dist.new_group(list(members), timeout=timeout)
    _CACHE[key] = groups
    return groups


def clear_groups() -> None:
    """Forget the cached groups (after the default process group is destroyed)."""
    _CACHE.clear()


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first.split(". This is typically")[0]


class Collectives:
    """One rank's collectives: the process groups, the message layer's watcher (arrival
    stamps of asynchronous work) and the timing of the block in progress (``BlockOps``)."""

    def __init__(self, rank: int, groups: Groups, comm: Comm, clock: Callable[[], float],
                 sync: Callable[[], None] | None) -> None:
        self.rank = rank
        self.groups = groups
        self.comm = comm
        self.clock = clock
        self.sync = sync
        self.block: BlockOps | None = None  # the block being run, set by the interpreter
        self.pending: dict[Tag, tuple[Collective, Pending, object]] = {}
        self.rows: list[TraceRow] = []  # rows of ops outside blocks and of async collectives

    def group(self, op: Collective) -> dist.ProcessGroup:
        """The process group of ``op``'s members."""
        return self.groups[op.group]

    def fail(self, op: Collective | Wait, e: BaseException,
             members: tuple[int, ...] = ()) -> CommError:
        """The one-line error naming this rank, the op and the rank to blame among the
        collective's ``members`` (a ``Wait`` does not hold them: its pending work does)."""
        what = describe(op)
        reason = _reason(e)
        timed_out = isinstance(e, TimeoutError) or "timed out" in reason.lower()
        group = op.group if isinstance(op, Collective) else members
        return CommError(f"rank {self.rank}: {what} failed: "
                         f"{faults.blame(group, timed_out)} ({reason})")

    # ---- blocking and asynchronous calls --------------------------------------------------
    def run_blocking(self, op: Collective, call: Callable[[dist.ProcessGroup], object]):
        """``call(group)`` for the blocking collective ``op``; errors name the op."""
        try:
            return call(self.group(op))
        except CommError:
            raise
        except Exception as e:  # noqa: BLE001 - gloo/NCCL raise RuntimeError and subclasses
            raise self.fail(op, e) from e

    def issue(self, op: Collective, work, keep: object) -> Pending:
        """Hand the asynchronous ``work`` of ``op`` to the watcher, which stamps its
        completion; ``keep`` stays alive with it (buffers)."""
        start = self.clock()
        sent = int(collective_bytes_sent(op.kind, len(op.group), op.nbytes, op.count))
        p = Pending(op.kind + OpKind.ASYNC_SUFFIX, -1, op.tag, sent, None, work, start,
                    group=op.group, keep=keep)
        self.comm.watch(p)
        return p

    def wait(self, op: Collective | Wait, p: Pending) -> None:
        """Block until ``p`` has completed; raises ``CommError`` naming ``op``."""
        if not p.done.wait(self.comm.timeout_s):
            raise self.fail(op, TimeoutError(f"nothing arrived within --timeout "
                                             f"{self.comm.timeout_s:g} s"), p.group)
        if p.error is not None:
            raise self.fail(op, p.error, p.group)
        if self.comm.device.type == "cuda":
            p.work.wait()  # order the compute stream after the collective

    # ---- ops outside blocks -----------------------------------------------------------------
    def all_gather(self, op: Collective, tensor: torch.Tensor) -> list[torch.Tensor]:
        """The blocking ``all_gather`` of ``op`` (every member's ``tensor``, in member order),
        with its trace row."""
        tensor = tensor.contiguous()
        out = [torch.empty_like(tensor) for _ in op.group]
        start = self.clock()
        self.run_blocking(op, lambda g: dist.all_gather(out, tensor, group=g))
        if self.sync is not None:
            self.sync()
        self.rows.append(TraceRow.for_message(
            self.rank, op.kind, op.tag, start, self.clock(),
            int(collective_bytes_sent(op.kind, len(op.group), op.nbytes, op.count)),
            source="measured"))
        return out


def describe(op: Collective | Wait) -> str:
    """``all_to_all of ulysses (step 2, patch 1, layer 3) with ranks (0, 1)``."""
    t = op.tag
    where = f"step {t.step}, patch {t.patch}" + (f", layer {t.layer}" if t.layer >= 0 else "")
    if isinstance(op, Wait):
        return f"wait for {t.what} ({where})"
    return f"{op.kind} of {t.what} ({where}) with ranks {op.group}"


class BlockOps:
    """The ops of one block (a ``blocks`` compute split in ``proj``/``attn`` and the
    collectives and waits between them) and the time the block spends on each.

    The attention processors and sharded layers call ``all_to_all``, ``all_reduce``,
    ``ring_issue``/``ring_wait``, ``kv_gather``/``kv_wait``/``kv_gather_async`` and
    ``attention`` (entering and leaving the attention core); everything else the block does
    is charged to its ``proj`` compute (or its only compute, without a split)."""

    def __init__(self, coll: Collectives, ops: list[Op]) -> None:
        self.coll = coll
        self.ops = ops
        self.proj = next(i for i, op in enumerate(ops) if isinstance(op, Compute))
        attn = [i for i, op in enumerate(ops) if isinstance(op, Compute) and op.part == "attn"]
        self.attn = attn[0] if attn else self.proj
        self.spent = [0.0] * len(ops)
        self.first: list[float | None] = [None] * len(ops)
        self.calls = [0] * len(ops)
        self.phase = self.proj
        self.mark = coll.clock()
        self.first[self.proj] = self.mark
        self.ring: list[Pending] = []

    # ---- bookkeeping ------------------------------------------------------------------------
    def _find(self, cls: type, what: str, kind: str | None = None,
              asynchronous: bool | None = None) -> int | None:
        for i, op in enumerate(self.ops):
            if type(op) is cls and op.tag.what == what and (kind is None or op.kind == kind) \
                    and (asynchronous is None or op.asynchronous == asynchronous):
                return i
        return None

    def _need(self, i: int | None, what: str) -> int:
        if i is None:
            raise RuntimeError(f"rank {self.coll.rank}: the block calls {what}, which its "
                               f"schedule ops do not list: {self.ops}")
        return i

    def switch(self, i: int) -> None:
        """Charge the time since the last switch to the current op and move to op ``i``."""
        if self.coll.sync is not None:
            self.coll.sync()
        now = self.coll.clock()
        self.spent[self.phase] += now - self.mark
        if self.first[i] is None:
            self.first[i] = now
        self.phase, self.mark = i, now

    def attention(self, entering: bool) -> None:
        """Entering (``True``) or leaving the attention core."""
        self.switch(self.attn if entering else self.proj)

    def _blocking(self, i: int, call: Callable[[dist.ProcessGroup], object]):
        back = self.phase
        self.switch(i)
        out = self.coll.run_blocking(self.ops[i], call)
        self.calls[i] += 1
        self.switch(back)
        return out

    # ---- the calls --------------------------------------------------------------------------
    def all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        """``all_to_all_single`` over the Ulysses group: chunk ``k`` of ``x``'s first dim goes
        to the ``k``-th member; the result's chunk ``k`` came from it."""
        i = self._need(self._find(Collective, "ulysses", OpKind.ALL_TO_ALL), "all_to_all")
        x = x.contiguous()
        out = torch.empty_like(x)
        self._blocking(i, lambda g: dist.all_to_all_single(out, x, group=g))
        return out

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of ``x`` over the tensor-parallel group."""
        i = self._need(self._find(Collective, "tensor", OpKind.ALL_REDUCE), "all_reduce")
        x = x.contiguous()
        self._blocking(i, lambda g: dist.all_reduce(x, group=g))
        return x

    def ring_issue(self, kv: torch.Tensor, nxt: int, prev: int) -> tuple[torch.Tensor, Pending]:
        """One round of the ring rotation: send ``kv`` to ``nxt``, receive the same shape from
        ``prev`` (global ranks); returns the receive buffer and the round's pending work."""
        i = self._need(self._find(Collective, "ring", OpKind.RING_KV), "the ring rotation")
        op = self.ops[i]
        back = self.phase
        self.switch(i)
        kv = kv.contiguous()
        buf = torch.empty_like(kv)
        group = self.coll.group(op)
        try:
            works = dist.batch_isend_irecv([dist.P2POp(dist.isend, kv, nxt, group),
                                            dist.P2POp(dist.irecv, buf, prev, group)])
        except Exception as e:  # noqa: BLE001
            raise self.coll.fail(op, e) from e
        p = self.coll.issue(op, _Works(works), (kv, buf))
        self.ring.append(p)
        if self.calls[i] == 0:
            self.first[i] = p.start_s
        self.calls[i] += 1
        self.switch(back)
        return buf, p

    def ring_wait(self, p: Pending) -> None:
        """Block until a ring round has arrived (charged to the ring's ``Wait``)."""
        i = self._need(self._find(Wait, "ring"), "a ring wait")
        back = self.phase
        self.switch(i)
        self.coll.wait(self.ops[i], p)
        self.calls[i] += 1
        self.switch(back)

    def kv_gather(self, kv: torch.Tensor, members: int) -> list[torch.Tensor] | None:
        """DistriFusion's blocking K,V gather (warmup steps), if this block has one."""
        i = self._find(Collective, "kv", OpKind.ALL_GATHER, asynchronous=False)
        if i is None:
            return None
        kv = kv.contiguous()
        out = [torch.empty_like(kv) for _ in range(members)]
        self._blocking(i, lambda g: dist.all_gather(out, kv, group=g))
        return out

    def kv_gather_async(self, kv: torch.Tensor, members: int) -> None:
        """DistriFusion's asynchronous K,V gather for the next step, if this block has one;
        its ``Wait`` comes in the next step's block of the same layer."""
        i = self._find(Collective, "kv", OpKind.ALL_GATHER, asynchronous=True)
        if i is None:
            return
        op = self.ops[i]
        back = self.phase
        self.switch(i)
        kv = kv.contiguous()
        out = [torch.empty_like(kv) for _ in range(members)]
        try:
            work = dist.all_gather(out, kv, group=self.coll.group(op), async_op=True)
        except Exception as e:  # noqa: BLE001
            raise self.coll.fail(op, e) from e
        p = self.coll.issue(op, work, (kv, out))
        self.coll.pending[op.tag] = (op, p, out)
        self.calls[i] += 1
        self.switch(back)

    def kv_wait(self) -> list[torch.Tensor] | None:
        """Wait for the K,V gathered during the previous step, if this block waits for it."""
        i = self._find(Wait, "kv")
        if i is None:
            return None
        op = self.ops[i]
        back = self.phase
        self.switch(i)
        issued, p, out = self.coll.pending.pop(op.tag)
        self.coll.wait(op, p)
        self.coll.rows.append(_async_row(self.coll.rank, issued, p))
        self.calls[i] += 1
        self.switch(back)
        return out

    # ---- the rows -----------------------------------------------------------------------------
    def finish(self) -> list[TraceRow]:
        """Close the block: check that every op was performed as often as it says, and
        return its rows (asynchronous collectives waited for in a later block are recorded
        there)."""
        self.switch(self.proj)
        for i, op in enumerate(self.ops):
            if isinstance(op, Collective):
                # A ring rotation is R-1 rounds of point-to-point exchanges.
                want = op.count * (len(op.group) - 1 if op.kind == OpKind.RING_KV else 1)
                if self.calls[i] != want:
                    raise RuntimeError(f"rank {self.coll.rank}: {describe(op)} stands for "
                                       f"{want} call(s) but the block made {self.calls[i]}")
        rank = self.coll.rank
        rows = []
        for i, op in enumerate(self.ops):
            if isinstance(op, Compute):
                start = self.first[i] if self.first[i] is not None else self.mark
                rows.append(TraceRow.for_compute(rank, op, start, start + self.spent[i],
                                                 "measured"))
            elif isinstance(op, Collective) and op.asynchronous:
                if op.kind == OpKind.RING_KV:
                    end = max(p.end_s for p in self.ring)
                    sent = int(collective_bytes_sent(op.kind, len(op.group), op.nbytes,
                                                     op.count))
                    rows.append(TraceRow.for_message(rank, op.kind + OpKind.ASYNC_SUFFIX,
                                                     op.tag, self.first[i], end, sent,
                                                     source="measured"))
            elif isinstance(op, Collective):
                start = self.first[i]
                sent = int(collective_bytes_sent(op.kind, len(op.group), op.nbytes, op.count))
                rows.append(TraceRow.for_message(rank, op.kind, op.tag, start,
                                                 start + self.spent[i], sent,
                                                 source="measured"))
            else:  # Wait
                start = self.first[i] if self.first[i] is not None else self.mark
                rows.append(TraceRow.for_message(rank, OpKind.WAIT, op.tag, start,
                                                 start + self.spent[i], source="measured"))
        return rows


def _async_row(rank: int, op: Collective, p: Pending) -> TraceRow:
    """The row of an asynchronous collective: from its issue to its completion."""
    sent = int(collective_bytes_sent(op.kind, len(op.group), op.nbytes, op.count))
    return TraceRow.for_message(rank, op.kind + OpKind.ASYNC_SUFFIX, op.tag, p.start_s,
                                p.end_s, sent, source="measured")


class _Works:
    """Several works (a ring round's send and receive) waited for as one."""

    def __init__(self, works: list) -> None:
        self.works = works

    def wait(self, timeout: timedelta | None = None) -> bool:
        for w in self.works:
            if timeout is None:
                w.wait()
            else:
                w.wait(timeout)
        return True

    def is_completed(self) -> bool:
        return all(w.is_completed() for w in self.works)
