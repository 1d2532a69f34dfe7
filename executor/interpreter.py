"""The interpreter: performs one rank's ops of a schedule (PipeFusion, CFG, Ulysses, ring,
tensor, DistriFusion and their hybrids) with a diffusers PixArt transformer, exactly as
``PixArtAlphaPipeline.__call__`` would compute them up to float32 reordering, and records a
trace row per op (the columns of ``sim.trace``, ``source = "measured"``).

What each op does on its rank (docs/design.md, sections PipeFusion and Executor):

- ``embed`` (stage 0): patch embedding of the patch's band of latent rows. The embedding
  convolution's stride equals its kernel, so a band embeds to a contiguous slice of tokens; the
  matching rows of the full image's positional table are added.
- ``blocks``: the stage's transformer blocks on the patch; self-attention runs through
  ``StaleKVAttnProcessor`` when context can be stale (``patches > 1`` and ``warmup < steps``).
- ``final`` (last stage): norm_out, modulation, proj_out, unpatchify, guidance combine and the
  learned-sigma split, as in the pipeline.
- ``scheduler_step`` (last stage): one ``DPMSolverMultistepScheduler`` per patch, same
  timesteps, own model-output history. The multistep update is elementwise, so this equals the
  full-latent step restricted to the patch; a full-image step is split into the patch bands.
- ``Send`` / ``Recv``: ``executor.comm``; receives are posted ahead within a byte budget.
- a ``blocks`` op whose block holds collectives (Ulysses, ring, tensor, DistriFusion) runs with
  the ops that follow it for the same block as one unit: the processors and sharded layers
  (``executor.parallel_attention``) make the calls, ``executor.collectives.BlockOps`` times
  them per op.
- ``Collective`` (cfg): the halves' noise predictions gathered and combined; (latent): the
  final latent gathered onto the decoding rank.

Under CFG parallelism each half runs a batch of one with its own prompt; under Ulysses and
ring a rank holds runs of tokens (``executor.tokens``), so its latents, embeddings, noise and
scheduler steps use a token layout.

The timestep and caption conditioning are cheap, so every stage computes them itself instead of
receiving them.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from executor.collectives import BlockOps, Collectives, Groups
from executor.comm import Comm
from executor.kv_attention import PatchWindow, StaleKVAttnProcessor
from executor.parallel_attention import (
    BlockSlot,
    DistriFusionAttnProcessor,
    SeqGeometry,
    SequenceParallelAttnProcessor,
    shard_block,
)
from executor.tokens import Ranges, TokenPlan, count, put, take, to_image, to_tokens
from sim.schedule import Collective, Compute, Op, OpKind, Recv, Schedule, Send, Wait
from sim.trace import TraceRow

# Collective tags performed inside a block (``executor.collectives.BlockOps``).
BLOCK_TAGS = ("ulysses", "ring", "tensor", "kv")


def loop_mode() -> torch.autograd.grad_mode.no_grad:
    """The autograd mode the loop performs its ops under, which the profiler's timer uses too
    (``profiles.timing``): ``torch.inference_mode`` would reach other kernels by another path
    (``aten.linear`` whole instead of through its autograd decomposition into ``t`` and
    ``addmm``), so a profile timed under it would time other calls than the run makes."""
    return torch.no_grad()


@dataclass
class PromptInputs:
    """Prompt embeddings as the PixArt pipeline takes them (batch 1 each):
    embeds ``(1, tokens, caption_channels)``, masks ``(1, tokens)`` with 1 = keep."""

    prompt_embeds: torch.Tensor
    prompt_attention_mask: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    negative_prompt_attention_mask: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The four tensors by the pipeline's keyword names."""
        return {k: getattr(self, k) for k in ("prompt_embeds", "prompt_attention_mask",
                                              "negative_prompt_embeds",
                                              "negative_prompt_attention_mask")}


@dataclass
class RankResult:
    """What one rank measured. Times are seconds from the origin (the barrier before the loop)."""

    rank: int
    loop_s: float
    rows: list[TraceRow] = field(default_factory=list)
    latents: torch.Tensor | None = None  # final latents (last stage only), on CPU
    kv_buffer_bytes: int = 0


