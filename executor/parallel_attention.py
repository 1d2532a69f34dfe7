"""Attention processors (diffusers style: set on ``block.attn1`` with ``set_processor``) and
sharded layers for the parallel strategies, all calling their collectives through the block's
``executor.collectives.BlockOps``:

- ``SequenceParallelAttnProcessor``: Ulysses (heads scattered, sequence gathered by three
  all-to-alls, the output sent back by a fourth) and ring attention (K,V rotated round the ring
  by isend/irecv, each round overlapped with attention on the block in hand, partial results
  merged by their log-sum-exp: the online softmax), optionally over PipeFusion's stale
  full-sequence K,V buffer (the same buffer ``StaleKVAttnProcessor`` keeps).
- ``DistriFusionAttnProcessor``: the patch's fresh K,V with every other patch's K,V from the
  previous step, gathered asynchronously during that step.
- ``shard_block``: Megatron tensor parallelism of a PixArt block: Q, K, V and the MLP's first
  layer split by output columns (whole heads), the attention and MLP output projections by
  input rows, each followed by an all-reduce before its bias.

Tensor parallelism replaces modules, so it composes with either processor (and with the stock
one for cross-attention, which then sees the rank's heads only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from executor.collectives import BlockOps
from executor.tokens import Ranges, TokenPlan, put, take


@dataclass
class BlockSlot:
    """What the block in progress works on, shared by the processors of one rank and set by
    the interpreter before each block: the patch (-1: whole image) and the ``BlockOps`` the
    processors call."""

    patch: int = -1
    ops: BlockOps | None = None


def attention_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q`` over ``k, v`` (``(B, H, n, d)``) and the log-sum-exp of each query's
    scores ``(B, H, n)``, float32, for merging partial results."""
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
        return out, lse.float()
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.exp(scores - lse[..., None]), v.float()).to(q.dtype)
    return out, lse


