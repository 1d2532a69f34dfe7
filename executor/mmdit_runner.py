"""The profiler's runner for MM-DiT models (SD3, Flux): callables timing the executor's own ops
(``executor.mmdit.MMDiTStageExecutor``) on one-rank schedules, with PixArt's
``ExecutorRunner`` through their common base ``executor.op_runner.StageOpRunner``, the block
kind as a parameter: SD3's joint blocks, Flux's double-stream (``joint``) and single-stream
(``single``) blocks are timed separately.

A block call runs the image patch and the whole text stream beside it, over the stale image
K,V buffer of the full image for a patch (q < kv), with diffusers' own processors for a full
image; the sample's ``q`` and ``kv`` count image tokens only, as the schedules do.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F

from executor.diffusers_models import build_transformer
from executor.interpreter import StageExecutor
from executor.mmdit import MMDiTStageExecutor, all_blocks
from executor.op_runner import StageOpRunner
from executor.reference import flow_scheduler
from sim.models import DiTModel


class MMDiTRunner(StageOpRunner):
    """Zero-argument callables per measured shape (``res`` px image, ``q`` image query tokens
    over ``kv`` image K,V tokens; every call also carries the model's text tokens).
    ``device`` "cpu" or "cuda", ``dtype`` a ``--dtype`` name; ``seed`` seeds weights and
    inputs."""

    stage_executor = MMDiTStageExecutor

    def __init__(self, model: DiTModel, device: str, dtype: str,
                 resolutions: tuple[int, ...], seed: int = 0) -> None:
        super().__init__(model, device, dtype, seed)
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self._nets: dict[tuple[str, int], torch.nn.Module] = {}

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

    def _stage_net(self, kind: str, res: int) -> torch.nn.Module:
        return copy.deepcopy(self.net(kind, res))

    def _scheduler_template(self, model: DiTModel) -> object:
        return flow_scheduler(model.diffusers_class)

    def _load_patch(self, ex: StageExecutor, x: torch.Tensor) -> None:
        # The text stream restarts from the stage input with every patch.
        ex.h, ex.enc = x, ex.text_in

    def _module_block(self, kind: str, res: int, q: int, n: int) -> Callable[[], object]:
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
