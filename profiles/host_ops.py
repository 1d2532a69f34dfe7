"""Count the torch operators one transformer block issues in eager diffusers, per model family.

An eager PyTorch runtime spends CPU time on every operator it dispatches (Python, the
dispatcher, the kernel launch), whether or not the GPU is busy. The simulator charges that
time per operator (``sim.host``); the counts it uses (``sim.models``'s ``host_ops_per_block``)
come from this command: each family's diffusers block is built from a tiny config with random
weights and one forward is run on CPU under a dispatch mode that counts every ATen operator
(views and reshapes included: they cost dispatch time, if no kernel).

Run: ``python -m profiles.host_ops`` (a few seconds; prints one line per family and, with
``--time``, the measured host seconds per block of the tiny block on this CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.n += 1
        return func(*args, **(kwargs or {}))


def _pixart() -> Callable[[], object]:
    from diffusers import PixArtTransformer2DModel
    m = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
        num_layers=1, cross_attention_dim=16, sample_size=8, patch_size=2, caption_channels=16,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        use_additional_conditions=False).eval()
    b = m.transformer_blocks[0]
    h, e, ts = torch.randn(2, 4, 16), torch.randn(2, 3, 16), torch.randn(2, 6 * 16)
    return lambda: b(hidden_states=h, encoder_hidden_states=e, timestep=ts)


def _dit() -> Callable[[], object]:
    from diffusers.models.attention import BasicTransformerBlock
    b = BasicTransformerBlock(16, 2, 8, norm_type="ada_norm_zero",
                              num_embeds_ada_norm=10).eval()
    h = torch.randn(2, 4, 16)
    t, c = torch.tensor([1, 1]), torch.tensor([0, 1])
    return lambda: b(h, timestep=t, class_labels=c)


def _sd3() -> Callable[[], object]:
    from diffusers.models.attention import JointTransformerBlock
    b = JointTransformerBlock(dim=16, num_attention_heads=2, attention_head_dim=8).eval()
    h, e, temb = torch.randn(2, 4, 16), torch.randn(2, 3, 16), torch.randn(2, 16)
    return lambda: b(hidden_states=h, encoder_hidden_states=e, temb=temb)


def _flux_pair() -> tuple[Callable[[], object], Callable[[], object]]:
    from diffusers.models.transformers.transformer_flux import (
        FluxSingleTransformerBlock,
        FluxTransformerBlock,
    )
    d = FluxTransformerBlock(dim=16, num_attention_heads=2, attention_head_dim=8).eval()
    s = FluxSingleTransformerBlock(dim=16, num_attention_heads=2, attention_head_dim=8).eval()
    h, e, temb = torch.randn(1, 4, 16), torch.randn(1, 3, 16), torch.randn(1, 16)
    cos, sin = torch.ones(7, 8), torch.zeros(7, 8)
    return (lambda: d(hidden_states=h, encoder_hidden_states=e, temb=temb,
                      image_rotary_emb=(cos, sin)),
            lambda: s(hidden_states=h, encoder_hidden_states=e, temb=temb,
                      image_rotary_emb=(cos, sin)))


def _hunyuan() -> Callable[[], object]:
    from diffusers.models.transformers.hunyuan_transformer_2d import HunyuanDiTBlock
    b = HunyuanDiTBlock(dim=16, num_attention_heads=2, cross_attention_dim=16).eval()
    h, e, temb = torch.randn(2, 4, 16), torch.randn(2, 3, 16), torch.randn(2, 16)
    cos, sin = torch.ones(4, 8), torch.zeros(4, 8)
    return lambda: b(h, encoder_hidden_states=e, temb=temb, image_rotary_emb=(cos, sin))


def blocks() -> dict[str, Callable[[], object]]:
    """One forward call per block kind, keyed as ``sim.models`` keys its counts."""
    double, single = _flux_pair()
    return {"pixart": _pixart(), "dit": _dit(), "sd3": _sd3(), "flux-double": double,
            "flux-single": single, "hunyuan": _hunyuan()}


def count(fn: Callable[[], object]) -> int:
    """ATen operators one call of ``fn`` dispatches."""
    with torch.no_grad():
        fn()  # lazy initialisation stays out of the count
        c = _Count()
        with c:
            fn()
    return c.n


def host_seconds(fn: Callable[[], object], calls: int = 200, repeats: int = 5) -> float:
    """Median seconds of one call of the tiny block on this CPU (almost all host time)."""
    out = []
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            out.append((time.perf_counter() - t) / calls)
    return statistics.median(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--time", action="store_true",
                    help="also time each tiny block on this CPU (host seconds per op)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import diffusers
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}")
    for name, fn in blocks().items():
        n = count(fn)
        line = f"{name:<12} {n:>4} ATen ops per block"
        if args.time:
            s = host_seconds(fn)
            line += f"   {s * 1e6:7.0f} us per tiny block on this CPU ({s / n * 1e6:.1f} us/op)"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
