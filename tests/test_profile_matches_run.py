"""A profiled block performs the work the run's loop performs (issue 12, the sd3-tiny miss).

Every ATen call inside a transformer block is recorded with the shapes and strides of its
tensor arguments, once for a block call inside the executor's loop (``StageExecutor.run``)
and once for the profiler's callable of the same shape (``profiles.collect``'s runners). The
two multisets must be equal: same ops, same shapes, same memory layouts. A layout that differs
changes the work (the strided adds and the copies a transposed residual stream costs SD3:
10-20 % of an sd3-tiny block on one CPU thread), and no op count would show it.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from executor.diffusers_models import build_transformer  # noqa: E402
from executor.inputs import random_prompts  # noqa: E402
from executor.interpreter import StageExecutor, loop_mode  # noqa: E402
from executor.mmdit import MMDIT_CLASSES, MMDiTStageExecutor, all_blocks  # noqa: E402
from executor.mmdit_runner import MMDiTRunner  # noqa: E402
from executor.op_runner import ExecutorRunner  # noqa: E402
from executor.runtime import _scheduler  # noqa: E402
from sim.config import ParallelConfig, Workload, validate  # noqa: E402
from sim.models import get_model  # noqa: E402
from sim.strategies import pipefusion  # noqa: E402

RES, STEPS = 128, 3  # 8 x 8 image tokens


class BlockCalls(TorchDispatchMode):
    """Records, per call of a watched block module, the ATen ops run inside it, each with
    the (shape, stride) of its tensor arguments."""

    def __init__(self, blocks: list[torch.nn.Module]) -> None:
        super().__init__()
        self.calls: dict[int, list[Counter]] = {id(b): [] for b in blocks}
        self._open: Counter | None = None
        self._handles = []
        for b in blocks:
            self._handles.append(b.register_forward_pre_hook(self._pre))
            self._handles.append(b.register_forward_hook(self._post))

    def _pre(self, module, args) -> None:
        self._open = Counter()

    def _post(self, module, args, out) -> None:
        self.calls[id(module)].append(self._open)
        self._open = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self._open is not None:
            sig = tuple((tuple(a.shape), a.stride()) for a in args
                        if isinstance(a, torch.Tensor))
            self._open[(str(func.overloadpacket), sig)] += 1
        return func(*args, **(kwargs or {}))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _loop_block_ops(name: str, patches: int) -> dict[int, list[Counter]]:
    """The recorded calls of every block of a one-rank run of ``name`` (``patches`` > 1:
    PipeFusion's patches with one warmup step, stale image context after it)."""
    m = get_model(name)
    wl = Workload(m, RES, RES, STEPS, dtype="fp32", text_encoder=False, vae=False)
    cfg = ParallelConfig(1, 1, patches, 1 if patches > 1 else 0)
    validate(wl, cfg)
    sched = pipefusion.build(wl, cfg)
    mmdit = m.diffusers_class in MMDIT_CLASSES
    cls = MMDiTStageExecutor if mmdit else StageExecutor
    net = build_transformer(m, RES, seed=0).eval()
    ex = cls(net, sched, 0, random_prompts(m, 0), 0, m.guidance_scale,
             _scheduler(None, m.diffusers_class), torch.device("cpu"), torch.float32)
    blocks = all_blocks(net) if mmdit else list(net.transformer_blocks)
    rec = BlockCalls(blocks)
    with rec:
        ex.run(time.perf_counter())
    rec.remove()
    return {i: rec.calls[id(b)] for i, b in enumerate(blocks)}


def _profiled_block_ops(name: str, q: int, kind: str) -> Counter:
    """The recorded block call of the profiler's callable for ``q`` image query tokens over
    the full image."""
    m = get_model(name)
    runner_cls = MMDiTRunner if m.diffusers_class in MMDIT_CLASSES else ExecutorRunner
    runner = runner_cls(m, "cpu", "fp32", (RES,), 0)
    fn = runner.block(RES, q, m.image_tokens(RES), kind)
    with loop_mode():
        fn()  # the timer's warm-up call
    blocks = [b for ex in runner._executors.values()
              for b in (all_blocks(ex.net) if hasattr(ex, "flux") else ex.blocks)]
    rec = BlockCalls(blocks)
    with loop_mode(), rec:
        fn()
    rec.remove()
    calls = [c for cs in rec.calls.values() for c in cs]
    assert len(calls) == 1, "the profiler's block callable runs exactly one block"
    return calls[0]


@pytest.mark.parametrize("name", ["sd3-tiny", "flux-tiny", "pixart-tiny"])
@pytest.mark.parametrize("patches", [1, 2])
def test_profiled_block_runs_the_ops_of_the_loop(name, patches):
    m = get_model(name)
    rows, cols = m.token_grid(RES, RES)
    q = -(-rows // patches) * cols
    loop = _loop_block_ops(name, patches)
    for kind in sorted({m.block_kind(i) for i in range(m.num_blocks)}):
        first = next(i for i in range(m.num_blocks) if m.block_kind(i) == kind)
        # Patch 0 of the last step (over stale image context when patches > 1), the
        # shape the profiler's callable times: the step's calls are one per patch.
        call = loop[first][-patches]
        prof = _profiled_block_ops(name, q, kind)
        extra_in_loop, extra_in_profile = call - prof, prof - call
        assert not extra_in_loop and not extra_in_profile, (
            f"{name} {kind} block {first}, M={patches}: the loop runs "
            f"{dict(extra_in_loop)} that the profile does not, and the profile "
            f"{dict(extra_in_profile)} that the loop does not")
