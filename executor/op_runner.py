"""The runners that time the schedules' compute ops, shared by the profiler
(``python -m profiles.collect``) and the benchmarks: each hands out zero-argument callables,
one per measured shape, for a timer to call.

- ``ExecutorRunner`` (the profiler's default, ``--runner executor``): a profile should time the
  code that runs, so this runner builds a one-rank ``StageExecutor`` (a one-block PixArt
  transformer, a schedule whose first patch has the wanted token count) and hands out its
  ``run_blocks``, ``embed``, ``final`` and ``scheduler_step`` methods on that patch; profiled
  durations then include everything the executor does around each op (band slicing, the
  positional rows, the guidance combine, the per-patch scheduler copies), not only the
  diffusers module call. In a run the small ops (conditioning, embedding, final layer,
  scheduler step) follow a run of blocks, which has pushed their weights and buffers out of
  the caches; timed back to back they would look several times faster than they run, so each
  timed call of those is preceded by an untimed block call (``fn.prep``). What it shares with
  the MM-DiT runner (``executor.mmdit_runner``) is their base ``StageOpRunner``.
- ``PixArtRunner`` (``--runner block``): the diffusers modules alone. A patch (q < kv) writes
  its fresh K,V into a full-sequence buffer and attends over the whole buffer, as PipeFusion's
  displaced-patch stages do (the executor's ``StaleKVAttnProcessor``); a full image (q = kv)
  is the plain diffusers block.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import diffusers
import torch
import torch.nn.functional as F
from diffusers import DPMSolverMultistepScheduler
from diffusers.models.attention_processor import AttnProcessor2_0

from executor.diffusers_models import diffusers_config
from executor.inputs import random_prompts
from executor.interpreter import StageExecutor
from executor.kv_attention import PatchWindow, StaleKVAttnProcessor
from executor.parallel_attention import BlockSlot, shard_block
from executor.request import TORCH_DTYPES
from sim.config import ParallelConfig, Workload, validate
from sim.errors import UserError
from sim.models import DiTModel
from sim.strategies import pipefusion


class _NoCollectives:
    """The ``BlockOps`` a profiled tensor-parallel shard calls: its all-reduce returns the
    rank's own partial sum (the run's all-reduce is timed as a collective of its own)."""

    @staticmethod
    def all_reduce(x: torch.Tensor) -> torch.Tensor:
        return x


COPIES = 4  # distinct block copies a block's timed calls go round (at most the model's blocks)


class OpRunner(Protocol):
    """What a timer needs of a runner: the batch its ops run at and one callable per op kind
    and shape (``res`` px image, ``q`` query tokens, ``kv`` K,V tokens)."""

    batch: int

    def block(self, res: int, q: int, kv: int, kind: str | None = None, shard: int = 1
              ) -> Callable[[], object]: ...

    def attention(self, q: int, kv: int, heads: int) -> Callable[[], object]: ...

    def embed(self, res: int, q: int) -> Callable[[], object]: ...

    def final(self, res: int, q: int) -> Callable[[], object]: ...

    def condition(self, res: int, q: int) -> Callable[[], object]: ...

    def scheduler_step(self, res: int, q: int) -> Callable[[], object]: ...


class PixArtRunner:
    """The diffusers modules alone: builds one-block PixArt transformers (one per resolution,
    as the executor builds them) and makes a zero-argument callable per measured shape.
    ``device`` is "cpu" or "cuda", ``dtype`` a ``--dtype`` name (fp32, bf16, fp16),
    ``resolutions`` in px; ``seed`` seeds the weights and every input."""

    def __init__(self, model: DiTModel, device: str, dtype: str,
                 resolutions: tuple[int, ...], seed: int = 0) -> None:
        self.m = model
        self.dev = device
        self.seed = seed
        self.dt = TORCH_DTYPES[dtype]
        self.batch = model.batch
        self.nets: dict[int, diffusers.PixArtTransformer2DModel] = {}
        for res in resolutions:
            self.net(res)
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def net(self, res: int) -> diffusers.PixArtTransformer2DModel:
        """The one-block transformer built for ``res`` px (built on first use)."""
        if res not in self.nets:
            cfg = diffusers_config(self.m, res)
            cfg["num_layers"] = 1  # every block has the same shapes: one is enough to time
            torch.manual_seed(self.seed)
            verbosity = diffusers.utils.logging.get_verbosity()
            # diffusers warns that .to(dtype) bypasses keep-in-fp32 lists; PixArt has none
            # (the list it prints is empty), so the warning is noise on the terminal.
            diffusers.utils.logging.set_verbosity_error()
            try:
                net = diffusers.PixArtTransformer2DModel(**cfg)
                self.nets[res] = net.to(device=self.dev, dtype=self.dt).eval()
            finally:
                diffusers.utils.logging.set_verbosity(verbosity)
        return self.nets[res]

    def _randn(self, *shape: int) -> torch.Tensor:
        # Drawn on the device itself: a 4096 px K,V buffer has ~10^8 elements, slow to make
        # on the host and copy over.
        return torch.randn(*shape, generator=self.gen, device=self.dev, dtype=self.dt)

    def _conditioning(self, net: diffusers.PixArtTransformer2DModel, res: int) -> tuple:
        """Timestep conditioning (B, 6h) and projected caption (B, t, h) as the model makes."""
        b = self.batch
        ts = torch.full((b,), 500, device=self.dev, dtype=torch.long)
        added = None
        if net.use_additional_conditions:
            added = {"resolution": torch.tensor([[res, res]] * b, device=self.dev,
                                                dtype=self.dt),
                     "aspect_ratio": torch.tensor([[1.0]] * b, device=self.dev, dtype=self.dt)}
        with torch.inference_mode():
            temb, emb = net.adaln_single(ts, added, batch_size=b, hidden_dtype=self.dt)
            caption = self._randn(b, self.m.text_tokens, net.config.caption_channels)
            enc = net.caption_projection(caption)
        return ts, added, temb, emb, caption, enc

    def block(self, res: int, q: int, kv: int, kind: str | None = None
              ) -> Callable[[], object]:
        """One transformer block on ``q`` query tokens against ``kv`` K,V tokens (PixArt has
        one block kind: ``kind`` is ignored)."""
        net = self.net(res)
        blk = net.transformer_blocks[0]
        _, _, temb, _, _, enc = self._conditioning(net, res)
        blk.attn1.set_processor(self._stale_processor(kv))
        x = self._randn(self.batch, q, self.m.hidden)
        return lambda: blk(x, encoder_hidden_states=enc, timestep=temb)

    def _stale_processor(self, kv: int) -> StaleKVAttnProcessor:
        """The executor's stale-K,V processor (``executor/kv_attention.py``) with a buffer of
        ``kv`` tokens already written, as after a warmup step: a patch writes its fresh K,V at
        offset 0 and attends over the whole buffer; a full image attends over its fresh K,V."""
        proc = StaleKVAttnProcessor(PatchWindow(0, kv))
        shape = (self.batch, self.m.heads, kv, self.m.head_dim)
        proc.k, proc.v = self._randn(*shape), self._randn(*shape)
        proc.filled = kv
        return proc

    def attention(self, q: int, kv: int, heads: int) -> Callable[[], object]:
        """The self-attention core alone (``scaled_dot_product_attention``) on ``heads``."""
        b, d = self.batch, self.m.head_dim
        # Same memory layouts as inside the block: queries (B, L, heads*d) viewed as
        # (B, heads, L, d); K,V the same for a full image, else the contiguous stale buffer.
        query = self._randn(b, q, heads * d).view(b, q, heads, d).transpose(1, 2)
        if q < kv:
            key = self._randn(b, heads, kv, d)
            value = self._randn(b, heads, kv, d)
        else:
            key = self._randn(b, kv, heads * d).view(b, kv, heads, d).transpose(1, 2)
            value = self._randn(b, kv, heads * d).view(b, kv, heads, d).transpose(1, 2)
        return lambda: F.scaled_dot_product_attention(query, key, value)

    def embed(self, res: int, q: int) -> Callable[[], object]:
        """Patch embedding of the first band, its positional rows, timestep and caption
        embeddings."""
        net = self.net(res)
        rows, cols = self.m.token_grid(res, res)
        band = q // cols
        p = self.m.patch_size
        latent = self._randn(self.batch, self.m.latent_channels, band * p, cols * p)
        pos = net.pos_embed.pos_embed[:, :q]  # first band's rows of the positional table
        ts, added, _, _, caption, _ = self._conditioning(net, res)

        def run() -> tuple[torch.Tensor, tuple, torch.Tensor]:
            h = net.pos_embed.proj(latent).flatten(2).transpose(1, 2)
            h = (h + pos).to(self.dt)
            temb = net.adaln_single(ts, added, batch_size=self.batch, hidden_dtype=self.dt)
            enc = net.caption_projection(caption)
            return h, temb, enc

        return run

    def final(self, res: int, q: int) -> Callable[[], object]:
        """Final norm, modulation, projection, unpatchify and guidance combine of a band."""
        net = self.net(res)
        _, cols = self.m.token_grid(res, res)
        band = q // cols
        p = self.m.patch_size
        out_c = net.out_channels
        _, _, _, emb, _, _ = self._conditioning(net, res)
        x = self._randn(self.batch, q, self.m.hidden)
        c = self.m.latent_channels
        cfg = self.m.cfg
        guidance = self.m.guidance_scale

        def run() -> torch.Tensor:
            shift, scale = (net.scale_shift_table[None] + emb[:, None]).chunk(2, dim=1)
            h = net.norm_out(x)
            h = h * (1 + scale) + shift
            h = net.proj_out(h)
            h = h.reshape(-1, band, cols, p, p, out_c)
            h = torch.einsum("nhwpqc->nchpwq", h).reshape(-1, out_c, band * p, cols * p)
            if cfg:  # guidance combine, then keep the noise half (PixArt predicts variance too)
                uncond, cond = h.chunk(2)
                h = uncond + guidance * (cond - uncond)
            return h[:, :c]

        return run

    def condition(self, res: int, q: int) -> Callable[[], object]:
        """The per-step timestep conditioning (no token dependence)."""
        net = self.net(res)
        ts, added, _, _, _, _ = self._conditioning(net, res)
        return lambda: net.adaln_single(ts, added, batch_size=self.batch, hidden_dtype=self.dt)

    def scheduler_step(self, res: int, q: int) -> Callable[[], object]:
        """One multistep DPM-Solver++ update of a band's latents, batch 1."""
        _, cols = self.m.token_grid(res, res)
        band = q // cols
        p = self.m.patch_size
        shape = (1, self.m.latent_channels, band * p, cols * p)
        with warnings.catch_warnings():
            # diffusers' own numpy-2 deprecation noise while building its sigma table
            warnings.simplefilter("ignore", DeprecationWarning)
            sched = DPMSolverMultistepScheduler()  # the PixArt pipelines' default scheduler
            sched.set_timesteps(20)
        sample = self._randn(*shape)
        out = self._randn(*shape)
        with torch.inference_mode():
            for i in range(3):  # fill the multistep history: time the second-order update
                sched.step(out, sched.timesteps[i], sample)
        index = 5
        t = sched.timesteps[index]

        def run() -> torch.Tensor:
            sched._step_index = index  # same step every call: steady-state multistep update
            return sched.step(out, t, sample).prev_sample

        return run


