"""The public-measurement check of the registry's collectives (issue 10, item 6): the data
carry their sources, and the engine's time for one collective has the closed form of the
ring and direct patterns on an uncontended NVLink switch."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import public_collectives as pc  # noqa: E402
from sim.engine import collective_call  # noqa: E402
from sim.hardware import get_gpu  # noqa: E402
from sim.schedule import OpKind  # noqa: E402
from sim.topology import build_topology  # noqa: E402


def test_every_public_row_names_its_source_and_a_known_measure() -> None:
    with open(pc.DATA, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 10
    for r in rows:
        assert r["source"].strip() and r["measure"] in ("busbw_GBps", "avg_busbw_GBps",
                                                        "time_us")
        assert float(r["low"]) <= float(r["high"])
        get_gpu(r["gpu"])  # a registry GPU


def test_one_collective_on_nvlink_has_the_ring_closed_form() -> None:
    gpu, n, nbytes = "a100-sxm-80g", 8, 1 << 28
    topo = build_topology(get_gpu(gpu), n, "nvlink")
    _, per_flow, latency = collective_call(topo, OpKind.ALL_REDUCE, tuple(range(n)), nbytes)
    bw = topo.route_bandwidth(0, 1)
    assert per_flow == pytest.approx(2 * (n - 1) / n * nbytes)  # NCCL's ring, Simple protocol
    expected = latency + per_flow / bw
    assert pc.collective_seconds(gpu, "nvlink", n, OpKind.ALL_REDUCE, nbytes) == \
        pytest.approx(expected, rel=1e-9)
    # Bus bandwidth undoes the ring's 2(n-1)/n: the link rate, less the latency's share.
    assert pc.busbw(gpu, "nvlink", n, OpKind.ALL_REDUCE, nbytes) == \
        pytest.approx(nbytes * 2 * (n - 1) / n / expected / 1e9)


def test_contention_among_a_collectives_own_flows_slows_it() -> None:
    # 8 GPUs over two sockets: the all-to-all's cross-socket flows share the socket link,
    # so the call takes longer than one flow alone on its route would.
    topo = build_topology(get_gpu("l20"), 8, "pcie")
    pairs, per_flow, latency = collective_call(topo, OpKind.ALL_TO_ALL, tuple(range(8)), 1 << 26)
    alone = latency + per_flow / min(topo.route_bandwidth(a, b) for a, b in pairs)
    assert pc.collective_seconds("l20", "pcie", 8, OpKind.ALL_TO_ALL, 1 << 26) > 2 * alone


def test_ranges_count_as_agreement_inside_and_the_nearer_end_outside(tmp_path) -> None:
    path = tmp_path / "p.csv"
    m = pc.busbw("a100-sxm-80g", "nvlink", 8, OpKind.ALL_REDUCE, 1 << 29)
    head = "platform,gpu,link,gpus,collective,nbytes,measure,low,high,source\n"
    body = "".join(f"x,a100-sxm-80g,nvlink,8,all_reduce,{1 << 29},busbw_GBps,{lo},{hi},s\n"
                   for lo, hi in ((m / 2, m * 2), (m * 2, m * 4), (m / 4, m / 2)))
    path.write_text(head + body)
    ratios = [r["ratio"] for r in pc.compare(path)]
    assert ratios == [1.0, pytest.approx(0.5), pytest.approx(2.0)]
