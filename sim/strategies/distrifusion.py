"""DistriFusion: displaced patch parallelism (Li et al., 2024), optionally under CFG parallel.

Each of ``D`` ranks owns one band of latent rows for the whole run. In every layer it computes
its patch's fresh K,V and attends over the full sequence, whose other slices are one step old;
it then all-gathers its fresh K,V asynchronously, overlapped with the rest of the step, for
use by the same layer in the next step. The first ``W`` steps are synchronous: the all-gather
is blocking and attention sees fresh K,V everywhere. Every rank holds all weights and the
stale K,V of every layer for the full sequence.

Ranks come from ``sim.layout.RankLayout``: ``rank = c * D + d`` for CFG half ``c`` and patch
``d``.
"""

from __future__ import annotations

from sim.config import ParallelConfig, Workload
from sim.layout import RankLayout
from sim.partition import split_even
from sim.schedule import Collective, Compute, OpKind, Schedule, Tag, Wait, numel


def build(wl: Workload, cfg: ParallelConfig) -> Schedule:
    """Per-rank ops of DistriFusion with ``cfg.distrifusion`` patches (ranks) per CFG half."""
    m = wl.model
    C, D = cfg.cfg, cfg.distrifusion
    steps, warmup = wl.steps, cfg.warmup
    rows, cols = m.token_grid(wl.height, wl.width)
    b = wl.dtype_bytes
    batch = m.batch * wl.images // C
    patch_rows = split_even(rows, D)
    full = rows * cols
    layout = RankLayout.of(cfg)
    sched = Schedule(
        model=m.name, strategy=cfg.strategy, height=wl.height, width=wl.width, steps=steps,
        warmup=warmup, patches=D, batch=batch, dtype_bytes=b,
        stage_layers=[(0, m.num_blocks - 1)], patch_rows=patch_rows, token_cols=cols,
        ranks=[[] for _ in range(layout.world)], config=cfg.as_dict(), layout=layout,
    )
    units = [(i, i) for i in range(m.num_blocks)]
    for rank, ops in enumerate(sched.ranks):
        at = layout.coords(rank)
        d = at.patch
        patch_group = layout.group(rank, "patch")
        cfg_group = layout.group(rank, "cfg")
        q = patch_rows[d] * cols
        kv_bytes = numel((2, batch, q, m.hidden)) * b
        latent = numel((wl.images, m.latent_channels, patch_rows[d] * m.patch_size,
                        cols * m.patch_size)) * b
        if wl.text_encoder:
            ops.append(Compute(OpKind.TEXT_ENCODE, -1, -1, batch=m.batch * wl.images))
        for t in range(steps):
            warm = t < warmup
            ops.append(Compute(OpKind.CONDITION, t, -1, batch=batch, warmup=warm))
            ops.append(Compute(OpKind.EMBED, t, d, q_tokens=q, kv_tokens=full, batch=batch,
                               warmup=warm))
            for lo, hi in units:
                n = hi - lo + 1
                ops.append(Compute(OpKind.BLOCKS, t, d, (lo, hi), q, full, batch, warm, "proj"))
                tag = Tag("kv", t, -1, lo)
                if warm:
                    ops.append(Collective(OpKind.ALL_GATHER, patch_group, kv_bytes, tag,
                                          count=n))
                elif t - 1 >= warmup:
                    # Attention uses the K,V gathered during the previous step.
                    ops.append(Wait(Tag("kv", t - 1, -1, lo)))
                if not warm and t < steps - 1:  # the last step's K,V has no reader
                    ops.append(Collective(OpKind.ALL_GATHER, patch_group, kv_bytes, tag,
                                          asynchronous=True, count=n))
                ops.append(Compute(OpKind.BLOCKS, t, d, (lo, hi), q, full, batch, warm, "attn"))
            ops.append(Compute(OpKind.FINAL, t, d, q_tokens=q, kv_tokens=full, batch=batch,
                               warmup=warm))
            if C > 1:
                ops.append(Collective(OpKind.ALL_GATHER, cfg_group, latent, Tag("cfg", t, d, -1)))
            ops.append(Compute(OpKind.SCHEDULER_STEP, t, d, q_tokens=q, kv_tokens=full,
                               batch=wl.images, warmup=warm))
        if at.cfg == 0 and D > 1:
            # The VAE (first half, first patch) needs every patch of the first half's latent.
            ops.append(Collective(OpKind.ALL_GATHER, patch_group, latent,
                                  Tag("latent", steps - 1, -1, -1)))
    if wl.vae:
        sched.ranks[layout.rank()].append(Compute(OpKind.VAE_DECODE, -1, -1, batch=wl.images))
    return sched