class StageOpRunner:
    """What ``ExecutorRunner`` (PixArt) and ``executor.mmdit_runner.MMDiTRunner`` (SD3, Flux)
    share: one-rank stage executors whose patch 0 has the wanted token count, and callables
    timing their ``run_blocks``, ``embed``, ``final``, conditioning and ``scheduler_step`` on
    that patch, each small op after an untimed block call (``fn.prep``). A subclass says how
    to build its executor and its block module; ``kind`` names a block kind of the model
    (``DiTModel.block_kind``), the first when None."""

    stage_executor: type  # the executor class a one-rank stage runs

    def __init__(self, model: DiTModel, device: str, dtype: str, seed: int) -> None:
        self.m = model
        self.dev = device
        self.dtype = dtype
        self.dt = TORCH_DTYPES[dtype]
        self.seed = seed
        self.batch = model.batch
        self.kinds = sorted({model.block_kind(i) for i in range(model.num_blocks)})
        self.copies = min(model.num_blocks, COPIES)
        self._executors: dict[tuple[str, int, int, int], StageExecutor] = {}

    def _randn(self, *shape: int) -> torch.Tensor:
        raise NotImplementedError

    def model_of(self, kind: str) -> DiTModel:
        """The model cut to the blocks an executor timing ``kind`` blocks needs."""
        raise NotImplementedError

    def _stage_net(self, kind: str, res: int) -> torch.nn.Module:
        """A fresh copy of the cut transformer, as a new executor takes it."""
        raise NotImplementedError

    def _scheduler_template(self, model: DiTModel) -> object:
        """The diffusers scheduler the executor copies per patch."""
        raise NotImplementedError

    def _module_block(self, kind: str, res: int, q: int, kv: int) -> Callable[[], object]:
        """The block module alone, for full-image points (``kv`` tokens) between the grid's
        resolutions."""
        raise NotImplementedError

    def _load_patch(self, ex: StageExecutor, x: torch.Tensor) -> None:
        """Set ``x`` as the hidden states the next ``run_blocks`` call takes."""
        ex.h = x

    def _warm_scheduler(self, ex: StageExecutor) -> None:
        """Bring patch 0's scheduler to the state a run's steps find it in."""

    def _patches_for(self, res: int, q: int) -> int:
        """Patch count whose first band holds ``q`` tokens (as ``block_grid`` chose it)."""
        rows, cols = self.m.token_grid(res, res)
        band = q // cols
        for m in range(1, rows + 1):
            if math.ceil(rows / m) == band:
                return m
        raise ValueError(f"no patch count gives a first band of {band} rows at {res} px")

    def executor(self, res: int, q: int, kind: str | None = None, replica: int = 0,
                 shard: int = 1) -> StageExecutor:
        """A one-rank executor whose patch 0 has ``q`` image tokens, its stale K,V buffers
        filled as a warmup step would (built on first use); each ``replica`` has its own
        weights and buffers. ``shard`` > 1: its blocks keep tensor-parallel rank 0's share of
        ``shard`` (``_shard``), as a tensor-parallel run's blocks do."""
        kind = kind or self.kinds[0]
        key = (kind, res, q, replica, shard)
        if key not in self._executors:
            one = self.model_of(kind)
            wl = Workload(one, res, res, 8, dtype=self.dtype, text_encoder=False, vae=False)
            patches = self._patches_for(res, q)
            cfg = ParallelConfig(1, 1, patches, 1 if patches > 1 else 0)
            validate(wl, cfg)
            # PipeFusion's generator on one rank keeps the patches (the serial entry would not).
            sched = pipefusion.build(wl, cfg)
            ex = self.stage_executor(self._stage_net(kind, res), sched, 0,
                                     random_prompts(one, self.seed), self.seed,
                                     one.guidance_scale, self._scheduler_template(one),
                                     torch.device(self.dev), self.dt)
            if shard > 1:
                self._shard(ex, shard)  # before the warmup: the buffers take the shard's heads
            with torch.no_grad():
                ex._conditioning(1)
                if patches > 1:
                    self._load_patch(ex, self._randn(self.batch, sched.patch_tokens(-1),
                                                     self.m.hidden))
                    ex.run_blocks(0, -1, (0, 0))
                    ex._conditioning(1)
            self._executors[key] = ex
        return self._executors[key]

    def _shard(self, ex: StageExecutor, shard: int) -> None:
        """Cut ``ex``'s blocks to tensor-parallel rank 0's share of ``shard`` ranks."""
        raise UserError(f"tensor-parallel shards of {self.m.name} blocks are not profiled "
                        f"(the executor shards PixArt blocks only)")

    def block(self, res: int, q: int, kv: int, kind: str | None = None, shard: int = 1
              ) -> Callable[[], object]:
        """``run_blocks`` of one ``kind`` block on patch 0 (``q`` image tokens) of a
        ``res``-px image; a full image of ``kv`` tokens off the grid's resolutions: the
        block module alone (a full-image executor step is that call and nothing else).
        ``shard`` > 1: the block cut to one tensor-parallel rank's share (1/shard of the
        heads and MLP columns), its all-reduces left out (they are timed as collectives)."""
        kind = kind or self.kinds[0]
        if kv != self.m.image_tokens(res):
            if shard > 1:
                raise ValueError("tensor-parallel shards are profiled at the grid's "
                                 "resolutions only")
            return self._module_block(kind, res, q, kv)
        # Calls go round distinct copies of the block: in a run the other layers of the stage
        # (and the other patches) come between two calls of one layer, so its weights are no
        # longer in the caches; one copy called back to back keeps them there (pixart-small,
        # 10 MB of weights per block: 2-7 % faster on the 2-core EPYC VM than cycling 8).
        exs = [self.executor(res, q, kind, i, shard) for i in range(self.copies)]
        x = self._randn(self.batch, q, self.m.hidden)
        load = self._load_patch
        turn = [0]

        def run() -> None:
            ex = exs[turn[0] % len(exs)]
            turn[0] += 1
            load(ex, x)
            ex.run_blocks(1, 0, (0, 0))

        return run

    def _after_blocks(self, res: int, q: int, fn: Callable[[], object]) -> Callable[[], object]:
        """``fn`` with an untimed block call of the same patch before each timed call."""
        fn.prep = self.block(res, q, self.m.image_tokens(res))  # type: ignore[attr-defined]
        return fn

    def embed(self, res: int, q: int) -> Callable[[], object]:
        """The executor's ``embed`` of patch 0."""
        ex = self.executor(res, q)

        def run() -> None:
            ex.embed(1, 0)

        return self._after_blocks(res, q, run)

    def final(self, res: int, q: int) -> Callable[[], object]:
        """The executor's ``final`` of patch 0: norm, projection, unpatchify, guidance
        combine."""
        ex = self.executor(res, q)
        x = self._randn(self.batch, q, self.m.hidden)

        def run() -> None:
            ex.h = x
            ex.final(1, 0)

        return self._after_blocks(res, q, run)

    def condition(self, res: int, q: int) -> Callable[[], object]:
        """The executor's per-step conditioning."""
        ex = self.executor(res, q)

        def run() -> None:
            ex._cond_step = -1  # force the recomputation a new step triggers
            ex._conditioning(1)

        return self._after_blocks(res, q, run)

    def scheduler_step(self, res: int, q: int) -> Callable[[], object]:
        """The executor's ``scheduler_step`` of patch 0 in its steady state."""
        ex = self.executor(res, q)
        ex.h = self._randn(self.batch, q, self.m.hidden)
        with torch.no_grad():
            ex.final(1, 0)
            self._warm_scheduler(ex)
        sched = ex.schedulers[0]

        def run() -> None:
            sched._step_index = 3  # the same steady-state update every call
            ex.scheduler_step(3, 0)

        return self._after_blocks(res, q, run)


