"""Host time: the CPU seconds an eager PyTorch runtime spends issuing each schedule op.

A GPU runs its kernels asynchronously: the CPU dispatches operators (Python, the ATen
dispatcher, the kernel launch) and runs ahead while the GPU works. When the GPU work per
operator is large the host time hides under it; when it is small (many patches, many GPUs,
low resolution) the GPU waits for the CPU and the host time *is* the latency. The engine keeps
one CPU clock per rank beside the GPU timeline and starts each op no earlier than the CPU has
issued it (``sim.engine``).

What an op costs the host is its count of dispatched operators times the per-operator CPU cost
of an eager runtime (``GPU.launch_overhead_s``, with its source in the registry):

- transformer blocks: the ATen operators one block dispatches in eager diffusers, counted per
  model family by ``python -m profiles.host_ops`` (``DiTModel.host_ops``);
- the ops outside the blocks: the kernel counts the roofline charges them
  (``sim.cost.roofline.OP_KERNELS``);
- a communication call: one operator for the call, plus the layout copies around it
  (Ulysses: a transpose-and-contiguous before and after each all-to-all); a ring-attention
  step: its receive buffers, its two send/receive pairs and the waits on them, the partial
  attention and the log-sum-exp merge of the partial outputs.

A CPU process (the executor on gloo) computes on the CPU itself: its measured compute times
already contain the dispatch, so there is no separate host clock for it (``active``).
"""

from __future__ import annotations

from sim.cost.roofline import OP_KERNELS
from sim.hardware import GPU
from sim.models import DiTModel
from sim.schedule import Collective, Compute, OpKind, Recv, Send, Wait

# Operators one attention call dispatches when a block is split around its attention core
# (sequence parallelism): the scaled-dot-product attention itself.
ATTN_CORE_OPS = 1
# Around each Ulysses all-to-all: a transpose made contiguous before it and after it.
# yunchang's ``all_to_all_4D`` also dispatches reshapes and the output buffer (8 operators
# around the call, counted as ``profiles.host_ops`` counts a block), but the planner's coarse
# ops (merged all-to-alls, ``fast``) then drift 1.1-1.3 % from the per-block simulation in
# host-bound runs, beyond the 1 % ``tests/test_strategies.py`` allows: kept at 4 until the
# coarse ops issue them piece by piece.
ULYSSES_LAYOUT_OPS = 4
# One ring-attention step beyond the first, as yunchang's ring flash attention runs it (the
# ring code of xDiT's USP; zhuzilin/ring-flash-attention's ``RingComm`` and
# ``update_out_and_lse``): two receive buffers allocated (``empty_like``), a send and a receive
# each for K and V (``batch_isend_irecv``), the partial attention, the merge of two partial
# outputs by their log-sum-exp (the partial output cast to fp32, two views of its lse, then
# out -= sigmoid(lse_b - lse) * (out - out_b); lse -= logsigmoid(lse - lse_b): eight
# elementwise operators), and a ``wait`` on each of the four requests. Counted as
# ``profiles.host_ops`` counts a block: every dispatched operator, views included.
RING_STEP_OPS = 2 + 4 + 1 + (1 + 2 + 8) + 4
# Once per ring-attention call: the first partial output cast to fp32 and its lse reshaped
# (3), and at the end the output cast back and the lse reshaped (3).
RING_CALL_OPS = 6
# How far the CPU can run ahead: CUDA queues about 1024 pending kernel launches per stream,
# after which a launch blocks until the GPU frees a slot (as reported on the NVIDIA developer
# forums for cudaLaunchKernel; not a documented constant). The lead is capped at that many
# operators' host time.
QUEUE_OPS = 1024
# Gathering into a preallocated buffer (DistriFusion's stale K,V, the CFG halves): the call and
# one copy out of the gathered tensor.
GATHER_OPS = 2


class HostModel:
    """Host seconds per schedule op for ``model`` on ``gpu`` (``active`` False on a CPU)."""

    def __init__(self, model: DiTModel, gpu: GPU) -> None:
        self.model = model
        self.op_s = gpu.launch_overhead_s
        self.active = gpu.name != "cpu" and gpu.launch_overhead_s > 0
        self._block_ops = [model.block_host_ops(i) for i in range(model.num_blocks)]
        self.max_lead_s = QUEUE_OPS * self.op_s  # the CPU runs at most this far ahead
        self._range_ops: dict[tuple[int, int], int] = {}  # block range -> its operators
        self._seconds: dict[tuple, float] = {}  # see ``seconds``

    def ops(self, op: object) -> float:
        """Operators the CPU dispatches to issue ``op``."""
        if isinstance(op, Compute):
            if op.kind == OpKind.BLOCKS:
                lo, hi = op.layers
                n = hi - lo + 1
                if op.part == "attn":
                    return ATTN_CORE_OPS * n
                total = self._range_ops.get(op.layers)
                if total is None:
                    total = self._range_ops[op.layers] = sum(self._block_ops[lo:hi + 1])
                return total - ATTN_CORE_OPS * n if op.part == "proj" else total
            return OP_KERNELS.get(op.kind, 1)
        if isinstance(op, Collective):
            n = len(op.group)
            if n <= 1:
                return 0.0
            if op.kind == OpKind.ALL_TO_ALL:
                return op.count * (1 + ULYSSES_LAYOUT_OPS)
            if op.kind == OpKind.RING_KV:
                return op.count * ((n - 1) * RING_STEP_OPS + RING_CALL_OPS)
            if op.kind == OpKind.ALL_GATHER:
                return op.count * GATHER_OPS
            return float(op.count)
        if isinstance(op, (Send, Recv, Wait)):
            return 1.0
        raise TypeError(f"unknown op {op!r}")

    def seconds(self, op: object) -> float:
        """Host seconds to issue ``op`` (0 when the model is inactive). Memoised on what the
        count depends on (kind, blocks and part of a compute op; kind, group size and count
        of a collective), not on the op: ops differ in their step and patch, so a memo per op
        almost never hit, and hashing a whole op cost three times the count itself."""
        if not self.active:
            return 0.0
        kind = type(op)
        if kind is Compute:
            key: tuple = (op.kind, op.layers, op.part)  # type: ignore[attr-defined]
        elif kind is Collective:
            key = (op.kind, len(op.group), op.count)  # type: ignore[attr-defined]
        elif kind is Send or kind is Recv or kind is Wait:
            return self.op_s  # one operator
        else:
            return self.ops(op) * self.op_s
        t = self._seconds.get(key)
        if t is None:
            t = self._seconds[key] = self.ops(op) * self.op_s
        return t

    def granularity(self, op: Compute) -> int:
        """Equal pieces the CPU issues ``op`` in (one per block of a block range): the GPU
        starts on the first piece as soon as it is issued, not after the whole range."""
        if op.kind == OpKind.BLOCKS:
            return op.layers[1] - op.layers[0] + 1
        return 1


def issue(now: float, cpu: float, host: float, gpu: float, pieces: int = 1
          ) -> tuple[float, float, float]:
    """(start, end, cpu clock after) of an op of ``gpu`` seconds of GPU work and ``host``
    seconds of CPU issuing, cut in ``pieces`` equal pieces, on a GPU free from ``now`` with a
    CPU free from ``cpu``. Each piece runs once issued and once the previous piece is done;
    the latest-finishing chain starts at the first or the last piece (the bound is linear in
    the piece index), so the end is exact for equal pieces."""
    c1 = cpu + host
    first = cpu + host / pieces
    start = max(now, first)
    end = max(now + gpu, first + gpu, c1 + gpu / pieces)
    return start, end, c1
