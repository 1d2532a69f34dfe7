"""PipeFusion: displaced patch pipeline parallelism (docs/design.md#pipefusion).

Stage ``i`` holds a contiguous run of blocks. The first ``W`` steps run the whole image stage
after stage (no stale data; they fill the K,V buffers). Later steps cut the latent into ``M``
bands of token rows; each stage runs patch ``j`` against its full-sequence K,V buffer (fresh for
patches already done this step, one step old for the rest), sends the patch's hidden states on
asynchronously, and moves to the next patch. The last stage runs the final layer and the
scheduler step on that patch alone and sends the latent patch back to stage 0 for the next
step, so the pipeline never drains between steps.

With one stage and one patch this is the serial schedule. The op generator is shared with the
hybrids (``sim.strategies.hybrid``), of which pure PipeFusion is the case with every other
degree 1.
"""

from __future__ import annotations

from sim.config import ParallelConfig, Workload
from sim.schedule import Schedule
from sim.strategies import hybrid


def build(wl: Workload, cfg: ParallelConfig) -> Schedule:
    """Per-rank ops of PipeFusion with ``cfg.pipefusion`` stages and ``cfg.patches`` patches."""
    return hybrid.build(wl, cfg)