class ExecutorRunner(StageOpRunner):
    """Callables timing the executor's ops on ``q``-token patches of ``res``-px images; the
    arguments are ``PixArtRunner``'s."""

    stage_executor = StageExecutor

    def __init__(self, model: DiTModel, device: str, dtype: str,
                 resolutions: tuple[int, ...], seed: int = 0) -> None:
        super().__init__(model, device, dtype, seed)
        # One-block nets per resolution, and the attention shapes (no executor op of its own).
        self.base = PixArtRunner(model, device, dtype, resolutions, seed)

    def _randn(self, *shape: int) -> torch.Tensor:
        return self.base._randn(*shape)

    def model_of(self, kind: str) -> DiTModel:
        """One block: PixArt's blocks all have the same shapes."""
        return replace(self.m, num_blocks=1)

    def _stage_net(self, kind: str, res: int) -> torch.nn.Module:
        net = copy.deepcopy(self.base.net(res))
        for blk in net.transformer_blocks:  # the stock processor, as executor.run starts
            blk.attn1.set_processor(AttnProcessor2_0())
        return net

    def _shard(self, ex: StageExecutor, shard: int) -> None:
        # The run's all-reduces (BlockOps.all_reduce) are timed as collectives, not as the
        # block's compute: here the sum over one rank is the rank's own partial result.
        slot = BlockSlot(ops=_NoCollectives())
        for blk in ex.blocks:
            shard_block(blk, 0, shard, slot)

    def _scheduler_template(self, model: DiTModel) -> object:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return DPMSolverMultistepScheduler()

    def _module_block(self, kind: str, res: int, q: int, kv: int) -> Callable[[], object]:
        return self.base.block(res, q, kv)

    def _warm_scheduler(self, ex: StageExecutor) -> None:
        for step in range(3):  # fill the multistep history: time the second-order update
            ex.scheduler_step(step, 0)

    def attention(self, q: int, kv: int, heads: int) -> Callable[[], object]:
        """The attention core alone, as ``PixArtRunner.attention``."""
        return self.base.attention(q, kv, heads)
