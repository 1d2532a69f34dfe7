"""CFG x PipeFusion x Ulysses x ring x tensor hybrids (xDiT-style), pure strategies included.

Rank layout (DESIGN.md section 3): the sequence-parallel group is innermost so it sits on the
fastest links, then pipeline stages, then the CFG halves:
``rank = ((c * P + p) * R * U + r * U + u) * T + t`` with tensor parallelism innermost of all.

Per diffusion step, per patch (the whole image in warmup steps and without PipeFusion):

- each rank of a stage holds ``1/(U*R)`` of the patch's tokens (``1/T`` of heads and MLP
  columns under tensor parallelism);
- per block: projections, then Ulysses' four all-to-alls (Q, K, V in, output back), the
  ring's K,V rotation overlapped with attention (asynchronous, waited for after attention),
  and tensor parallelism's all-reduces (2 per block, 3 with cross-attention);
- PipeFusion forwards each patch's hidden states to the same position of the next stage and
  the last stage returns the latent patch to stage 0; every rank of a stage keeps the full
  stale K,V of its layers;
- with CFG parallelism the two halves of the guidance batch run on two groups, which
  all-gather the noise prediction before the scheduler step.

With every degree 1 but PipeFusion this emits exactly the PipeFusion schedule.

``coarse=True`` merges the per-block ops of a stage into one unit (compute summed, collectives
standing for ``count`` back-to-back ones). The planner uses it: for identical blocks under
steady link sharing it gives the same time with a fraction of the events. The executor and
``sim.predict`` use the per-block schedule.
"""

from __future__ import annotations

from sim.config import ParallelConfig, Workload
from sim.schedule import (
    Collective,
    Compute,
    Op,
    Recv,
    Schedule,
    Send,
    Tag,
    Wait,
    numel,
    partition_layers,
    split_even,
)


def _units(first: int, last: int, coarse: bool) -> list[tuple[int, int]]:
    """Block ranges that get their own communication: one per block, or one per stage."""
    return [(first, last)] if coarse else [(i, i) for i in range(first, last + 1)]


