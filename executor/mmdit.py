"""MM-DiT models in the executor: SD3 (``SD3Transformer2DModel``, joint blocks, guidance batch)
and Flux (``FluxTransformer2DModel``, double-stream then single-stream blocks, guidance
embedded), computed as ``StableDiffusion3Pipeline`` and ``FluxPipeline`` compute them.

MM-DiT blocks carry a text stream beside the image stream: both go in and come out of every
block, and attention runs over image and text tokens together. What that changes (see
docs/executor.md#mm-dit-models and the README):

- The stage's text input: stage 0 computes it (``context_embedder`` of the prompt
  embeddings, the same every step); every later stage receives it from the stage before once
  per step, with the first patch (tag ``text``, as ``sim.strategies.hybrid`` schedules it).
  Each patch starts the stage's blocks from that input, and the text output of the stage's
  last block for the first patch is what goes on to the next stage.
- PipeFusion's stale K,V: in joint attention only the image part of K,V has a buffer (slices
  of patches not yet processed this step are one step old); the text part is computed fresh
  in every call (``JointAttnProcessor``).
- Sequence parallelism splits image tokens only. Every Ulysses and ring rank holds the whole
  text stream (replicated, as in xDiT): under Ulysses the text queries ride along in the
  query all-to-all and come back with all heads in the output all-to-all, while the text keys
  and values are cut to the rank's heads locally; under ring attention the image K,V rotate
  and the text K,V are one more local partial result merged by log-sum-exp.
- Flux's latents are 2x2-packed tokens of 4C channels (``patch_size`` 1); the executor holds
  them in an image layout ``(1, 4C, rows, cols)`` (one pixel per token) and returns them
  packed, ``(1, tokens, 4C)``, as ``FluxPipeline`` does. Its rotary embedding is computed once
  for the text and the whole image and cut to the tokens of each call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from executor.interpreter import StageExecutor
from executor.kv_attention import PatchWindow
from executor.parallel_attention import (
    BlockSlot,
    KVBuffer,
    SeqGeometry,
    attention_lse,
    merge,
    ring_attention,
)
from executor.tokens import take
from sim.schedule import Recv, Send

FLUX = "FluxTransformer2DModel"
SD3 = "SD3Transformer2DModel"
MMDIT_CLASSES = (SD3, FLUX)
JOINT_PROMPT_KEYS = ("prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds",
                     "negative_pooled_prompt_embeds")


@dataclass
class JointPromptInputs:
    """Prompt embeddings as the MM-DiT pipelines take them (batch 1 each): embeds
    ``(1, tokens, joint_attention_dim)``, pooled ``(1, pooled_projection_dim)``. Flux uses the
    positive pair only (its guidance is an input of the model, not a second batch)."""

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    negative_pooled_prompt_embeds: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The four tensors by the pipelines' keyword names."""
        return {k: getattr(self, k) for k in JOINT_PROMPT_KEYS}


def all_blocks(net: torch.nn.Module) -> list[torch.nn.Module]:
    """Every transformer block in the schedule's global numbering: Flux's double-stream
    blocks, then its single-stream blocks; SD3's joint blocks."""
    single = getattr(net, "single_transformer_blocks", None)
    return list(net.transformer_blocks) + (list(single) if single is not None else [])


def keep_mmdit_stage(net: torch.nn.Module, first: int, last: int, is_first: bool,
                     is_last: bool) -> None:
    """Drop what a stage holding blocks ``first..last`` never uses (block indices kept, as
    ``executor.inputs.keep_stage``): the embedders of image and text outside stage 0 (later
    stages receive both streams), the output layers outside the last stage."""
    lists = [net.transformer_blocks]
    if getattr(net, "single_transformer_blocks", None) is not None:
        lists.append(net.single_transformer_blocks)
    i = 0
    for blocks in lists:
        for j in range(len(blocks)):
            if not first <= i <= last:
                blocks[j] = torch.nn.Identity()
            i += 1
    if not is_first:
        net.context_embedder = None
        if isinstance(getattr(net, "x_embedder", None), torch.nn.Module):
            net.x_embedder = None
        else:
            net.pos_embed = None  # SD3's patch embedding and its positional table
    if not is_last:
        net.proj_out = None
        net.norm_out = None


