"""The executor's own ops as zero-argument callables, for ``profiles.collect --runner executor``.

A profile should time the code that runs: this runner builds a one-rank ``StageExecutor`` (a
one-block PixArt transformer, a schedule whose first patch has the wanted token count) and
hands out its ``run_blocks``, ``embed``, ``final`` and ``scheduler_step`` methods on that patch,
so profiled durations include everything the executor does around each op (band slicing, the
positional rows, the guidance combine, the per-patch scheduler copies), not only the diffusers
module call. In a run the small ops (conditioning, embedding, final layer, scheduler step)
follow a run of blocks, which has pushed their weights and buffers out of the caches; timed
back to back they would look several times faster than they run, so each timed call of those
is preceded by an untimed block call (``fn.prep``). Same interface as
``profiles.collect.PixArtRunner``.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import replace

import torch

from executor.inputs import random_prompts
from executor.interpreter import StageExecutor
from sim.config import ParallelConfig, Workload, validate
from sim.strategies import pipefusion

GUIDANCE = 4.5  # the PixArt pipeline's default
COPIES = 4  # distinct block copies a block's timed calls go round (at most the model's blocks)


class ExecutorRunner:
    """Callables timing the executor's ops on ``q``-token patches of ``res``-px images."""

    def __init__(self, s) -> None:
        from profiles.collect import PixArtRunner

        self.s = s
        self.base = PixArtRunner(s)  # one-block nets per resolution, and attention shapes
        self.batch = self.base.batch
        self.m = s.model
        self._executors: dict[tuple[int, int, int], StageExecutor] = {}
        self.copies = min(self.m.num_blocks, COPIES)

    def _patches_for(self, res: int, q: int) -> int:
        """Patch count whose first band holds ``q`` tokens (as ``block_grid`` chose it)."""
        rows, cols = self.m.token_grid(res, res)
        band = q // cols
        for m in range(1, rows + 1):
            if math.ceil(rows / m) == band:
                return m
        raise ValueError(f"no patch count gives a first band of {band} rows at {res} px")

    def executor(self, res: int, q: int, replica: int = 0) -> StageExecutor:
        """A one-rank executor whose patch 0 has ``q`` tokens (built on first use); each
        ``replica`` has its own weights and buffers."""
        key = (res, q, replica)
        if key not in self._executors:
            from diffusers import DPMSolverMultistepScheduler

            one = replace(self.m, num_blocks=1)
            wl = Workload(one, res, res, 8, dtype=self.s.dtype, text_encoder=False, vae=False)
            patches = self._patches_for(res, q)
            cfg = ParallelConfig(1, 1, patches, 1 if patches > 1 else 0)
            validate(wl, cfg)
            # PipeFusion's generator on one rank keeps the patches (the serial entry would not).
            sched = pipefusion.build(wl, cfg)
            from diffusers.models.attention_processor import AttnProcessor2_0

            net = copy.deepcopy(self.base.net(res))
            for blk in net.transformer_blocks:  # the stock processor, as executor.run starts
                blk.attn1.set_processor(AttnProcessor2_0())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                template = DPMSolverMultistepScheduler()
            dev = torch.device(self.s.device)
            ex = StageExecutor(net, sched, 0, random_prompts(one, self.s.seed), self.s.seed,
                               GUIDANCE, template, dev, self.base.dt)
            with torch.no_grad():
                ex._conditioning(1)
                if patches > 1:  # fill the stale K,V buffers as a warmup step would
                    ex.h = self.base._randn(self.batch, sched.patch_tokens(-1), self.m.hidden)
                    ex.run_blocks(0, -1, (0, 0))
                    ex._conditioning(1)
            self._executors[key] = ex
        return self._executors[key]

    def block(self, res: int, q: int, kv: int) -> Callable[[], object]:
        if kv != self.m.image_tokens(res):
            # Full-image curve points between resolutions have no image of their own: the
            # block module alone (a full-image executor step is that call and nothing else).
            return self.base.block(res, q, kv)
        # Calls go round distinct copies of the block: in a run the other layers of the stage
        # (and the other patches) come between two calls of one layer, so its weights are no
        # longer in the caches; one copy called back to back keeps them there (pixart-small,
        # 10 MB of weights per block: 2-7 % faster on the 2-core EPYC VM than cycling 8).
        exs = [self.executor(res, q, i) for i in range(self.copies)]
        x = self.base._randn(self.batch, q, self.m.hidden)
        turn = [0]

        def run() -> None:
            ex = exs[turn[0] % len(exs)]
            turn[0] += 1
            ex.h = x
            ex.run_blocks(1, 0, (0, 0))

        return run

    def attention(self, q: int, kv: int, heads: int) -> Callable[[], object]:
        return self.base.attention(q, kv, heads)

    def _after_blocks(self, res: int, q: int, fn: Callable[[], object]) -> Callable[[], object]:
        """``fn`` with an untimed block call of the same patch before each timed call."""
        fn.prep = self.block(res, q, self.m.image_tokens(res))  # type: ignore[attr-defined]
        return fn

    def embed(self, res: int, q: int) -> Callable[[], object]:
        ex = self.executor(res, q)

        def run() -> None:
            ex.embed(1, 0)

        return self._after_blocks(res, q, run)

    def final(self, res: int, q: int) -> Callable[[], object]:
        ex = self.executor(res, q)
        x = self.base._randn(self.batch, q, self.m.hidden)

        def run() -> None:
            ex.h = x
            ex.final(1, 0)

        return self._after_blocks(res, q, run)

    def condition(self, res: int, q: int) -> Callable[[], object]:
        ex = self.executor(res, q)

        def run() -> None:
            ex._cond_step = -1  # force the recomputation a new step triggers
            ex._conditioning(1)

        return self._after_blocks(res, q, run)

    def scheduler_step(self, res: int, q: int) -> Callable[[], object]:
        ex = self.executor(res, q)
        ex.h = self.base._randn(self.batch, q, self.m.hidden)
        with torch.no_grad():
            ex.final(1, 0)
            for step in range(3):  # fill the multistep history: time the second-order update
                ex.scheduler_step(step, 0)
        sched = ex.schedulers[0]

        def run() -> None:
            sched._step_index = 3  # the same steady-state update every call
            ex.scheduler_step(3, 0)

        return self._after_blocks(res, q, run)
