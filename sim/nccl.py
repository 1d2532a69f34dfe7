"""NCCL's latency model: the fixed cost of one collective call on the GPU, by protocol.

NCCL predicts a collective's time as a base latency per protocol plus a latency per hop
(``src/graph/tuning.cc``): LL costs 6.6 us + 1.0 us per PCIe hop (0.6 over NVLink) and moves
data at no more than half the link rate; Simple costs 8.4 us + 5.7 us per PCIe hop (3.4 over
NVLink) at the full rate. (LL128 runs only over NVLink; its constants are not in the sources at
hand, so NVLink calls choose between LL and Simple too.) NCCL picks the protocol that finishes
first for the message size, so small messages pay the LL floor and large ones Simple's.

A ring all-reduce takes 2(n-1) hops, an all-gather or reduce-scatter n-1, an all-to-all one
(its peer transfers run at once), a ring-attention rotation n-1 sequential point-to-point
steps. The CPU time of the call itself (the torch.distributed dispatch) is the host clock's
(``sim.host``); what is here is GPU-side.
"""

from __future__ import annotations

from sim.schedule import OpKind

US = 1e-6
# (base, per-hop over PCIe, per-hop over NVLink), seconds: nccl src/graph/tuning.cc.
LL = (6.6 * US, 1.0 * US, 0.6 * US)
SIMPLE = (8.4 * US, 5.7 * US, 3.4 * US)
LL_BANDWIDTH = 0.5  # LL carries 8 bytes of data in every 16 (a flag per word): half the rate


def hops(kind: str, n: int) -> int:
    """Hops NCCL's latency model charges one collective of ``kind`` over ``n`` ranks."""
    if kind == OpKind.ALL_REDUCE:
        return 2 * (n - 1)
    if kind in (OpKind.ALL_GATHER, OpKind.REDUCE_SCATTER):
        return n - 1
    if kind == OpKind.RING_KV:
        return n - 1
    return 1


def protocol(kind: str, n: int, flow_bytes: float, bandwidth: float, nvlink: bool,
             extra_hop_s: float = 0.0) -> tuple[float, float]:
    """(latency in seconds, factor on the bytes each flow moves) of one call: the protocol
    that finishes first for ``flow_bytes`` per flow at ``bandwidth`` bytes/s. ``extra_hop_s``
    adds a network's own latency to every hop (calls across nodes). A ring-attention rotation
    pays a whole point-to-point call (base included) per step."""
    h = hops(kind, n)
    best: tuple[float, float, float] | None = None
    for (base, pcie_hop, nv_hop), factor in ((LL, 1 / LL_BANDWIDTH), (SIMPLE, 1.0)):
        per_hop = (nv_hop if nvlink else pcie_hop) + extra_hop_s
        latency = (base + per_hop) * h if kind == OpKind.RING_KV else base + per_hop * h
        total = latency + flow_bytes * factor / bandwidth
        if best is None or total < best[0]:
            best = (total, latency, factor)
    assert best is not None
    return best[1], best[2]
