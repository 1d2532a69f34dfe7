"""The interpreter: performs one rank's ops of a PipeFusion schedule with a diffusers PixArt
transformer, exactly as ``PixArtAlphaPipeline.__call__`` would compute them, and records a trace
row per op (the columns of ``sim.trace``, ``source = "measured"``).

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

The timestep and caption conditioning are cheap, so every stage computes them itself instead of
receiving them.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from executor.comm import Comm
from executor.kv_attention import PatchWindow, StaleKVAttnProcessor
from sim.schedule import Compute, OpKind, Recv, Schedule, Send
from sim.trace import TraceRow


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
                 comm: Comm | None = None, fault: tuple[int, int, str] | None = None) -> None:
        self.net = net
        self.sched = sched
        self.rank = rank
        self.ops = sched.ranks[rank]
        stage = sched.layout.stage(rank)
        self.first_layer, self.last_layer = sched.stage_layers[stage]
        self.is_first = stage == 0
        self.is_last = stage == len(sched.stage_layers) - 1
        self.device = device
        self.dtype = dtype
        self.comm = comm
        self.fault = fault
        self.guidance_scale = guidance_scale
        self.cfg = guidance_scale > 1.0  # as the pipeline: no guidance batch at scale <= 1
        self.batch = 2 if self.cfg else 1
        self.p = net.config.patch_size
        self.rows = sum(sched.patch_rows)
        self.cols = sched.token_cols
        self.full_tokens = self.rows * self.cols
        self.latent_channels = net.config.in_channels
        self.blocks = [net.transformer_blocks[i]
                       for i in range(self.first_layer, self.last_layer + 1)]

        # --- conditioning inputs, prepared as PixArtAlphaPipeline.__call__ does -------------
        pe = prompts.prompt_embeds.to(device=device, dtype=dtype)
        pm = prompts.prompt_attention_mask.to(device)
        if self.cfg:
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
            res = torch.tensor([sched.height, sched.width]).repeat(1, 1)
            ar = torch.tensor([float(sched.height / sched.width)]).repeat(1, 1)
            res, ar = res.to(dtype=dtype, device=device), ar.to(dtype=dtype, device=device)
            if self.cfg:
                res, ar = torch.cat([res, res]), torch.cat([ar, ar])
            self.added_cond = {"resolution": res, "aspect_ratio": ar}

        # --- schedulers: one per patch, identical timesteps -----------------------------------
        template = copy.deepcopy(scheduler)
        template.set_timesteps(sched.steps, device=device)
        if hasattr(template, "set_begin_index"):
            template.set_begin_index(0)
        self.timesteps = template.timesteps
        self.schedulers = [copy.deepcopy(template) for _ in range(sched.patches)]

        # --- initial latents: every rank draws the same noise, so none is sent -----------------
        from diffusers.utils.torch_utils import randn_tensor

        shape = (1, self.latent_channels, self.rows * self.p, self.cols * self.p)
        gen = torch.Generator().manual_seed(seed)
        self.latent = randn_tensor(shape, generator=gen, device=device, dtype=dtype)
        self.latent = self.latent * template.init_noise_sigma

        # --- positional table of the full image (stage 0) -------------------------------------
        self.pos_table = self._full_pos_table() if self.is_first else None

        # --- stale K,V processors -------------------------------------------------------------
        self.window = PatchWindow(0, self.full_tokens)
        self.kv_procs: list[StaleKVAttnProcessor] = []
        if sched.patches > 1 and sched.warmup < sched.steps:
            for blk in self.blocks:
                proc = StaleKVAttnProcessor(self.window)
                blk.attn1.set_processor(proc)
                self.kv_procs.append(proc)

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
    def embed(self, step: int, patch: int) -> None:
        """Patch embedding of the patch's latent band plus its positional rows."""
        self._conditioning(step)
        lo, hi = self._band(patch)
        lat = self.latent[:, :, lo:hi]
        x = torch.cat([lat] * 2) if self.cfg else lat
        pe = self.net.pos_embed
        x = pe.proj(x)
        if pe.flatten:
            x = x.flatten(2).transpose(1, 2)
        if pe.layer_norm:
            x = pe.norm(x)
        t0 = lo // self.p * self.cols
        t1 = hi // self.p * self.cols
        self.h = (x + self.pos_table[:, t0:t1]).to(x.dtype)

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
        shift, scale = (net.scale_shift_table[None]
                        + self._embedded_t[:, None].to(net.scale_shift_table.device)).chunk(2, 1)
        h = net.norm_out(self.h)
        h = h * (1 + scale.to(h.device)) + shift.to(h.device)
        h = net.proj_out(h).squeeze(1)
        oc = net.out_channels
        h = h.reshape(shape=(-1, rows, self.cols, self.p, self.p, oc))
        h = torch.einsum("nhwpqc->nchpwq", h)
        noise = h.reshape(shape=(-1, oc, rows * self.p, self.cols * self.p))
        if self.cfg:
            uncond, text = noise.chunk(2)
            noise = uncond + self.guidance_scale * (text - uncond)
        if net.config.out_channels // 2 == self.latent_channels:
            noise = noise.chunk(2, dim=1)[0]
        self.noise = noise

    def scheduler_step(self, step: int, patch: int) -> None:
        """Multistep update of the patch (or of every patch band, for a full-image step)."""
        t = self.timesteps[step]
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
        with torch.no_grad():
            for op in self.ops:
                if self.comm is not None:
                    self._post_ahead()
                if isinstance(op, Compute):
                    if fault is not None and fault[0] == rank and fault[1] == op.step:
                        _inject(fault[2], rank)
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
                else:
                    raise TypeError(f"the executor cannot perform {op!r}")
            if self.comm is not None:
                self.comm.wait_sends()
        if sync is not None:
            sync()
        loop_s = clock() - origin
        if self.comm is not None:
            for p in self.comm.finished:
                rows.append(TraceRow.for_message(rank, p.kind, p.tag, p.start_s, p.end_s,
                                                 p.nbytes, p.peer, "measured"))
        latents = self.latent.detach().to("cpu") if self.is_last else None
        return RankResult(rank, loop_s, rows, latents,
                          sum(p.nbytes for p in self.kv_procs))

    def _send(self, op: Send) -> None:
        what = op.tag.what
        if what == "hidden":
            tensor = self.h
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
        elif what == "latent":
            lo, hi = self._band(op.tag.patch)
            self.latent[:, :, lo:hi] = data
        else:
            raise NotImplementedError(f"messages of kind {what!r} are not supported")