def build(wl: Workload, cfg: ParallelConfig, coarse: bool = False) -> Schedule:
    """Per-rank ops of the hybrid ``cfg`` for ``wl``."""
    m = wl.model
    C, P, U, R, T = cfg.cfg, cfg.pipefusion, cfg.ulysses, cfg.ring, cfg.tensor
    sp = U * R * T
    seq = U * R
    steps, warmup = wl.steps, cfg.warmup
    rows, cols = m.token_grid(wl.height, wl.width)
    b = wl.dtype_bytes
    batch = m.batch // C
    # Patches belong to PipeFusion; one rank may still run them (the profiler times such ops).
    patches = cfg.patches if P > 1 or C * sp == 1 else 1
    stages = partition_layers(m.num_blocks, P, list(cfg.stage_blocks) if cfg.stage_blocks
                              else None)
    patch_rows = split_even(rows, patches)
    world = C * P * sp
    sched = Schedule(
        model=m.name, strategy=cfg.strategy, height=wl.height, width=wl.width, steps=steps,
        warmup=warmup, patches=patches, batch=batch, dtype_bytes=b, stage_layers=stages,
        patch_rows=patch_rows, token_cols=cols, ranks=[[] for _ in range(world)],
        config=cfg.as_dict(),
    )
    full = rows * cols
    last = P - 1
    stage_of = {layer: s for s, (f, lst) in enumerate(stages) for layer in range(f, lst + 1)}
    skips: list[tuple[int, int]] = []
    if m.long_skips:
        n = m.num_blocks
        skips = [(i, n - 1 - i) for i in range(n // 2 - 1) if stage_of[i] != stage_of[n - 1 - i]]
    joint = m.family in ("joint", "flux")
    lat_c = m.latent_channels
    tensor_reduces = 3 if m.family == "cross" else 2

    def rank_of(c: int, p: int, s: int) -> int:
        return (c * P + p) * sp + s

    def coords(s: int) -> tuple[int, int, int]:
        """(ring index, Ulysses index, tensor index) of position ``s`` in a stage."""
        return s // (U * T), (s // T) % U, s % T

    def group(c: int, p: int, s: int, axis: str) -> tuple[int, ...]:
        r, u, t = coords(s)
        if axis == "tensor":
            return tuple(rank_of(c, p, (r * U + u) * T + k) for k in range(T))
        if axis == "ulysses":
            return tuple(rank_of(c, p, (r * U + k) * T + t) for k in range(U))
        if axis == "ring":
            return tuple(rank_of(c, p, (k * U + u) * T + t) for k in range(R))
        return tuple(rank_of(k, p, s) for k in range(C))  # cfg

    def hidden(tokens: int) -> tuple[int, ...]:
        return (batch, tokens, m.hidden)

    def msg(shape: tuple[int, ...]) -> int:
        return numel(shape) * b

    def latent_shape(j: int, share: int) -> tuple[int, ...]:
        lat_rows = (rows if j < 0 else patch_rows[j]) * m.patch_size
        if seq == 1:
            return (1, lat_c, lat_rows, cols * m.patch_size)
        # A sequence-parallel rank holds a run of tokens, not whole rows: flatten.
        return (1, lat_c, share * m.patch_size**2)

    def stage_in(ops: list[Op], t: int, j: int, p: int, first: int, q: int, qs: int,
                 c: int, s: int, warm: bool, prev_warm: bool) -> None:
        """Receive what stage ``p`` needs for patch ``j`` of step ``t``, embed on stage 0."""
        if p == 0:
            if t > 0 and P > 1:
                src = rank_of(c, last, s)
                if prev_warm and j <= 0:
                    shape = latent_shape(-1, full // seq)
                    ops.append(Recv(src, msg(shape), Tag("latent", t - 1, -1, -1), shape))
                elif not prev_warm:
                    shape = latent_shape(j, qs)
                    ops.append(Recv(src, msg(shape), Tag("latent", t - 1, j, -1), shape))
            ops.append(Compute("embed", t, j, q_tokens=qs, kv_tokens=full, batch=batch,
                               warmup=warm))
            return
        src = rank_of(c, p - 1, s)
        ops.append(Recv(src, msg(hidden(qs)), Tag("hidden", t, j, first), hidden(qs)))
        if joint and j <= 0:
            ops.append(Recv(src, msg(hidden(m.text_tokens)), Tag("text", t, j, first),
                            hidden(m.text_tokens)))
        for src_layer, dst_layer in skips:
            if stage_of[dst_layer] == p:
                ops.append(Recv(rank_of(c, stage_of[src_layer], s), msg(hidden(qs)),
                                Tag("skip", t, j, src_layer), hidden(qs)))

    def blocks(ops: list[Op], t: int, j: int, lo: int, hi: int, qs: int, c: int, p: int,
               s: int, warm: bool) -> None:
        """Blocks ``lo..hi`` with the collectives of Ulysses, ring and tensor parallelism."""
        n = hi - lo + 1
        split = U > 1 or R > 1
        ops.append(Compute("blocks", t, j, (lo, hi), qs, full, batch, warm,
                           "proj" if split else "all", T))
        if U > 1:
            ops.append(Collective("all_to_all", group(c, p, s, "ulysses"),
                                  msg((batch, qs, m.hidden // T)), Tag("ulysses", t, j, lo),
                                  count=4 * n))
        if R > 1:
            ops.append(Collective("ring_kv", group(c, p, s, "ring"),
                                  2 * msg((batch, qs, m.hidden // T)), Tag("ring", t, j, lo),
                                  asynchronous=True, count=n))
        if split:
            ops.append(Compute("blocks", t, j, (lo, hi), qs, full, batch, warm, "attn", T))
        if R > 1:
            ops.append(Wait(Tag("ring", t, j, lo)))
        if T > 1:
            ops.append(Collective("all_reduce", group(c, p, s, "tensor"), msg(hidden(qs)),
                                  Tag("tensor", t, j, lo), count=tensor_reduces * n))

    def stage_out(ops: list[Op], t: int, j: int, p: int, lst: int, q: int, qs: int, c: int,
                  s: int, warm: bool) -> None:
        """Send on to the next stage, or finish the patch on the last stage."""
        for src_layer, dst_layer in skips:
            if stage_of[src_layer] == p:
                ops.append(Send(rank_of(c, stage_of[dst_layer], s), msg(hidden(qs)),
                                Tag("skip", t, j, src_layer), hidden(qs)))
        if p < last:
            dst = rank_of(c, p + 1, s)
            ops.append(Send(dst, msg(hidden(qs)), Tag("hidden", t, j, lst + 1), hidden(qs)))
            if joint and j <= 0:
                ops.append(Send(dst, msg(hidden(m.text_tokens)), Tag("text", t, j, lst + 1),
                                hidden(m.text_tokens)))
            return
        ops.append(Compute("final", t, j, q_tokens=qs, kv_tokens=full, batch=batch,
                           warmup=warm))
        if C > 1:
            # Guidance needs both halves' noise predictions: one all-gather per step (patch).
            ops.append(Collective("all_gather", group(c, p, s, "cfg"),
                                  msg(latent_shape(j, qs)), Tag("cfg", t, j, -1)))
        ops.append(Compute("scheduler_step", t, j, q_tokens=qs, kv_tokens=full, batch=1,
                           warmup=warm))
        if t < steps - 1 and P > 1:
            shape = latent_shape(j, qs)
            ops.append(Send(rank_of(c, 0, s), msg(shape), Tag("latent", t, j, -1), shape))

    if wl.text_encoder:
        for ops in sched.ranks:
            ops.append(Compute("text_encode", -1, -1, batch=m.batch))

    for t in range(steps):
        warm = t < warmup
        prev_warm = t - 1 < warmup
        for j in ([-1] if warm else range(patches)):
            q = full if j < 0 else patch_rows[j] * cols
            qs = q // seq
            for c in range(C):
                for p, (first, lst) in enumerate(stages):
                    for s in range(sp):
                        ops = sched.ranks[rank_of(c, p, s)]
                        if j <= 0:  # every rank computes the step's conditioning itself
                            ops.append(Compute("condition", t, -1, batch=batch, warmup=warm))
                        stage_in(ops, t, j, p, first, q, qs, c, s, warm, prev_warm)
                        for lo, hi in _units(first, lst, coarse or sp == 1):
                            blocks(ops, t, j, lo, hi, qs, c, p, s, warm)
                        stage_out(ops, t, j, p, lst, q, qs, c, s, warm)

    if seq > 1:
        # The VAE needs the whole latent on one rank.
        holders = tuple(rank_of(0, last, (r * U + u) * T) for r in range(R) for u in range(U))
        shape = latent_shape(-1, full // seq)
        for rank in holders:
            sched.ranks[rank].append(Collective("all_gather", holders, msg(shape),
                                                Tag("latent", steps - 1, -1, -1)))
    if wl.vae:
        sched.ranks[rank_of(0, last, 0)].append(Compute("vae_decode", -1, -1, batch=1))
    return sched
