"""Displaced (stale) self-attention: a diffusers attention processor with a full-sequence K,V
buffer (docs/design.md#stale-kv-buffers).

Processing a patch, the layer computes fresh K,V for the patch's tokens, overwrites that slice of
its buffer, and attends with the patch's queries over the whole buffer: slices of patches
already processed this step are fresh, the others are one step old. A full-image (warmup) call
fills the whole buffer, so with warmup >= 1 no slice is ever read before it was written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PatchWindow:
    """Which image tokens the current call carries: ``offset`` is the first token of the patch
    in the full sequence of ``full`` tokens. Shared by all processors of one rank and set by
    the interpreter before each run of blocks."""

    offset: int = 0
    full: int = 0


class StaleKVAttnProcessor:
    """Self-attention over a full-sequence K,V buffer of which only the current patch's slice
    is refreshed. Mirrors diffusers' ``AttnProcessor2_0`` for the layout PixArt uses (no
    spatial/group norm, no q/k norm, no residual inside attention), so a full-image call gives
    the same numbers as the stock processor."""

    def __init__(self, window: PatchWindow) -> None:
        self.window = window
        self.k: torch.Tensor | None = None  # (batch, heads, full, head_dim)
        self.v: torch.Tensor | None = None
        # High-water mark of written tokens. Patches run top to bottom, so without warmup the
        # written part of the buffer is a prefix; attending only over it keeps never-written
        # memory out of the softmax.
        self.filled = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the K and V buffers."""
        if self.k is None:
            return 0
        return 2 * self.k.numel() * self.k.element_size()

    def __call__(self, attn, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("StaleKVAttnProcessor only serves unmasked self-attention (attn1)")
        batch, q_len, _ = hidden_states.shape
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        w = self.window
        if self.k is None or self.k.shape[0] != batch or self.k.shape[2] != w.full:
            shape = (batch, attn.heads, w.full, head_dim)
            self.k = torch.empty(shape, dtype=key.dtype, device=key.device)
            self.v = torch.empty(shape, dtype=value.dtype, device=value.device)
            self.filled = 0
        end = w.offset + q_len
        self.k[:, :, w.offset:end] = key
        self.v[:, :, w.offset:end] = value
        self.filled = max(self.filled, end)
        if q_len == w.full:
            # Whole image: attend over the fresh tensors, exactly as the stock processor does.
            k_all, v_all = key, value
        else:
            k_all, v_all = self.k[:, :, :self.filled], self.v[:, :, :self.filled]

        out = F.scaled_dot_product_attention(query, k_all, v_all, attn_mask=None,
                                             dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        return out / attn.rescale_output_factor
