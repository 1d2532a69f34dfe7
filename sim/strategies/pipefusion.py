"""PipeFusion: displaced patch pipeline parallelism (DESIGN.md section 3).

Stage ``i`` holds a contiguous run of blocks. The first ``W`` steps run the whole image stage
after stage (no stale data; they fill the K,V buffers). Later steps cut the latent into ``M``
bands of token rows; each stage runs patch ``j`` against its full-sequence K,V buffer (fresh for
patches already done this step, one step old for the rest), sends the patch's hidden states on
asynchronously, and moves to the next patch. The last stage runs the final layer and the
scheduler step on that patch alone and sends the latent patch back to stage 0 for the next
step, so the pipeline never drains between steps.

With one stage and one patch this is the serial schedule.
"""

from __future__ import annotations

from sim.config import ParallelConfig, Workload
from sim.schedule import (
    Compute,
    Op,
    Recv,
    Schedule,
    Send,
    Tag,
    numel,
    partition_layers,
    split_even,
)


def build(wl: Workload, cfg: ParallelConfig) -> Schedule:
    """Per-rank ops of PipeFusion with ``cfg.pipefusion`` stages and ``cfg.patches`` patches."""
    m = wl.model
    n_stages = cfg.pipefusion
    steps, warmup = wl.steps, cfg.warmup
    rows, cols = m.token_grid(wl.height, wl.width)
    b = wl.dtype_bytes
    batch = m.batch
    stages = partition_layers(m.num_blocks, n_stages,
                              list(cfg.stage_blocks) if cfg.stage_blocks else None)
    patch_rows = split_even(rows, cfg.patches)
    sched = Schedule(
        model=m.name, strategy=cfg.strategy, height=wl.height, width=wl.width, steps=steps,
        warmup=warmup, patches=cfg.patches, batch=batch, dtype_bytes=b, stage_layers=stages,
        patch_rows=patch_rows, token_cols=cols, ranks=[[] for _ in range(n_stages)],
        config=cfg.as_dict(),
    )
    full = rows * cols
    last = n_stages - 1
    stage_of = {layer: s for s, (f, lst) in enumerate(stages) for layer in range(f, lst + 1)}
    # Long skips (HunyuanDiT): block i of the first half feeds block L-1-i.
    skips: list[tuple[int, int]] = []
    if m.long_skips:
        n = m.num_blocks
        skips = [(i, n - 1 - i) for i in range(n // 2 - 1) if stage_of[i] != stage_of[n - 1 - i]]
    joint = m.family in ("joint", "flux")
    lat_c = m.latent_channels

    def hidden(tokens: int) -> tuple[int, ...]:
        return (batch, tokens, m.hidden)

    def msg(shape: tuple[int, ...]) -> int:
        return numel(shape) * b

    if wl.text_encoder:
        for ops in sched.ranks:
            ops.append(Compute("text_encode", -1, -1, batch=batch))

    for t in range(steps):
        warm = t < warmup
        prev_warm = t - 1 < warmup
        for j in ([-1] if warm else range(cfg.patches)):
            q = full if j < 0 else patch_rows[j] * cols
            lat_rows = (rows if j < 0 else patch_rows[j]) * m.patch_size
            latent_shape = (1, lat_c, lat_rows, cols * m.patch_size)
            for s, (first, lst) in enumerate(stages):
                ops: list[Op] = sched.ranks[s]
                if s == 0:
                    # The latent of step t comes back from the last stage: whole after a
                    # synchronous step (received once, before the first patch), else per patch.
                    if t > 0 and n_stages > 1:
                        if prev_warm and j <= 0:
                            shape = (1, lat_c, rows * m.patch_size, cols * m.patch_size)
                            ops.append(Recv(last, msg(shape), Tag("latent", t - 1, -1, -1), shape))
                        elif not prev_warm:
                            ops.append(Recv(last, msg(latent_shape), Tag("latent", t - 1, j, -1),
                                            latent_shape))
                    ops.append(Compute("embed", t, j, q_tokens=q, kv_tokens=full, batch=batch,
                                       warmup=warm))
                else:
                    ops.append(Recv(s - 1, msg(hidden(q)), Tag("hidden", t, j, first), hidden(q)))
                    if joint and j <= 0:
                        ops.append(Recv(s - 1, msg(hidden(m.text_tokens)),
                                        Tag("text", t, j, first), hidden(m.text_tokens)))
                    for src_layer, dst_layer in skips:
                        if stage_of[dst_layer] == s:
                            ops.append(Recv(stage_of[src_layer], msg(hidden(q)),
                                            Tag("skip", t, j, src_layer), hidden(q)))
                ops.append(Compute("blocks", t, j, (first, lst), q, full, batch, warm))
                for src_layer, dst_layer in skips:
                    if stage_of[src_layer] == s:
                        ops.append(Send(stage_of[dst_layer], msg(hidden(q)),
                                        Tag("skip", t, j, src_layer), hidden(q)))
                if s < last:
                    ops.append(Send(s + 1, msg(hidden(q)), Tag("hidden", t, j, lst + 1),
                                    hidden(q)))
                    if joint and j <= 0:
                        ops.append(Send(s + 1, msg(hidden(m.text_tokens)),
                                        Tag("text", t, j, lst + 1), hidden(m.text_tokens)))
                else:
                    ops.append(Compute("final", t, j, q_tokens=q, kv_tokens=full, batch=batch,
                                       warmup=warm))
                    ops.append(Compute("scheduler_step", t, j, q_tokens=q, kv_tokens=full,
                                       batch=1, warmup=warm))
                    if t < steps - 1 and n_stages > 1:
                        ops.append(Send(0, msg(latent_shape), Tag("latent", t, j, -1),
                                        latent_shape))
    if wl.vae:
        sched.ranks[last].append(Compute("vae_decode", -1, -1, batch=1))
    return sched
