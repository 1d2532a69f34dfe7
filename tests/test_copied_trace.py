"""A trace whose copied ranks' rows are built only when read (``sim.trace.CopiedTrace``,
issue 14): every number read from it without building them (metrics, latency, cost source
counts, the periodic check) equals, bit for bit, the same number read from the built rows."""

from __future__ import annotations

import pickle

import pytest

from sim.config import ParallelConfig, Workload
from sim.cost.roofline import RooflineCost
from sim.engine import simulate
from sim.evaluate import periodic_extension
from sim.hardware import get_gpu
from sim.host import HostModel
from sim.metrics import compute_metrics, source_summary
from sim.models import get_model
from sim.strategies import build_schedule
from sim.topology import build_topology
from sim.trace import CopiedTrace, ExtendedTrace, Trace

# (model, gpu, link, nodes, degrees, shifted images): images with messages between stages,
# an orbit that splits off at the decode, mirror ranks with and without asynchronous
# collectives.
CASES = [
    ("flux", "h100-sxm", "nvlink", 2, dict(pipefusion=4, ring=2, tensor=2), True),
    ("pixart", "l40", "pcie", 1, dict(pipefusion=4, ulysses=2), True),
    ("sd3", "a100-sxm-80g", "nvlink", 1, dict(pipefusion=2, cfg=2, ulysses=2), True),
    ("pixart", "l40", "pcie", 1, dict(ulysses=8), True),
    ("pixart", "l40", "pcie", 1, dict(ulysses=8), False),
    ("pixart", "a100-sxm-80g", "nvlink", 1, dict(ring=8), False),
]


def _traces(model, gpu, link, nodes, degrees, shifted, steps=6):
    """The engine's trace (copies not built) and a plain one holding the same rows."""
    degrees = dict(degrees)
    pf = degrees.pop("pipefusion", 1)
    n = pf * degrees.get("cfg", 1) * degrees.get("ring", 1) * degrees.get("ulysses", 1) \
        * degrees.get("tensor", 1)
    wl = Workload(get_model(model), 1024, 1024, steps)
    g = get_gpu(gpu)
    cfg = ParallelConfig(n, pf, 4 if pf > 1 else 1, 1, **degrees)
    sched = build_schedule(wl, cfg)
    topo = build_topology(g, n, link, nodes)
    copied = simulate(sched, topo, RooflineCost(wl, g), host=HostModel(wl.model, g),
                      shifts=shifted)
    assert isinstance(copied, CopiedTrace)
    fresh = pickle.loads(pickle.dumps(copied))  # the recipe: copies still not built
    assert "rows" not in fresh.__dict__
    return fresh, Trace(list(copied.rows), dict(copied.cpu_ahead)), n, cfg


def _same(a, b) -> None:
    """Equal numbers, bit for bit (NaN never occurs here)."""
    assert a == b


@pytest.mark.parametrize("model,gpu,link,nodes,degrees,shifted", CASES)
def test_numbers_read_without_the_copies_equal_those_of_the_full_rows(
        model, gpu, link, nodes, degrees, shifted) -> None:
    copied, full, n, cfg = _traces(model, gpu, link, nodes, degrees, shifted)
    if shifted and degrees.get("pipefusion", 1) > 1:
        assert copied.split  # the decoding stage's images have rows of their own
    _same(copied.end_s, full.end_s)
    _same(compute_metrics(copied, n, 6, cfg.warmup).as_dict(),
          compute_metrics(full, n, 6, cfg.warmup).as_dict())
    _same(source_summary(copied), source_summary(full))
    assert len(copied) == len(full)
    ext_copied = periodic_extension(copied, 2, 20)
    ext_full = periodic_extension(full, 2, 20)
    assert (ext_copied is None) == (ext_full is None)
    if ext_full is not None:
        assert isinstance(ext_copied, ExtendedTrace)
        _same(ext_copied.period, ext_full.period)
        _same(ext_copied.end_s, ext_full.end_s)
        _same(compute_metrics(ext_copied, n, 20, cfg.warmup).as_dict(),
              compute_metrics(ext_full, n, 20, cfg.warmup).as_dict())
        _same(source_summary(ext_copied), source_summary(ext_full))
        assert "rows" not in copied.__dict__  # none of the above built the copies
        assert ext_copied.rows == ext_full.rows  # built on reading
    assert copied.rows == full.rows  # built on reading, in the engine's order


def test_a_copied_vae_decode_falls_back_to_the_full_rows() -> None:
    """A copied row the metrics cannot take from the representative's sums (a VAE decode,
    summed over every rank) makes them read the built rows."""
    copied, full, n, cfg = _traces("pixart", "l40", "pcie", 1, dict(ulysses=8), False)
    rep = next(iter(copied.copies))
    vae = full.rows[0]._replace(rank=rep, op="vae_decode", start_s=1.0, end_s=1.5, step=-1)
    simulated = copied.simulated + [vae]
    tricked = CopiedTrace(simulated, simulated, copied.copies, copied.split, copied.cpu_ahead)
    plain = Trace(list(tricked.rows), copied.cpu_ahead)
    assert sum(r.op == "vae_decode" for r in plain.rows) == \
        sum(r.op == "vae_decode" for r in simulated) + len(copied.copies[rep])
    _same(compute_metrics(CopiedTrace(simulated, simulated, copied.copies, copied.split,
                                      copied.cpu_ahead), n, 6, cfg.warmup).as_dict(),
          compute_metrics(plain, n, 6, cfg.warmup).as_dict())
