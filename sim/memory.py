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
        # Field by field, not through asdict (which deep-copies): the planner asks for the
        # total of every rank of every candidate.
        return (self.weights + self.text_encoder + self.vae + self.activations
                + self.kv_buffers + self.recv_buffers + self.runtime)

    def as_dict(self) -> dict:
        d = {k: v / 1e9 for k, v in asdict(self).items()}
        d["total"] = self.total / 1e9
        return d


def memory_per_rank(wl: Workload, cfg: ParallelConfig, sched: Schedule,
                    gpu: GPU) -> list[MemoryBreakdown]:
    """Memory of each rank of ``sched`` (any strategy), bytes.

    - weights: the rank's pipeline stage (all blocks without PipeFusion), 1/T of them under
      tensor parallelism, plus what sits outside the blocks;
    - stale K,V: PipeFusion keeps ``2·B·p·hs·b`` per layer of its stage (full sequence, 1/T of
      the heads); DistriFusion keeps it for every layer of the model, and while its
      asynchronous gathers are in flight a second copy of it (torch's flattened gather
      outputs) beside one layer's concatenated full K,V;
    - activations: the largest op's working set on the rank's tokens, plus Ulysses' gathered
      full-sequence Q,K,V for its heads and the ring's K,V blocks in flight;
    - receive and communication buffers: a pipeline stage's incoming activations,
      DistriFusion's gathers in flight, collective staging buffers.
    """
    m = wl.model
    b = wl.dtype_bytes
    batch = sched.batch  # per CFG group
    full = wl.tokens
    seq = cfg.ulysses * cfg.ring
    T = cfg.tensor
    h = m.hidden
    text = m.text_tokens if m.family in ("joint", "flux") else 0
    pipelined = cfg.pipefusion > 1 and sched.patches > 1 and sched.warmup < sched.steps
    q_max = full if (sched.warmup > 0 or not pipelined) else max(
        sched.patch_tokens(j) for j in range(sched.patches))
    if cfg.distrifusion > 1:
        q_max = max(sched.patch_tokens(j) for j in range(sched.patches))
    qs = q_max // seq
    act = batch * (qs + text) * h * b * (ACT_ROWS + m.mlp_ratio) / T
    if cfg.ulysses > 1:
        act += 3 * batch * (q_max // cfg.ring + text) * h * b / (cfg.ulysses * T)
    if cfg.ring > 1:
        act += 2 * 2 * batch * (qs + text) * h * b / T  # the block in hand and the next one
    latent = wl.images * m.latent_channels * full * m.patch_size**2 * 4  # fp32 latents
    kv_layer = batch * m.stale_kv_elems(full) * b / T
    # DistriFusion's attention reads one layer's full K,V concatenated from the gathered list
    # (distrifuser and pipefuser: ``full_kv = torch.cat(new_buffer_list)``), so ``kv_layer`` is
    # always in flight. After its warmup steps each layer's gather is asynchronous and waited
    # for only in the next step, and torch's list-output all_gather gathers into a flattened
    # intermediate the Work holds until then (ProcessGroupNCCL::allgather's ``newLikeFlat``;
    # ``WorkNCCL::outputs_`` and ``stashed_for_allocator_safety_`` in torch's
    # ProcessGroupNCCL.hpp): at the end of a step every layer's gathered K,V exists twice.
    asynchronous = sched.warmup < sched.steps
    layout = sched.layout
    if layout is None:
        raise ValueError("the schedule has no rank layout; build it with "
                         "sim.strategies.build_schedule")
    out = []
    n_stages = len(sched.stage_layers)
    outside = m.outside_params  # a sum over every block: worked out once, not per rank
    stage_params: dict[int, float] = {}
    for rank in range(len(sched.ranks)):
        stage = layout.stage(rank)
        first, lst = sched.stage_layers[stage]
        n_layers = lst - first + 1
        kv = 0.0
        comm = 0.0
        if cfg.distrifusion > 1:
            kv = m.num_blocks * kv_layer
            comm = kv_layer + (m.num_blocks * kv_layer if asynchronous else 0.0)
        elif pipelined:
            kv = n_layers * kv_layer
        if n_stages > 1:
            comm += batch * (full // seq + text) * h * b
        if T > 1 or cfg.ulysses > 1:
            comm += 2 * batch * (qs + text) * h * b / T  # collective staging buffers
        if stage == n_stages - 1:
            comm += latent * 3  # DPM-Solver multistep keeps two previous model outputs
        if stage not in stage_params:  # a sum over the stage's blocks, the same per rank
            stage_params[stage] = m.blocks_params(first, lst)
        weights = (stage_params[stage] / T + outside) * b
        out.append(MemoryBreakdown(
            weights=weights,
            text_encoder=m.text_encoder_params * b if wl.text_encoder else 0.0,
            vae=m.vae_params * b if wl.vae else 0.0,
            activations=act,
            kv_buffers=kv,
            recv_buffers=comm,
            runtime=RUNTIME_BYTES_GPU if gpu.name != "cpu" else 0.0,
        ))
    return out