def merge(acc: tuple[torch.Tensor, torch.Tensor] | None,
          part: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Online-softmax merge of two partial attentions over disjoint keys."""
    if acc is None:
        return part[0].float(), part[1]
    out, lse = acc
    o2, l2 = part
    new = torch.logaddexp(lse, l2)
    return (out * torch.exp(lse - new)[..., None]
            + o2.float() * torch.exp(l2 - new)[..., None]), new


@dataclass
class SeqGeometry:
    """A rank's place in its stage's sequence-parallel group."""

    plan: TokenPlan
    ulysses: int  # U
    ring: int  # R
    u: int  # this rank's Ulysses position
    r: int  # this rank's ring position
    ring_ranks: tuple[int, ...] = ()  # global ranks of the ring group, by ring position

    def block_ranges(self, patch: int, r: int) -> Ranges:
        """Tokens of ring position ``r``'s block after the Ulysses exchange: the runs of its
        ``U`` Ulysses ranks, in member order."""
        out: Ranges = []
        for u in range(self.ulysses):
            out += self.plan.owned(patch, r * self.ulysses + u)
        return out


@dataclass
class KVBuffer:
    """PipeFusion's stale K,V of one layer for the whole sequence, ``(B, heads, full, d)``."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    filled: int = 0  # high-water mark of written tokens (patches run top to bottom)

    def ensure(self, like: torch.Tensor, full: int) -> None:
        shape = (like.shape[0], like.shape[1], full, like.shape[3])
        if self.k is None or self.k.shape != shape:
            self.k = torch.empty(shape, dtype=like.dtype, device=like.device)
            self.v = torch.empty_like(self.k)
            self.filled = 0

    def write(self, ranges: Ranges, k: torch.Tensor, v: torch.Tensor) -> None:
        put(self.k, ranges, 2, k)
        put(self.v, ranges, 2, v)
        self.filled = max([self.filled] + [hi for _, hi in ranges])

    @property
    def nbytes(self) -> int:
        return 0 if self.k is None else 2 * self.k.numel() * self.k.element_size()


class SequenceParallelAttnProcessor:
    """Self-attention of a Ulysses and/or ring rank, over a stale K,V buffer when the stage
    runs PipeFusion patches with stale context. Mirrors ``AttnProcessor2_0`` for PixArt's
    self-attention (no masks, norms or residual inside)."""

    def __init__(self, slot: BlockSlot, geo: SeqGeometry, stale: bool) -> None:
        self.slot = slot
        self.geo = geo
        self.buffer = KVBuffer() if stale else None

    @property
    def nbytes(self) -> int:
        """Bytes of the stale K,V buffer."""
        return self.buffer.nbytes if self.buffer is not None else 0

    def __call__(self, attn, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("SequenceParallelAttnProcessor serves unmasked self-attention")
        ops, geo = self.slot.ops, self.geo
        U, R = geo.ulysses, geo.ring
        b, n, _ = hidden_states.shape
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        heads = attn.heads  # this rank's heads (fewer under tensor parallelism)
        d = k.shape[-1] // heads
        if U > 1:
            # (U, B, n, heads/U, d): chunk u (head group u) goes to Ulysses rank u; what comes
            # back is this rank's head group for the runs of every Ulysses rank, in order.
            def scatter_heads(x: torch.Tensor) -> torch.Tensor:
                x = x.view(b, n, U, heads // U, d).permute(2, 0, 1, 3, 4)
                y = ops.all_to_all(x)
                return y.permute(1, 3, 0, 2, 4).reshape(b, heads // U, U * n, d)
            q, k, v = scatter_heads(q), scatter_heads(k), scatter_heads(v)
        else:
            q, k, v = (x.view(b, n, heads, d).transpose(1, 2) for x in (q, k, v))
        patch = self.slot.patch
        if R == 1:
            out = self._local(q, k, v, patch)
        else:
            out = self._ring(q, k, v, patch)
        h = out.shape[1]
        if U > 1:
            # (U, B, n, heads/U, d): the rows of Ulysses rank u's run go back to it.
            x = out.view(b, h, U, n, d).permute(2, 0, 3, 1, 4)
            y = ops.all_to_all(x)  # (U: head group, B, n, heads/U, d)
            out = y.permute(1, 2, 0, 3, 4).reshape(b, n, heads * d)
        else:
            out = out.transpose(1, 2).reshape(b, n, heads * d)
        out = attn.to_out[0](out.to(hidden_states.dtype))
        out = attn.to_out[1](out)
        return out / attn.rescale_output_factor

    def _local(self, q, k, v, patch: int) -> torch.Tensor:
        """No ring: attention over this block's K,V, or the stale buffer under PipeFusion."""
        ops, buf = self.slot.ops, self.buffer
        plan = self.geo.plan
        if buf is not None:
            buf.ensure(k, plan.full)
            buf.write(self.geo.block_ranges(patch, self.geo.r), k, v)
            if patch >= 0:  # a patch: over the whole buffer, partly stale
                k, v = buf.k[:, :, :buf.filled], buf.v[:, :, :buf.filled]
        ops.attention(True)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        ops.attention(False)
        return out

    def _ring(self, q, k, v, patch: int) -> torch.Tensor:
        """Ring attention: ``R`` rounds, each attending over the K,V block in hand while the
        next one travels; partial results merged by log-sum-exp. Under PipeFusion the stale
        context (the buffer outside the patch) is one more partial result."""
        return ring_attention(self.slot.ops, self.geo, self.buffer, patch, q, k, v, None)


def ring_attention(ops, geo, buf, patch: int, q, k, v, acc) -> torch.Tensor:
    """Ring attention of ``q`` over the ring's K,V blocks (``k``, ``v``: this rank's), merged
    by log-sum-exp into ``acc`` (the partial result so far, or ``None``): ``geo.ring`` rounds,
    each attending over the block in hand while the next one travels. Under PipeFusion
    (``buf``, the stale K,V buffer) the buffer outside ``patch`` is one more partial result and
    each block that passes is written into it. Returns the output in ``q``'s dtype."""
    R = geo.ring
    if buf is not None:
        buf.ensure(k, geo.plan.full)
        if patch >= 0:
            lo, hi = geo.plan.patch_range(patch)
            outside = [(0, lo)] + ([(hi, buf.filled)] if buf.filled > hi else [])
            outside = [(a, z) for a, z in outside if z > a]
            if outside:
                ops.attention(True)
                acc = merge(acc, attention_lse(q, take(buf.k, outside, 2),
                                               take(buf.v, outside, 2)))
                ops.attention(False)
    nxt = geo.ring_ranks[(geo.r + 1) % R]
    prev = geo.ring_ranks[(geo.r - 1) % R]
    kv = torch.stack([k, v])
    owner = geo.r
    for rnd in range(R):
        pending = ops.ring_issue(kv, nxt, prev) if rnd < R - 1 else None
        ops.attention(True)
        acc = merge(acc, attention_lse(q, kv[0], kv[1]))
        ops.attention(False)
        if buf is not None:
            buf.write(geo.block_ranges(patch, owner), kv[0], kv[1])
        if pending is not None:
            recv, p = pending
            ops.ring_wait(p)
            kv, owner = recv, (owner - 1) % R
    return acc[0].to(q.dtype)


class DistriFusionAttnProcessor:
    """Self-attention of a DistriFusion patch rank: fresh K,V for its own band of tokens,
    every other band's K,V as gathered during the previous step (all fresh in warmup steps,
    whose gather is blocking)."""

    def __init__(self, slot: BlockSlot, band: tuple[int, int], bands: list[tuple[int, int]]
                 ) -> None:
        self.slot = slot
        self.band = band
        self.bands = bands  # every patch rank's token range, in member order
        self.pad = max(hi - lo for lo, hi in bands)  # all_gather needs equal sizes
        self.k: torch.Tensor | None = None  # (B, heads, full, d): the last gathered K,V
        self.v: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of the gathered K,V held."""
        return 0 if self.k is None else 2 * self.k.numel() * self.k.element_size()

    def _assemble(self, parts: list[torch.Tensor]) -> None:
        kv = torch.cat([p[:, :, :, :hi - lo] for p, (lo, hi) in zip(parts, self.bands)], dim=3)
        self.k, self.v = kv[0], kv[1]

    def __call__(self, attn, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("DistriFusionAttnProcessor serves unmasked self-attention")
        ops = self.slot.ops
        b, n, _ = hidden_states.shape
        heads = attn.heads
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        d = k.shape[-1] // heads
        q, k, v = (x.view(b, n, heads, d).transpose(1, 2) for x in (q, k, v))
        kv = torch.stack([k, v])
        if n < self.pad:
            kv = F.pad(kv, (0, 0, 0, self.pad - n))
        members = len(self.bands)
        gathered = ops.kv_gather(kv, members)
        fresh_all = gathered is not None
        if fresh_all:
            self._assemble(gathered)
        previous = ops.kv_wait()
        if previous is not None:
            self._assemble(previous)
        ops.kv_gather_async(kv, members)
        if fresh_all:
            k_all, v_all = self.k, self.v
        elif self.k is None:  # no warmup: the first step sees its own band only
            k_all, v_all = k, v
        else:
            lo, hi = self.band
            k_all = torch.cat([self.k[:, :, :lo], k, self.k[:, :, hi:]], dim=2)
            v_all = torch.cat([self.v[:, :, :lo], v, self.v[:, :, hi:]], dim=2)
        ops.attention(True)
        out = F.scaled_dot_product_attention(q, k_all, v_all, dropout_p=0.0, is_causal=False)
        ops.attention(False)
        out = out.transpose(1, 2).reshape(b, n, heads * d).to(hidden_states.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        return out / attn.rescale_output_factor


# ---- tensor parallelism ----------------------------------------------------------------------
class RowShardLinear(nn.Module):
    """``all_reduce(x @ W[:, rows]^T) + b``: a linear layer whose input features are split
    over the tensor-parallel group; the bias is added once, after the sum."""

    def __init__(self, linear: nn.Linear, lo: int, hi: int, slot: BlockSlot) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight[:, lo:hi].detach().clone(),
                                   requires_grad=False)
        self.bias = None if linear.bias is None else \
            nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.slot = slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.slot.ops.all_reduce(F.linear(x, self.weight))
        return y if self.bias is None else y + self.bias


def _columns(linear: nn.Linear, lo: int, hi: int) -> nn.Linear:
    """``linear`` keeping output features ``lo..hi``."""
    out = nn.Linear(linear.in_features, hi - lo, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(linear.weight[lo:hi])
        if linear.bias is not None:
            out.bias.copy_(linear.bias[lo:hi])
    out.requires_grad_(False)
    return out


def shard_block(block: nn.Module, t: int, T: int, slot: BlockSlot) -> None:
    """Keep tensor-parallel rank ``t`` of ``T``'s share of a PixArt ``BasicTransformerBlock``
    (in place): heads ``t*H/T..`` of both attentions and the matching MLP columns. A block
    already sharded so (an earlier run of the same process) only has its layers re-pointed at
    ``slot``."""
    done = getattr(block, "tensor_shard", None)
    if done == (t, T):
        for m in block.modules():
            if isinstance(m, RowShardLinear):
                m.slot = slot
        return
    if done is not None:
        raise ValueError(f"block already sharded as {done}, not ({t}, {T})")
    block.tensor_shard = (t, T)
    for attn in (block.attn1, block.attn2):
        heads = attn.heads
        d = attn.to_q.out_features // heads
        lo, hi = t * heads // T * d, (t + 1) * heads // T * d
        attn.to_q = _columns(attn.to_q, lo, hi)
        attn.to_k = _columns(attn.to_k, lo, hi)
        attn.to_v = _columns(attn.to_v, lo, hi)
        attn.to_out[0] = RowShardLinear(attn.to_out[0], lo, hi, slot)
        attn.heads = heads // T
    ff = block.ff.net
    inner = ff[0].proj.out_features
    lo, hi = t * inner // T, (t + 1) * inner // T
    ff[0].proj = _columns(ff[0].proj, lo, hi)
    ff[2] = RowShardLinear(ff[2], lo, hi, slot)
