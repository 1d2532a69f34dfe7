"""The analytic cost model: the time of each compute op, in seconds, from datasheet peaks.

``RooflineCost`` is the default ``CostModel``: for each op the larger of FLOPs / (peak x efficiency)
and bytes / memory bandwidth, and never less than the CPU time to launch its kernels (eager
PyTorch issues kernels asynchronously, so launch time hides under GPU time until the GPU work
gets small). Efficiency falls for small token counts because a small GEMM cannot fill every SM.
"""

from __future__ import annotations

from functools import lru_cache

from sim.config import Workload
from sim.hardware import GPU
from sim.models import DiTModel, text_encode_flops, vae_decode_flops
from sim.schedule import Compute, OpKind

# A GEMM fills the machine when it has about one 128x128 output tile per parallel unit; with
# x = tiles / units, efficiency is scaled by x / (x + FILL_HALF): half at a quarter wave.
TILE = 128 * 128
FILL_HALF = 0.25
# Kernels of the non-block ops (embedding, final layer, one DPM-Solver step on a patch).
OP_KERNELS = {"embed": 12, "final": 10, "scheduler_step": 25, "condition": 8,
              "text_encode": 24 * 12, "vae_decode": 120}


class RooflineCost:
    """Analytic roofline for ``workload`` on ``gpu``; ``scale`` multiplies every compute time
    (the single-GPU calibration factor, 1.0 when uncalibrated)."""

    def __init__(self, wl: Workload, gpu: GPU, scale: float = 1.0) -> None:
        self.wl = wl
        self.model: DiTModel = wl.model
        self.gpu = gpu
        self.scale = scale
        self._cached = lru_cache(maxsize=None)(self._compute_time)

    def source(self, op: Compute) -> str:
        """Always ``roofline``: every time is analytic."""
        return "roofline"

    def efficiency(self, rows: float, width: int) -> float:
        """Fraction of peak reached by kernels producing ``rows`` x ``width`` outputs."""
        x = rows * width / (TILE * self.gpu.parallel_units)
        return self.gpu.efficiency * x / (x + FILL_HALF)

    def roofline(self, flops: float, nbytes: float, rows: float, kernels: int,
                 width: int | None = None) -> float:
        """Seconds for work of ``flops`` and ``nbytes`` over ``rows`` token rows of ``width``
        outputs (default: the model's hidden size)."""
        g = self.gpu
        width = width or self.model.hidden
        t_compute = flops / (g.peak_flops * self.efficiency(rows, width))
        t_memory = nbytes / g.mem_bandwidth
        return max(t_compute, t_memory, kernels * g.launch_overhead_s)

    def block_time(self, index: int, q: int, kv: int, batch: int, part: str = "all",
                   shard: int = 1) -> float:
        """Seconds of block ``index`` on ``q`` query tokens over ``kv`` tokens; ``part`` is
        ``all``, ``attn`` (attention core only) or ``proj`` (everything else); ``shard`` is the
        tensor-parallel degree (1/shard of heads, MLP columns and weights)."""
        m = self.model
        b = self.wl.dtype_bytes
        attn = m.block_attention_flops(index, q, kv)
        flops = {"all": m.block_flops(index, q, kv), "attn": attn,
                 "proj": m.block_flops(index, q, kv) - attn}[part] * batch / shard
        weights = 0.0 if part == "attn" else m.block_params(index) * b / shard
        act = batch * m.block_activation_elems(q, kv) * b / shard
        rows = batch * (q + (m.text_tokens if m.family in ("joint", "flux") else 0))
        # Attention is a handful of kernels; projections and MLP carry the rest of the launches.
        kernels = {"all": m.kernels_per_block, "attn": 4, "proj": m.kernels_per_block - 4}[part]
        return self.roofline(flops, weights + act, rows, kernels, m.hidden // shard)

    def compute_time(self, op: Compute) -> float:
        """Seconds of ``op`` (cached: pipelines repeat the same shapes many times)."""
        return self._cached(op.kind, op.layers, op.q_tokens, op.kv_tokens, op.batch, op.part,
                            op.shard)

    def _compute_time(self, kind: str, layers: tuple[int, int], q: int, kv: int,
                      batch: int, part: str = "all", shard: int = 1) -> float:
        m = self.model
        b = self.wl.dtype_bytes
        if kind == OpKind.BLOCKS:
            t = sum(self.block_time(i, q, kv, batch, part, shard)
                    for i in range(layers[0], layers[1] + 1))
        elif kind == OpKind.EMBED:
            t = self.roofline(batch * m.embed_flops(q), m.outside_params * b / 4, batch * q,
                              OP_KERNELS[kind])
        elif kind == OpKind.FINAL:
            t = self.roofline(batch * m.final_flops(q), batch * q * m.hidden * b * 3, batch * q,
                              OP_KERNELS[kind])
        elif kind == OpKind.CONDITION:
            t = self.roofline(batch * m.condition_flops(), 7 * m.hidden**2 * b, batch,
                              OP_KERNELS[kind])
        elif kind == OpKind.SCHEDULER_STEP:
            # Elementwise over the latent patch (of each of ``batch`` images): a few reads and
            # writes of fp32 values.
            elems = batch * q * m.patch_size**2 * m.latent_channels
            t = self.roofline(20.0 * elems, 12 * elems * 4, 1, OP_KERNELS[kind])
        elif kind == OpKind.TEXT_ENCODE:
            prompts = batch
            tokens = max(m.text_tokens, 77) * prompts
            t = 0.0
            if m.text_encoder_params:
                t = self.roofline(text_encode_flops(m, prompts), m.text_encoder_params * b,
                                  tokens, OP_KERNELS[kind])
        elif kind == OpKind.VAE_DECODE:
            h, w = self.wl.height, self.wl.width
            t = 0.0
            if m.vae_params:
                # ``batch`` images decoded together: the weights are read once.
                t = self.roofline(batch * vae_decode_flops(h, w),
                                  m.vae_params * b + batch * 40.0 * h * w * b,
                                  batch * h * w / 64, OP_KERNELS[kind])
        else:
            raise ValueError(f"unknown compute kind {kind!r}")
        return t * self.scale
