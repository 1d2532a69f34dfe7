"""The simulator's prediction of a grid configuration from the profiles measured on this
machine."""

from __future__ import annotations

from pathlib import Path

from sim.config import ParallelConfig, Workload
from sim.cost.link_profile import apply_link_profile
from sim.cost.profile import ProfileCost
from sim.evaluate import Prediction, evaluate
from sim.hardware import get_gpu
from sim.models import get_model
from sim.topology import build_topology
from validation.grid import Case


def predict_case(c: Case, compute: dict[tuple[str, int], Path], link: Path | None,
                 device: str) -> Prediction:
    """The simulator's prediction of ``c`` on ``device`` ("cpu" or "cuda") from the compute
    profile of its model and process count in ``compute`` and the link profile ``link``."""
    gpu = get_gpu("cpu" if device == "cpu" else "h100-sxm")
    wl = Workload(get_model(c.model), c.resolution, c.resolution, c.steps, dtype="fp32",
                  text_encoder=False, vae=False)
    cfg = ParallelConfig(c.nproc, c.nproc // c.ulysses, c.patches, c.warmup,
                         ulysses=c.ulysses)
    topo = build_topology(gpu, c.nproc, "pcie" if device == "cpu" else "nvlink")
    if link is not None:
        # The link fit of the regime holding this run's typical message: a patch's hidden
        # states (batch x tokens/M x hidden, fp32).
        m = wl.model
        msg = m.batch * wl.tokens // c.patches * m.hidden * 4
        topo = apply_link_profile(topo, link, nbytes=msg)
    cost = ProfileCost(wl, gpu, compute[(c.model, c.nproc)])
    return evaluate(wl, cfg, gpu, topo, cost)
