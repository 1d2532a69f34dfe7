"""The profiler's runner for MM-DiT models (SD3, Flux): callables timing the executor's own ops
(``executor.mmdit.MMDiTStageExecutor``) on one-rank schedules, as ``executor.op_runner``'s
``ExecutorRunner`` does for PixArt, with the block kind as a parameter: SD3's joint blocks,
Flux's double-stream (``joint``) and single-stream (``single``) blocks are timed separately.

A block call runs the image patch and the whole text stream beside it, over the stale image
K,V buffer of the full image for a patch (q < kv), with diffusers' own processors for a full
image; the sample's ``q`` and ``kv`` count image tokens only, as the schedules do.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F

from executor.diffusers_models import build_transformer
from executor.inputs import random_prompts
from executor.mmdit import MMDiTStageExecutor, all_blocks
from executor.op_runner import COPIES
from executor.reference import flow_scheduler
from executor.request import TORCH_DTYPES
from sim.config import ParallelConfig, Workload, validate
from sim.models import DiTModel
from sim.strategies import pipefusion


class MMDiTRunner:
    """Zero-argument callables per measured shape (``res`` px image, ``q`` image query tokens
    over ``kv`` image K,V tokens; every call also carries the model's text tokens).
    ``device`` "cpu" or "cuda", ``dtype`` a ``--dtype`` name; ``seed`` seeds weights and
    inputs."""

    def __init__(self, model: DiTModel, device: str, dtype: str,
                 resolutions: tuple[int, ...], seed: int = 0) -> None:
        self.m = model
        self.dev = device
        self.dt = TORCH_DTYPES[dtype]
        self.seed = seed
        self.batch = model.batch
        self.kinds = sorted({model.block_kind(i) for i in range(model.num_blocks)})
        self.copies = min(model.num_blocks, COPIES)
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self._nets: dict[tuple[str, int], torch.nn.Module] = {}
        self._executors: dict[tuple[str, int, int, int], MMDiTStageExecutor] = {}

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen, device=self.dev, dtype=self.dt)

    def model_of(self, kind: str) -> DiTModel:
        """The model cut to the blocks needed to time ``kind``: Flux one double-stream or one
        single-stream block; SD3 two joint blocks, of which the first is timed (the last
        block of an SD3 model drops its text output and is cheaper)."""
        if self.m.family == "flux":
            return replace(self.m, num_blocks=1, double_blocks=1 if kind == "joint" else 0)
        return replace(self.m, num_blocks=2)

    def net(self, kind: str, res: int) -> torch.nn.Module:
        """The cut transformer for ``kind`` at ``res`` px (built on first use)."""
        key = (kind, res)
        if key not in self._nets:
            from diffusers.utils import logging as dlogging

            verbosity = dlogging.get_verbosity()
            # diffusers warns that .to(dtype) bypasses keep-in-fp32 lists; these models have
            # none (the list it prints is empty): noise on the terminal.
            dlogging.set_verbosity_error()
            try:
                net = build_transformer(self.model_of(kind), res, seed=self.seed)
                self._nets[key] = net.to(device=self.dev, dtype=self.dt).eval()
            finally:
                dlogging.set_verbosity(verbosity)
        return self._nets[key]

    def _patches_for(self, res: int, q: int) -> int:
        rows, cols = self.m.token_grid(res, res)
        band = q // cols
        for m in range(1, rows + 1):
            if math.ceil(rows / m) == band:
                return m
        raise ValueError(f"no patch count gives a first band of {band} rows at {res} px")

    def executor(self, res: int, q: int, kind: str | None = None, replica: int = 0
                 ) -> MMDiTStageExecutor:
        """A one-rank executor whose patch 0 has ``q`` image tokens, its stale image K,V
        buffer filled as a warmup step would (built on first use)."""
        kind = kind or self.kinds[0]
        key = (kind, res, q, replica)
        if key not in self._executors:
            one = self.model_of(kind)
            wl = Workload(one, res, res, 8, dtype=_dtype_name(self.dt), text_encoder=False,
                          vae=False)
            patches = self._patches_for(res, q)
            cfg = ParallelConfig(1, 1, patches, 1 if patches > 1 else 0)
            validate(wl, cfg)
            sched = pipefusion.build(wl, cfg)  # keeps the patches on one rank
            net = copy.deepcopy(self.net(kind, res))
            ex = MMDiTStageExecutor(net, sched, 0, random_prompts(one, self.seed), self.seed,
                                    one.guidance_scale, flow_scheduler(one.diffusers_class),
                                    torch.device(self.dev), self.dt)
            with torch.no_grad():
                ex._conditioning(1)
                if patches > 1:
                    ex.h = self._randn(self.batch, sched.patch_tokens(-1), self.m.hidden)
                    ex.enc = ex.text_in
                    ex.run_blocks(0, -1, (0, 0))
                    ex._conditioning(1)
            self._executors[key] = ex
        return self._executors[key]

    def block(self, res: int, q: int, kv: int, kind: str | None = None
              ) -> Callable[[], object]:
        """``MMDiTStageExecutor.run_blocks`` of one ``kind`` block on patch 0 (``q`` image
        tokens) of a ``res``-px image; a full image of ``kv`` tokens off the grid's
        resolutions: the diffusers block alone (a full-image step is that call)."""
        kind = kind or self.kinds[0]
        if kv != self.m.image_tokens(res):
            return self._module_block(kind, res, kv)
        # Distinct copies, as ExecutorRunner: in a run other layers evict a layer's weights.
        exs = [self.executor(res, q, kind, i) for i in range(self.copies)]
        x = self._randn(self.batch, q, self.m.hidden)
        turn = [0]

        def run() -> None:
            ex = exs[turn[0] % len(exs)]
            turn[0] += 1
            ex.h, ex.enc = x, ex.text_in
            ex.run_blocks(1, 0, (0, 0))

        return run

    def _module_block(self, kind: str, res: int, n: int) -> Callable[[], object]:
        ex = self.executor(res, self.m.image_tokens(res), kind)
        blk = all_blocks(self.net(kind, res))[0]
        h = self._randn(self.batch, n, self.m.hidden)
        enc, temb = ex.text_in, ex._temb
        if self.m.family != "flux":
            return lambda: blk(hidden_states=h, encoder_hidden_states=enc, temb=temb)
        ids = torch.zeros(ex.text_tokens + n, 3, device=self.dev)
        ids[ex.text_tokens:, 2] = torch.arange(n, device=self.dev)
        rope = self.net(kind, res).pos_embed(ids)
        return lambda: blk(hidden_states=h, encoder_hidden_states=enc, temb=temb,
                           image_rotary_emb=rope)

    def attention(self, q: int, kv: int, heads: int) -> Callable[[], object]:
        """The joint attention core alone: ``q`` image plus the text queries over ``kv``
        image plus the text keys, ``heads`` heads (fewer: a Ulysses shard)."""
        t, d = self.m.text_tokens, self.m.head_dim
        qq = self._randn(self.batch, heads, q + t, d)
        k = self._randn(self.batch, heads, kv + t, d)
        v = self._randn(self.batch, heads, kv + t, d)
        return lambda: F.scaled_dot_product_attention(qq, k, v)

    def _after_blocks(self, res: int, q: int, fn: Callable[[], object]) -> Callable[[], object]:
        fn.prep = self.block(res, q, self.m.image_tokens(res))  # type: ignore[attr-defined]
        return fn

    def embed(self, res: int, q: int) -> Callable[[], object]:
        """``embed`` of patch 0 (and the text stream's reset to the stage input)."""
        ex = self.executor(res, q)
        return self._after_blocks(res, q, lambda: ex.embed(1, 0))

    def final(self, res: int, q: int) -> Callable[[], object]:
        """``final`` of patch 0: norm, projection, unpatchify, guidance combine."""
        ex = self.executor(res, q)
        x = self._randn(self.batch, q, self.m.hidden)

        def run() -> None:
            ex.h = x
            ex.final(1, 0)

        return self._after_blocks(res, q, run)

    def condition(self, res: int, q: int) -> Callable[[], object]:
        """The per-step timestep, pooled-text (and Flux guidance) conditioning."""
        ex = self.executor(res, q)

        def run() -> None:
            ex._cond_step = -1
            ex._conditioning(1)

        return self._after_blocks(res, q, run)

    def scheduler_step(self, res: int, q: int) -> Callable[[], object]:
        """One flow-matching Euler update of patch 0's latents."""
        ex = self.executor(res, q)
        ex.h = self._randn(self.batch, q, self.m.hidden)
        with torch.no_grad():
            ex.final(1, 0)
        sched = ex.schedulers[0]

        def run() -> None:
            sched._step_index = 3  # the same update every call
            ex.scheduler_step(3, 0)

        return self._after_blocks(res, q, run)


def _dtype_name(dt: torch.dtype) -> str:
    return next(k for k, v in TORCH_DTYPES.items() if v == dt)