class StageExecutor:
    """One rank's share of the model and its interpreter.

    ``net`` is a ``PixArtTransformer2DModel`` (the parts this stage does not use may have been
    dropped); ``scheduler`` is a template ``DPMSolverMultistepScheduler`` copied once per patch.
    """

    def __init__(self, net, sched: Schedule, rank: int, prompts: PromptInputs, seed: int,
                 guidance_scale: float, scheduler, device: torch.device, dtype: torch.dtype,
                 comm: Comm | None = None, fault: tuple[int, int, str] | None = None,
                 groups: Groups | None = None) -> None:
        self.net = net
        self.sched = sched
        self.rank = rank
        self.ops = sched.ranks[rank]
        layout = sched.layout
        at = layout.coords(rank)
        stage = at.stage
        self.first_layer, self.last_layer = sched.stage_layers[stage]
        self.is_first = stage == 0
        self.is_last = stage == len(sched.stage_layers) - 1
        # The rank that ends up with the whole final latent (the simulator's VAE rank).
        self.holds_result = rank == layout.rank(stage=len(sched.stage_layers) - 1)
        self.cfg_half = at.cfg if layout.cfg > 1 else -1  # -1: both halves in the batch
        self.seq = layout.ulysses * layout.ring
        self.seq_pos = at.ring * layout.ulysses + at.ulysses
        self.distrifusion = layout.patches > 1
        # Collectives inside blocks: each block runs as one unit of ops (``_run_unit``).
        self.block_units = self.seq > 1 or layout.tensor > 1 or self.distrifusion
        self.device = device
        self.dtype = dtype
        self.comm = comm
        self.fault = fault
        self.guidance_scale = guidance_scale
        self.cfg = self._guidance_batch(guidance_scale)
        if self.cfg_half >= 0 and not self.cfg:
            raise ValueError("CFG parallelism needs a guidance scale above 1")
        # Under CFG parallelism each half's ranks run a batch of one (0: unconditional).
        self.batch = 2 if self.cfg and self.cfg_half < 0 else 1
        self.p = net.config.patch_size
        self.rows = sum(sched.patch_rows)
        self.cols = sched.token_cols
        self.full_tokens = self.rows * self.cols
        self.latent_channels = net.config.in_channels
        self.blocks = [self._block(i) for i in range(self.first_layer, self.last_layer + 1)]

        self._prepare_inputs(prompts)

        # --- schedulers: one per patch, identical timesteps -----------------------------------
        template = copy.deepcopy(scheduler)
        self._set_timesteps(template)
        if hasattr(template, "set_begin_index"):
            template.set_begin_index(0)
        self.timesteps = template.timesteps
        self.schedulers = [copy.deepcopy(template) for _ in range(sched.patches)]

        # --- initial latents: every rank draws the same noise, so none is sent -----------------
        self.latent = self._initial_latent(seed, template)

        # --- positional table of the full image (stage 0) -------------------------------------
        self.pos_table = self._full_pos_table() if self.is_first else None

        # --- attention processors and sharded layers -----------------------------------------
        self.tokens = TokenPlan(self.rows, self.cols, tuple(sched.patch_rows), self.seq)
        self.window = PatchWindow(0, self.full_tokens)
        self.slot = BlockSlot()
        stale = sched.patches > 1 and sched.warmup < sched.steps and not self.distrifusion
        self.kv_procs: list = self._install_processors(stale)
        self.coll = Collectives(rank, groups or {}, comm, comm.clock, None) \
            if comm is not None else None

        self._cond_step = -1
        self._temb: torch.Tensor | None = None
        self._embedded_t: torch.Tensor | None = None
        self.h: torch.Tensor | None = None  # hidden states of the patch in flight
        self.noise: torch.Tensor | None = None  # guided noise prediction of the patch
        # Receive-ahead budget: at most the largest single message, but always one.
        recvs = [op for op in self.ops if isinstance(op, Recv)]
        self._recv_ops = recvs
        self._recv_budget = max((self._nbytes(op) for op in recvs), default=0)
        self._next_post = 0

    # ---- model hooks (PixArt here; executor.mmdit overrides them for SD3 and Flux) ----------
    def _guidance_batch(self, guidance_scale: float) -> bool:
        """Whether the pipeline runs a guidance batch of two: as PixArtAlphaPipeline, at a
        scale above 1."""
        return guidance_scale > 1.0

    def _block(self, index: int) -> torch.nn.Module:
        """Transformer block ``index`` (global numbering)."""
        return self.net.transformer_blocks[index]

    def _prepare_inputs(self, prompts) -> None:
        """Caption embeddings, mask bias and resolution conditioning, prepared as
        ``PixArtAlphaPipeline.__call__`` does."""
        net, device, dtype = self.net, self.device, self.dtype
        pe = prompts.prompt_embeds.to(device=device, dtype=dtype)
        pm = prompts.prompt_attention_mask.to(device)
        if self.cfg_half == 0:
            pe = prompts.negative_prompt_embeds.to(device=device, dtype=dtype)
            pm = prompts.negative_prompt_attention_mask.to(device)
        elif self.cfg and self.cfg_half < 0:
            ne = prompts.negative_prompt_embeds.to(device=device, dtype=dtype)
            nm = prompts.negative_prompt_attention_mask.to(device)
            pe = torch.cat([ne, pe], dim=0)
            pm = torch.cat([nm, pm], dim=0)
        # The transformer turns a 2-D mask into an additive bias in the hidden dtype.
        self.enc_bias = ((1 - pm.to(dtype)) * -10000.0).unsqueeze(1)
        with torch.no_grad():
            enc = net.caption_projection(pe) if net.caption_projection is not None else pe
        self.enc = enc.view(self.batch, -1, net.config.num_attention_heads
                            * net.config.attention_head_dim)
        self.added_cond = {"resolution": None, "aspect_ratio": None}
        if net.config.sample_size == 128:
            sched = self.sched
            res = torch.tensor([sched.height, sched.width]).repeat(1, 1)
            ar = torch.tensor([float(sched.height / sched.width)]).repeat(1, 1)
            res, ar = res.to(dtype=dtype, device=device), ar.to(dtype=dtype, device=device)
            if self.batch == 2:
                res, ar = torch.cat([res, res]), torch.cat([ar, ar])
            self.added_cond = {"resolution": res, "aspect_ratio": ar}

    def _set_timesteps(self, template) -> None:
        """The pipeline's timesteps on the scheduler ``template``."""
        template.set_timesteps(self.sched.steps, device=self.device)

    def _initial_latent(self, seed: int, template) -> torch.Tensor:
        """The pipeline's initial noise in the image layout ``(1, C, rows*p, cols*p)``."""
        from diffusers.utils.torch_utils import randn_tensor

        shape = (1, self.latent_channels, self.rows * self.p, self.cols * self.p)
        gen = torch.Generator().manual_seed(seed)
        latent = randn_tensor(shape, generator=gen, device=self.device, dtype=self.dtype)
        return latent * template.init_noise_sigma

    def _install_processors(self, stale: bool) -> list:
        """Set the attention processors (and tensor-parallel shards) the strategy needs on
        this stage's blocks; returns the processors that hold buffers."""
        layout, rank = self.sched.layout, self.rank
        at = layout.coords(rank)
        procs: list = []
        for blk in self.blocks:
            if layout.tensor > 1:
                shard_block(blk, at.tensor, layout.tensor, self.slot)
            if self.distrifusion:
                bands = [self.tokens.patch_range(d) for d in range(layout.patches)]
                proc = DistriFusionAttnProcessor(self.slot, bands[at.patch], bands)
            elif self.seq > 1:
                geo = SeqGeometry(self.tokens, layout.ulysses, layout.ring, at.ulysses, at.ring,
                                  layout.group(rank, "ring"))
                proc = SequenceParallelAttnProcessor(self.slot, geo, stale)
            elif stale:
                proc = StaleKVAttnProcessor(self.window)
            else:
                continue
            blk.attn1.set_processor(proc)
            procs.append(proc)
        return procs

    def _with_positions(self, x: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        """Embedded tokens ``t0..t1`` plus their rows of the positional table."""
        return (x + self.pos_table[:, t0:t1]).to(x.dtype)

    def _final_hidden(self) -> torch.Tensor:
        """PixArt's final layer on the patch in flight: norm, modulation by the timestep
        embedding, projection, ``(B, tokens, p*p*out_channels)``."""
        net = self.net
        shift, scale = (net.scale_shift_table[None]
                        + self._embedded_t[:, None].to(net.scale_shift_table.device)).chunk(2, 1)
        h = net.norm_out(self.h)
        h = h * (1 + scale.to(h.device)) + shift.to(h.device)
        return net.proj_out(h).squeeze(1)

    def result_latent(self) -> torch.Tensor:
        """The final latent as the pipeline returns it (``output_type="latent"``)."""
        return self.latent

    # ---- helpers ---------------------------------------------------------------------------
    def _full_pos_table(self) -> torch.Tensor:
        """Positional table of the whole image, ``(1, tokens, hidden)``, as ``PatchEmbed``
        would add it to a full-image call."""
        from diffusers.models.embeddings import get_2d_sincos_pos_embed

        pe = self.net.pos_embed
        if pe.pos_embed_max_size:
            raise NotImplementedError("cropped positional tables (pos_embed_max_size) are not "
                                      "supported by the band embedding")
        if pe.height != self.rows or pe.width != self.cols:
            table = get_2d_sincos_pos_embed(
                embed_dim=pe.pos_embed.shape[-1], grid_size=(self.rows, self.cols),
                base_size=pe.base_size, interpolation_scale=pe.interpolation_scale,
                device=self.device, output_type="pt")
            return table.float().unsqueeze(0)
        return pe.pos_embed

    def _msg_shape(self, shape: tuple[int, ...], what: str) -> tuple[int, ...]:
        # The schedule assumes the guidance batch of the model; without guidance it is 1.
        if what in ("hidden", "text", "skip"):
            return (self.batch,) + tuple(shape[1:])
        return tuple(shape)

    def _nbytes(self, op: Send | Recv) -> int:
        n = 1
        for d in self._msg_shape(op.shape, op.tag.what):
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()

    def _band(self, patch: int) -> tuple[int, int]:
        """Latent rows (pixels of the latent, not tokens) of ``patch`` (-1: all)."""
        if patch < 0:
            return 0, self.rows * self.p
        r0 = self.sched.patch_row_offset(patch)
        return r0 * self.p, (r0 + self.sched.patch_rows[patch]) * self.p

    def _conditioning(self, step: int) -> None:
        if step == self._cond_step:
            return
        t = self.timesteps[step]
        ts = t[None].to(self.device).expand(self.batch)
        self._temb, self._embedded_t = self.net.adaln_single(
            ts, self.added_cond, batch_size=self.batch, hidden_dtype=self.dtype)
        self._cond_step = step

    def _post_ahead(self) -> None:
        """Post receives ahead, in schedule order, while their buffers fit in the budget."""
        comm = self.comm
        while self._next_post < len(self._recv_ops):
            op = self._recv_ops[self._next_post]
            outstanding = sum(p.nbytes for p in comm.recvs.values())
            if outstanding and outstanding + self._nbytes(op) > self._recv_budget:
                return
            comm.post_recv(op.src, op.tag, self._msg_shape(op.shape, op.tag.what), self.dtype)
            self._next_post += 1

    # ---- the ops -----------------------------------------------------------------------------
    def _owned(self, patch: int) -> Ranges:
        """Token ranges this rank holds of ``patch`` (``executor.tokens``)."""
        return self.tokens.owned(patch, self.seq_pos)

    def _embed_rows(self, lo: int, hi: int) -> torch.Tensor:
        """Embedded tokens of latent rows ``lo..hi`` (pixels), without positions."""
        lat = self.latent[:, :, lo:hi]
        x = torch.cat([lat] * self.batch) if self.batch > 1 else lat
        pe = self.net.pos_embed
        x = pe.proj(x)
        if pe.flatten:
            x = x.flatten(2).transpose(1, 2)
        if pe.layer_norm:
            x = pe.norm(x)
        return x

    def embed(self, step: int, patch: int) -> None:
        """Patch embedding of the patch's latent band (or, sequence parallel, of this rank's
        runs of tokens) plus its positional rows, in a contiguous ``(B, tokens, hidden)``
        layout."""
        self._conditioning(step)
        if self.seq > 1:
            parts = []
            for a, b in self._owned(patch):
                r0, r1 = a // self.cols, -(-b // self.cols)  # the rows covering the run
                x = self._embed_rows(r0 * self.p, r1 * self.p)
                x = x[:, a - r0 * self.cols:b - r0 * self.cols]
                parts.append(self._with_positions(x, a, b))
            self.h = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        else:
            lo, hi = self._band(patch)
            x = self._embed_rows(lo, hi)
            t0 = lo // self.p * self.cols
            t1 = hi // self.p * self.cols
            self.h = self._with_positions(x, t0, t1)
        # The convolution's tokens come out as a transposed view, (B, hidden, tokens)
        # underneath, and the positional add keeps that layout. SD3's residual stream would
        # carry it through every block (PixArt's through its first): two more copies and
        # strided adds per block, 10-20 % of an sd3-tiny block on one CPU thread. Blocks that
        # receive their input (later stages) and the profiler's blocks get it contiguous;
        # one copy here makes every block run the work the profile timed.
        self.h = self.h.contiguous()

    def run_blocks(self, step: int, patch: int, layers: tuple[int, int]) -> None:
        """Blocks ``layers`` (inclusive, global indices) on the patch in flight."""
        self._conditioning(step)
        lo, _ = self._band(patch)
        self.window.offset = lo // self.p * self.cols
        h = self.h
        for i in range(layers[0], layers[1] + 1):
            blk = self.blocks[i - self.first_layer]
            h = blk(h, attention_mask=None, encoder_hidden_states=self.enc,
                    encoder_attention_mask=self.enc_bias, timestep=self._temb,
                    cross_attention_kwargs=None, class_labels=None)
        self.h = h

    def final(self, step: int, patch: int) -> None:
        """Final layer, unpatchify, guidance combine and learned-sigma split."""
        self._conditioning(step)
        net = self.net
        lo, hi = self._band(patch)
        rows = (hi - lo) // self.p
        h = self._final_hidden()
        oc = net.out_channels
        if self.seq > 1:
            # Token layout (B, oc, tokens, p*p): a run of tokens need not be whole rows.
            n = h.shape[1]
            noise = h.reshape(-1, n, self.p, self.p, oc).permute(0, 4, 1, 2, 3)
            noise = noise.reshape(-1, oc, n, self.p * self.p)
        else:
            h = h.reshape(shape=(-1, rows, self.cols, self.p, self.p, oc))
            h = torch.einsum("nhwpqc->nchpwq", h)
            noise = h.reshape(shape=(-1, oc, rows * self.p, self.cols * self.p))
        if oc // 2 == self.latent_channels:
            # The learned-sigma split first: guidance is elementwise, so this commutes with it.
            noise = noise.chunk(2, dim=1)[0]
        if self.batch == 2:
            uncond, text = noise.chunk(2)
            noise = uncond + self.guidance_scale * (text - uncond)
        self.noise = noise  # under CFG parallelism one half's, combined by the cfg gather

    def cfg_gather(self, op: Collective) -> None:
        """CFG parallelism: gather both halves' noise predictions and combine them as the
        pipeline does (member 0 holds the unconditional half)."""
        uncond, text = self.coll.all_gather(op, self.noise)
        self.noise = uncond + self.guidance_scale * (text - uncond)

    def latent_gather(self, op: Collective) -> None:
        """The final latent onto every holder: DistriFusion's bands, or the runs of a stage's
        sequence-parallel ranks."""
        layout = self.sched.layout
        if self.distrifusion:
            bands = [self._band(d) for d in range(layout.patches)]
            pad = max(hi - lo for lo, hi in bands)
            lo, hi = self._band(layout.coords(self.rank).patch)
            mine = self.latent[:, :, lo:hi]
            mine = torch.nn.functional.pad(mine, (0, 0, 0, pad - (hi - lo)))
            for (a, b), part in zip(bands, self.coll.all_gather(op, mine)):
                self.latent[:, :, a:b] = part[:, :, :b - a]
            return
        tok = to_tokens(self.latent, self.p)
        mine = take(tok, self._owned(-1), 2)
        for member, part in zip(op.group, self.coll.all_gather(op, mine)):
            at = layout.coords(member)
            put(tok, self.tokens.owned(-1, at.ring * layout.ulysses + at.ulysses), 2, part)
        self.latent = to_image(tok, self.p, self.rows, self.cols)

    def _latent_tokens(self, ranges: Ranges) -> torch.Tensor:
        """This rank's latent elements of ``ranges``, ``(1, C, tokens, p*p)``."""
        return take(to_tokens(self.latent, self.p), ranges, 2).contiguous()

    def _set_latent_tokens(self, ranges: Ranges, values: torch.Tensor) -> None:
        tok = to_tokens(self.latent, self.p)
        put(tok, ranges, 2, values)
        self.latent = to_image(tok, self.p, self.rows, self.cols)

    def scheduler_step(self, step: int, patch: int) -> None:
        """Multistep update of the patch (or of every patch band, for a full-image step)."""
        t = self.timesteps[step]
        if self.seq > 1:
            # Each run belongs to one patch and keeps its scheduler (``executor.tokens``).
            at = 0
            for a, b in self._owned(patch):
                j = self.tokens.patch_of(a)
                noise = self.noise[:, :, at:at + b - a].contiguous()
                sample = self._latent_tokens([(a, b)])
                out = self.schedulers[j].step(noise, t, sample, return_dict=False)[0]
                self._set_latent_tokens([(a, b)], out)
                at += b - a
            return
        patches = range(self.sched.patches) if patch < 0 else [patch]
        base, _ = self._band(patch)
        for j in patches:
            lo, hi = self._band(j)
            noise = self.noise[:, :, lo - base:hi - base].contiguous()
            sample = self.latent[:, :, lo:hi].contiguous()
            out = self.schedulers[j].step(noise, t, sample, return_dict=False)[0]
            self.latent[:, :, lo:hi] = out

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, origin: float, sync=None) -> RankResult:
        """Perform every op of this rank in order. ``origin`` is the ``perf_counter`` value of
        time zero; ``sync`` (CUDA) is called before a compute row is closed so that its end time
        is the device's."""
        rows: list[TraceRow] = []
        rank = self.rank
        clock = time.perf_counter
        fault = self.fault
        if self.coll is not None:
            self.coll.sync = sync
        ops = self.ops
        i = 0
        with loop_mode():
            while i < len(ops):
                op = ops[i]
                i += 1
                if self.comm is not None:
                    self._post_ahead()
                if isinstance(op, Compute):
                    if fault is not None and fault[0] == rank and fault[1] == op.step:
                        inject(fault[2], rank)
                    if op.kind == OpKind.BLOCKS and self.block_units:
                        end = _unit_end(ops, i - 1)
                        rows += self._run_unit(ops[i - 1:end])
                        i = end
                        continue
                    start = clock() - origin
                    if op.kind == OpKind.CONDITION:
                        self._conditioning(op.step)
                    elif op.kind == OpKind.EMBED:
                        self.embed(op.step, op.patch)
                    elif op.kind == OpKind.BLOCKS:
                        self.run_blocks(op.step, op.patch, op.layers)
                    elif op.kind == OpKind.FINAL:
                        self.final(op.step, op.patch)
                    elif op.kind == OpKind.SCHEDULER_STEP:
                        self.scheduler_step(op.step, op.patch)
                    else:
                        raise ValueError(f"op kind {op.kind!r} is outside the executor's loop; "
                                         "build the workload with text_encoder=False, vae=False")
                    if sync is not None:
                        sync()
                    rows.append(TraceRow.for_compute(rank, op, start, clock() - origin,
                                                     "measured"))
                elif isinstance(op, Send):
                    self._send(op)
                elif isinstance(op, Recv):
                    self._recv(op)
                elif isinstance(op, Collective) and op.tag.what == "cfg":
                    self.cfg_gather(op)
                elif isinstance(op, Collective) and op.tag.what == "latent":
                    self.latent_gather(op)
                else:
                    raise TypeError(f"the executor cannot perform {op!r} here")
            if self.comm is not None:
                self.comm.wait_sends()
        if sync is not None:
            sync()
        loop_s = clock() - origin
        if self.comm is not None:
            for p in self.comm.finished:
                rows.append(TraceRow.for_message(rank, p.kind, p.tag, p.start_s, p.end_s,
                                                 p.nbytes, p.peer, "measured"))
        if self.coll is not None:
            rows += self.coll.rows
        latents = self.result_latent().detach().to("cpu") if self.holds_result else None
        return RankResult(rank, loop_s, rows, latents,
                          sum(p.nbytes for p in self.kv_procs))

    def _run_unit(self, ops: list[Op]) -> list[TraceRow]:
        """One block with the collectives inside it (``executor.collectives.BlockOps``): the
        processors and sharded layers make the calls, the rows come back per op."""
        first = ops[0]
        self.slot.patch = first.patch
        self.slot.ops = BlockOps(self.coll, ops)
        self.run_blocks(first.step, first.patch, first.layers)
        rows = self.slot.ops.finish()
        self.slot.ops = None
        return rows

    def _send(self, op: Send) -> None:
        what = op.tag.what
        if what == "hidden":
            tensor = self.h
        elif what == "latent" and self.seq > 1:
            tensor = self._latent_tokens(self._owned(op.tag.patch)).reshape(op.shape)
        elif what == "latent":
            lo, hi = self._band(op.tag.patch)
            tensor = self.latent[:, :, lo:hi]
        else:
            raise NotImplementedError(f"messages of kind {what!r} (MM-DiT text, long skips) "
                                      "are not supported by the PixArt executor")
        self.comm.isend(op.dst, op.tag, tensor)

    def _recv(self, op: Recv) -> None:
        if not self.comm.is_posted(op.tag):
            self._post_ahead()
        data = self.comm.wait_recv(op.tag)
        what = op.tag.what
        if what == "hidden":
            self.h = data
        elif what == "latent" and self.seq > 1:
            ranges = self._owned(op.tag.patch)
            shape = (1, self.latent_channels, count(ranges), self.p * self.p)
            self._set_latent_tokens(ranges, data.reshape(shape))
        elif what == "latent":
            lo, hi = self._band(op.tag.patch)
            self.latent[:, :, lo:hi] = data
        else:
            raise NotImplementedError(f"messages of kind {what!r} are not supported")