# What the interpreter's loop performs: every compute kind but those outside the loop.
LOOP_KINDS = tuple(k for k in OpKind.COMPUTE if k not in OpKind.OUTSIDE_LOOP)


def unsupported_ops(sched: Schedule) -> str | None:
    """Why the executor cannot run ``sched`` (``None`` if it can): it performs PipeFusion's
    point-to-point ops and whole-block computes, not collectives or sharded blocks. First
    checks the schedule contract as the engine does (matched messages, no deadlock), so a
    broken schedule raises ``ScheduleError`` before any process starts instead of hanging
    until the timeout."""
    sched.validate()
    sched.check_progress()
    for rank, ops in enumerate(sched.ranks):
        for op in ops:
            if isinstance(op, Send | Recv):
                if op.tag.what not in ("hidden", "latent"):
                    return f"rank {rank} exchanges '{op.tag.what}' tensors (MM-DiT or skips)"
            elif isinstance(op, Compute):
                if op.kind not in LOOP_KINDS:
                    return f"rank {rank} has a '{op.kind}' op outside the denoising loop"
                if getattr(op, "part", "all") != "all" or getattr(op, "shard", 1) != 1:
                    return f"rank {rank} runs sharded blocks (sequence or tensor parallel)"
            else:
                return f"rank {rank} has a {type(op).__name__} op (collectives)"
    return None


def _inject(mode: str, rank: int) -> None:
    """Fault injection for the fault tests: ``exit`` dies at once, ``hang`` stops forever."""
    import os
    import sys

    print(f"rank {rank}: injected fault '{mode}'", file=sys.stderr, flush=True)
    if mode == "exit":
        os._exit(3)
    while True:
        time.sleep(3600)