# ---- joint attention ---------------------------------------------------------------------------
class JointAttnProcessor:
    """Joint attention of one MM-DiT block (SD3 joint, Flux double- and single-stream) for
    PipeFusion's stale image K,V and for Ulysses and ring over image tokens. Mirrors
    ``JointAttnProcessor2_0`` and ``FluxAttnProcessor`` (projections, q/k norms, Flux's rotary
    embedding, the output projections of each stream); the attention core differs:

    - image K,V: PipeFusion keeps a full-sequence buffer per layer of which the call refreshes
      the slice of its tokens; the call attends over the buffer (its written prefix);
    - text K,V: fresh, from the text stream of this call;
    - Ulysses: image Q,K,V regrouped by heads (all-to-all), the replicated text queries in the
      query all-to-all, text K,V cut to this rank's heads; ring: image K,V rotated, text K,V a
      local partial result.

    ``text_first``: the order of the joint sequence (Flux: text, image; SD3: image, text), kept
    so that one process computes exactly what the pipeline does. ``text_tokens`` splits a
    single-stream block's concatenated input."""

    def __init__(self, slot: BlockSlot, window: PatchWindow, geo: SeqGeometry | None,
                 stale: bool, text_first: bool, text_tokens: int) -> None:
        self.slot = slot
        self.window = window
        self.geo = geo
        self.buffer = KVBuffer() if stale else None
        self.text_first = text_first
        self.text_tokens = text_tokens

    @property
    def nbytes(self) -> int:
        """Bytes of the stale image K,V buffer."""
        return self.buffer.nbytes if self.buffer is not None else 0

    # ---- projections ------------------------------------------------------------------------
    def __call__(self, attn, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
                 *args, **kwargs):
        if attention_mask is not None:
            raise ValueError("JointAttnProcessor serves unmasked joint attention")
        single = encoder_hidden_states is None
        b = hidden_states.shape[0]
        heads = attn.heads

        def split_heads(x: torch.Tensor) -> torch.Tensor:  # (B, n, H*d) -> (B, H, n, d)
            return x.view(b, x.shape[1], heads, -1).transpose(1, 2)

        q, k, v = (split_heads(f(hidden_states)) for f in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        if single:  # Flux single-stream: one projection of [text, image], split afterwards
            t = self.text_tokens
            (tq, q), (tk, k), (tv, v) = ((x[:, :, :t], x[:, :, t:]) for x in (q, k, v))
        else:
            tq, tk, tv = (split_heads(f(encoder_hidden_states))
                          for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            if getattr(attn, "norm_added_q", None) is not None:
                tq, tk = attn.norm_added_q(tq), attn.norm_added_k(tk)
            t = tq.shape[2]
        if image_rotary_emb is not None:  # rows: the text's, then this call's image tokens
            from diffusers.models.embeddings import apply_rotary_emb

            cos, sin = image_rotary_emb
            tq, tk = (apply_rotary_emb(x, (cos[:t], sin[:t])) for x in (tq, tk))
            q, k = (apply_rotary_emb(x, (cos[t:], sin[t:])) for x in (q, k))
        img, txt = self._attend(q, k, v, tq, tk, tv)
        n = img.shape[2]
        img = img.transpose(1, 2).reshape(b, n, -1).to(q.dtype)
        txt = txt.transpose(1, 2).reshape(b, t, -1).to(q.dtype)
        if single:
            return torch.cat([txt, img], dim=1)
        img = attn.to_out[1](attn.to_out[0](img.contiguous()))
        if not attn.context_pre_only:
            txt = attn.to_add_out(txt.contiguous())
        return img, txt

    # ---- the attention core ----------------------------------------------------------------
    def _joint(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Image part ``a`` and text part ``b`` joined in the model's order."""
        return torch.cat([b, a] if self.text_first else [a, b], dim=2)

    def _split(self, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and text parts of a joint sequence of ``t`` text tokens."""
        if self.text_first:
            return x[:, :, t:], x[:, :, :t]
        return x[:, :, :x.shape[2] - t], x[:, :, x.shape[2] - t:]

    def _attend(self, q, k, v, tq, tk, tv) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and text outputs ``(B, H, n, d)``, ``(B, H, t, d)`` of this call's queries."""
        if self.geo is None:
            return self._pipefusion(q, k, v, tq, tk, tv)
        return self._sequence_parallel(q, k, v, tq, tk, tv)

    def _pipefusion(self, q, k, v, tq, tk, tv):
        """One process per stage: the image K,V of the whole sequence from the buffer."""
        w, buf = self.window, self.buffer
        n, t = q.shape[2], tq.shape[2]
        if buf is not None:
            buf.ensure(k, w.full)
            buf.write([(w.offset, w.offset + n)], k, v)
            if n < w.full:
                k, v = buf.k[:, :, :buf.filled], buf.v[:, :, :buf.filled]
        out = F.scaled_dot_product_attention(self._joint(q, tq), self._joint(k, tk),
                                             self._joint(v, tv), dropout_p=0.0,
                                             is_causal=False)
        return self._split(out, t)

    def _sequence_parallel(self, q, k, v, tq, tk, tv):
        ops, geo = self.slot.ops, self.geo
        U, R = geo.ulysses, geo.ring
        b, heads, n, d = q.shape
        t = tq.shape[2]
        if U > 1:
            # (U, B, H/U, rows, d): head group u goes to Ulysses rank u; what comes back is this
            # rank's head group for the rows of every Ulysses rank, in member order.
            def scatter_heads(x: torch.Tensor) -> torch.Tensor:
                rows = x.shape[2]
                y = ops.all_to_all(x.reshape(b, U, heads // U, rows, d).transpose(0, 1))
                return y.permute(1, 2, 0, 3, 4).reshape(b, heads // U, U * rows, d)

            # The text queries travel with the image queries (replicated on every rank, so
            # each member returns the same text rows); text K,V are cut to this rank's heads.
            q_all = scatter_heads(torch.cat([q, tq], dim=2))
            k, v = scatter_heads(k), scatter_heads(v)
            lo, hi = geo.u * heads // U, (geo.u + 1) * heads // U
            tk, tv = tk[:, lo:hi], tv[:, lo:hi]
        else:
            q_all = torch.cat([q, tq], dim=2)
        if R == 1:
            out = self._local(q_all, k, v, tk, tv)
        else:
            out = self._ring(q_all, k, v, tk, tv)
        if U > 1:
            # Each member's rows (its image run and its copy of the text) go back to it.
            h = out.shape[1]
            x = out.reshape(b, h, U, n + t, d).permute(2, 0, 1, 3, 4)
            y = ops.all_to_all(x)  # (U: head group, B, H/U, n + t, d)
            out = y.transpose(0, 1).reshape(b, heads, n + t, d)
        return out[:, :, :n], out[:, :, n:]

    def _local(self, q_all, k, v, tk, tv) -> torch.Tensor:
        """No ring: over this block's image K,V (the stale buffer under PipeFusion) and the
        text K,V."""
        ops, buf, geo = self.slot.ops, self.buffer, self.geo
        patch = self.slot.patch
        if buf is not None:
            buf.ensure(k, geo.plan.full)
            buf.write(geo.block_ranges(patch, geo.r), k, v)
            if patch >= 0:
                k, v = buf.k[:, :, :buf.filled], buf.v[:, :, :buf.filled]
        ops.attention(True)
        out = F.scaled_dot_product_attention(q_all, self._joint(k, tk), self._joint(v, tv),
                                             dropout_p=0.0, is_causal=False)
        ops.attention(False)
        return out

    def _ring(self, q_all, k, v, tk, tv) -> torch.Tensor:
        """Ring attention over the image K,V blocks, with the text K,V and (under PipeFusion)
        the stale image context outside the patch as further partial results."""
        ops = self.slot.ops
        ops.attention(True)
        acc = merge(None, attention_lse(q_all, tk, tv))
        ops.attention(False)
        return ring_attention(ops, self.geo, self.buffer, self.slot.patch, q_all, k, v, acc)


def _shift(tokens: int, cfg, max_shift: float) -> float:
    """``mu`` of a dynamically shifted flow-matching schedule: linear in the image's token
    count between (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift), as
    diffusers' ``calculate_shift`` (the pipelines' default ``max_shift``: Flux 1.15, SD3
    1.16; imported here without the pipeline modules, which load transformers)."""
    x0, x1 = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
    y0, y1 = cfg.get("base_shift", 0.5), cfg.get("max_shift", max_shift)
    m = (y1 - y0) / (x1 - x0)
    return tokens * m + (y0 - m * x0)


# ---- the stage executor --------------------------------------------------------------------------
class MMDiTStageExecutor(StageExecutor):
    """``StageExecutor`` for SD3 and Flux: the text stream through the stage (computed on
    stage 0, received once per step elsewhere, forwarded with the first patch), the MM-DiT
    conditioning, embedding and final layer, and ``JointAttnProcessor`` where context can be
    stale or sequence parallelism splits the image tokens."""

    def __init__(self, net, *args, **kwargs) -> None:
        self.flux = type(net).__name__ == FLUX
        super().__init__(net, *args, **kwargs)

    # ---- hooks ------------------------------------------------------------------------------
    def _guidance_batch(self, guidance_scale: float) -> bool:
        # Flux-dev embeds the guidance scale as an input: FluxPipeline runs no guidance batch
        # (its "true CFG" needs a negative prompt and true_cfg_scale > 1, left out here).
        return not self.flux and guidance_scale > 1.0

    def _block(self, index: int) -> torch.nn.Module:
        return all_blocks(self.net)[index]

    def _prepare_inputs(self, prompts: JointPromptInputs) -> None:
        device, dtype, net = self.device, self.dtype, self.net

        def pick(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
            pos, neg = pos.to(device=device, dtype=dtype), neg.to(device=device, dtype=dtype)
            if self.cfg_half == 0:
                return neg
            if self.cfg and self.cfg_half < 0:
                return torch.cat([neg, pos], dim=0)  # as the pipeline: unconditional first
            return pos

        pe = pick(prompts.prompt_embeds, prompts.negative_prompt_embeds)
        self.pooled = pick(prompts.pooled_prompt_embeds, prompts.negative_pooled_prompt_embeds)
        self.text_tokens = pe.shape[1]
        # Stage 0 computes the text stream's input; later stages receive theirs.
        self.text_in = net.context_embedder(pe) if self.is_first else None
        self.enc = self.text_in
        self.rope_full = None
        if self.flux:
            # Text ids are zeros; image ids (row, column) of the packed token grid, as
            # FluxPipeline._prepare_latent_image_ids.
            ids = torch.zeros(self.rows, self.cols, 3)
            ids[..., 1] += torch.arange(self.rows)[:, None]
            ids[..., 2] += torch.arange(self.cols)[None, :]
            img_ids = ids.reshape(-1, 3).to(device=device, dtype=dtype)
            txt_ids = torch.zeros(self.text_tokens, 3).to(device=device, dtype=dtype)
            self.rope_full = net.pos_embed(torch.cat((txt_ids, img_ids), dim=0))

    def _set_timesteps(self, template) -> None:
        # As the pipelines' __call__ (retrieve_timesteps): Flux always shifts by the token
        # count with linear sigmas; SD3 only when its scheduler is configured to.
        steps, cfg = self.sched.steps, template.config
        if self.flux:
            import numpy as np

            sigmas = np.linspace(1.0, 1 / steps, steps)
            template.set_timesteps(sigmas=sigmas, device=self.device,
                                   mu=_shift(self.full_tokens, cfg, 1.15))
        elif cfg.get("use_dynamic_shifting", None):
            template.set_timesteps(steps, device=self.device,
                                   mu=_shift(self.full_tokens, cfg, 1.16))
        else:
            template.set_timesteps(steps, device=self.device)

    def _initial_latent(self, seed: int, template) -> torch.Tensor:
        # The flow-matching pipelines start from unscaled noise (no init_noise_sigma).
        from diffusers.utils.torch_utils import randn_tensor

        gen = torch.Generator().manual_seed(seed)
        if not self.flux:
            shape = (1, self.latent_channels, self.rows * self.p, self.cols * self.p)
            return randn_tensor(shape, generator=gen, device=self.device, dtype=self.dtype)
        c = self.latent_channels // 4
        shape = (1, c, 2 * self.rows, 2 * self.cols)
        noise = randn_tensor(shape, generator=gen, device=self.device, dtype=self.dtype)
        # FluxPipeline._pack_latents, then the executor's image layout (one pixel per token).
        packed = noise.view(1, c, self.rows, 2, self.cols, 2).permute(0, 2, 4, 1, 3, 5)
        packed = packed.reshape(1, self.rows, self.cols, 4 * c)
        return packed.permute(0, 3, 1, 2).contiguous()

    def result_latent(self) -> torch.Tensor:
        if not self.flux:
            return self.latent
        return self.latent.flatten(2).transpose(1, 2).contiguous()  # packed (1, tokens, 4C)

    def _full_pos_table(self) -> torch.Tensor | None:
        if self.flux:
            return None  # rotary embedding inside attention instead
        return self.net.pos_embed.cropped_pos_embed(self.rows * self.p, self.cols * self.p)

    def _with_positions(self, x: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        if self.flux:
            return x
        return super()._with_positions(x, t0, t1)

    def _embed_rows(self, lo: int, hi: int) -> torch.Tensor:
        if not self.flux:
            return super()._embed_rows(lo, hi)
        lat = self.latent[:, :, lo:hi].flatten(2).transpose(1, 2)  # packed tokens of the rows
        x = torch.cat([lat] * self.batch) if self.batch > 1 else lat
        return self.net.x_embedder(x)

    def _install_processors(self, stale: bool) -> list:
        layout, rank = self.sched.layout, self.rank
        at = layout.coords(rank)
        if layout.tensor > 1 or self.distrifusion:
            raise ValueError("the executor runs MM-DiT models serial, with PipeFusion, "
                             "Ulysses, ring and CFG parallelism (not tensor or DistriFusion)")
        if not stale and self.seq == 1:
            return []  # diffusers' own processors: exactly the pipeline's computation
        geo = None
        if self.seq > 1:
            geo = SeqGeometry(self.tokens, layout.ulysses, layout.ring, at.ulysses, at.ring,
                              layout.group(rank, "ring"))
        procs = []
        for blk in self.blocks:
            if getattr(blk, "attn2", None) is not None:
                # SD3.5-medium's dual-attention blocks add an image-only self-attention that
                # would need its own stale buffer and sequence split.
                raise ValueError("dual-attention SD3.5 blocks run serial only (or with W = S "
                                 "and no sequence parallelism)")
            proc = JointAttnProcessor(self.slot, self.window, geo, stale, self.flux,
                                      self.text_tokens)
            blk.attn.set_processor(proc)
            procs.append(proc)
        return procs

    def _final_hidden(self) -> torch.Tensor:
        net = self.net
        return net.proj_out(net.norm_out(self.h, self._temb))

    def _msg_shape(self, shape: tuple[int, ...], what: str) -> tuple[int, ...]:
        if what == "text":  # the prompt's own token count, the same on both ends
            return (self.batch, self.text_tokens, shape[-1])
        return super()._msg_shape(shape, what)

    # ---- the ops ------------------------------------------------------------------------------
    def _conditioning(self, step: int) -> None:
        if step == self._cond_step:
            return
        t = self.timesteps[step]
        ts = t.expand(self.batch)
        tte = self.net.time_text_embed
        if self.flux:
            # FluxPipeline passes t/1000 in the latents' dtype; the model multiplies back.
            ts = (ts.to(self.dtype) / 1000).to(self.dtype) * 1000
            g = torch.full([1], self.guidance_scale, device=self.device, dtype=torch.float32)
            g = g.expand(self.batch).to(self.dtype) * 1000
            self._temb = tte(ts, g, self.pooled)
        else:
            self._temb = tte(ts, self.pooled)
        self._cond_step = step

    def embed(self, step: int, patch: int) -> None:
        super().embed(step, patch)
        self.enc = self.text_in  # every patch starts the stage from its text input

    def _rope(self, patch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Flux's rotary rows for the text and this call's image tokens."""
        if self.rope_full is None:
            return None
        t = self.text_tokens
        if self.seq > 1:
            ranges = self._owned(patch)
        else:
            lo, hi = self._band(patch)
            ranges = [(lo // self.p * self.cols, hi // self.p * self.cols)]
        rows = [(0, t)] + [(t + a, t + b) for a, b in ranges]
        return tuple(take(x, rows, 0) for x in self.rope_full)

    def run_blocks(self, step: int, patch: int, layers: tuple[int, int]) -> None:
        """Blocks ``layers`` on the patch in flight and the text stream beside it."""
        self._conditioning(step)
        lo, _ = self._band(patch)
        self.window.offset = lo // self.p * self.cols
        h, enc = self.h, self.enc
        rope = self._rope(patch)
        for i in range(layers[0], layers[1] + 1):
            blk = self.blocks[i - self.first_layer]
            if self.flux:
                enc, h = blk(hidden_states=h, encoder_hidden_states=enc, temb=self._temb,
                             image_rotary_emb=rope)
            else:
                enc, h = blk(hidden_states=h, encoder_hidden_states=enc, temb=self._temb)
        self.h, self.enc = h, enc

    def _send(self, op: Send) -> None:
        if op.tag.what == "text":
            self.comm.isend(op.dst, op.tag, self.enc)
            return
        if op.tag.what == "latent" and self.seq == 1:
            lo, hi = self._band(op.tag.patch)
            self.comm.isend(op.dst, op.tag, self.latent[:, :, lo:hi].reshape(op.shape))
            return
        super()._send(op)

    def _recv(self, op: Recv) -> None:
        what = op.tag.what
        if what == "text" or (what == "latent" and self.seq == 1):
            if not self.comm.is_posted(op.tag):
                self._post_ahead()
            data = self.comm.wait_recv(op.tag)
            if what == "text":
                self.text_in = self.enc = data
            else:
                lo, hi = self._band(op.tag.patch)
                self.latent[:, :, lo:hi] = data.reshape(self.latent[:, :, lo:hi].shape)
            return
        super()._recv(op)
        if what == "hidden":
            self.enc = self.text_in  # the patch starts from the stage's text input