# What the interpreter's loop performs: every compute kind but those outside the loop.
LOOP_KINDS = tuple(k for k in OpKind.COMPUTE if k not in OpKind.OUTSIDE_LOOP)


# Collectives the executor performs, by tag: (kinds, where).
PERFORMED = {
    "ulysses": ((OpKind.ALL_TO_ALL,), "block"),
    "ring": ((OpKind.RING_KV,), "block"),
    "tensor": ((OpKind.ALL_REDUCE,), "block"),
    "kv": ((OpKind.ALL_GATHER,), "block"),
    "cfg": ((OpKind.ALL_GATHER,), "loop"),
    "latent": ((OpKind.ALL_GATHER,), "loop"),
}


def unsupported_ops(sched: Schedule) -> str | None:
    """Why the executor cannot run ``sched`` (``None`` if it can): it performs the messages
    of PixArt and MM-DiT schedules (hidden states, latents, text streams), whole, split
    (``proj``/``attn``) and tensor-sharded blocks, and the collectives of ``PERFORMED``.
    First checks the schedule contract as the engine does (matched messages, no deadlock),
    so a broken schedule raises ``ScheduleError`` before any process starts instead of
    hanging until the timeout."""
    sched.validate()
    sched.check_progress()
    for rank, ops in enumerate(sched.ranks):
        for op in ops:
            if isinstance(op, Send | Recv):
                # The text stream of MM-DiT models moves with the first patch
                # (executor.mmdit); HunyuanDiT's long skips are not performed.
                if op.tag.what not in ("hidden", "latent", "text"):
                    return f"rank {rank} exchanges '{op.tag.what}' tensors (long skips)"
            elif isinstance(op, Compute):
                if op.kind not in LOOP_KINDS:
                    return f"rank {rank} has a '{op.kind}' op outside the denoising loop"
            elif isinstance(op, Collective | Wait):
                kinds, _ = PERFORMED.get(op.tag.what, ((), ""))
                if isinstance(op, Collective) and op.kind not in kinds:
                    return (f"rank {rank} has a {op.kind} of '{op.tag.what}' tensors, which "
                            "the executor does not perform")
            else:
                return f"rank {rank} has a {type(op).__name__} op"
    return None


def _unit_end(ops: list[Op], start: int) -> int:
    """Index after the block unit that starts with the ``blocks`` compute at ``start``: its
    collectives and waits, its ``attn`` part, up to the next block or the block's end."""
    first = ops[start]
    j = start + 1
    while j < len(ops):
        op = ops[j]
        if isinstance(op, Collective | Wait) and op.tag.what in BLOCK_TAGS \
                and op.tag.layer == first.layers[0]:
            j += 1
        elif isinstance(op, Compute) and op.kind == OpKind.BLOCKS and op.part == "attn" \
                and op.layers == first.layers:
            j += 1
        else:
            break
    return j


def inject(mode: str, rank: int) -> None:
    """Fault injection for the fault tests: ``exit`` dies at once, ``hang`` stops forever."""
    import os
    import sys

    print(f"rank {rank}: injected fault '{mode}'", file=sys.stderr, flush=True)
    if mode == "exit":
        os._exit(3)
    while True:
        time.sleep(3600)

