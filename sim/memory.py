"""Peak memory per rank (bytes): weights of its stage, text encoder and VAE unless excluded,
activations of the largest op, full-sequence stale K,V buffers, receive buffers, runtime."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sim.config import ParallelConfig, Workload
from sim.hardware import GPU
from sim.schedule import Schedule

# CUDA context, cuBLAS/cuDNN workspaces and allocator slack: typically 0.3-0.7 GB per process
# (PyTorch CUDA semantics notes; nvidia-smi on an idle torch process). 0.5 GB taken.
RUNTIME_BYTES_GPU = 0.5e9
# Activations alive inside one block, in rows of ``hidden``: the residual stream, norm output,
# Q, K, V, attention output, the MLP hidden (r rows), with memory-efficient attention.
ACT_ROWS = 7.0


@dataclass
class MemoryBreakdown:
    """Bytes one rank holds at its peak."""

    weights: float
    text_encoder: float
    vae: float
    activations: float
    kv_buffers: float
    recv_buffers: float
    runtime: float

    @property
    def total(self) -> float:
        return sum(asdict(self).values())

    def as_dict(self) -> dict:
        d = {k: v / 1e9 for k, v in asdict(self).items()}
        d["total"] = self.total / 1e9
        return d


def pipefusion_memory(wl: Workload, cfg: ParallelConfig, sched: Schedule,
                      gpu: GPU) -> list[MemoryBreakdown]:
    """Memory of each rank of a PipeFusion (or serial) schedule."""
    m = wl.model
    b = wl.dtype_bytes
    batch = sched.batch
    full = wl.tokens
    stale = sched.patches > 1 and sched.warmup < sched.steps
    # The largest op: a synchronous step runs the whole image, a pipelined one a patch.
    q_max = full if (sched.warmup > 0 or not stale) else max(sched.patch_tokens(j)
                                                            for j in range(sched.patches))
    text = m.text_tokens if m.family in ("joint", "flux") else 0
    act = batch * (q_max + text) * m.hidden * b * (ACT_ROWS + m.mlp_ratio)
    latent = m.latent_channels * full * m.patch_size**2 * 4  # fp32 latent plus scheduler history
    out = []
    last = len(sched.stage_layers) - 1
    for s, (first, lst) in enumerate(sched.stage_layers):
        n_layers = lst - first + 1
        kv = n_layers * batch * m.stale_kv_elems(full) * b if stale else 0.0
        recv = batch * (full + text) * m.hidden * b if len(sched.stage_layers) > 1 else 0.0
        if s == last:
            recv += latent * 3  # DPM-Solver multistep keeps two previous model outputs
        out.append(MemoryBreakdown(
            weights=(m.blocks_params(first, lst) + m.outside_params) * b,
            text_encoder=m.text_encoder_params * b if wl.text_encoder else 0.0,
            vae=m.vae_params * b if wl.vae else 0.0,
            activations=act,
            kv_buffers=kv,
            recv_buffers=recv,
            runtime=RUNTIME_BYTES_GPU if gpu.name != "cpu" else 0.0,
        ))
    return out
