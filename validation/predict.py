"""The simulator's prediction of a grid configuration from the profiles measured on this
machine."""

from __future__ import annotations

from pathlib import Path

from profiles.pooled import expected_slowest
from sim.config import ParallelConfig, Workload
from sim.cost.link_profile import apply_link_profile
from sim.cost.profile import ProfileCost
from sim.cost.profile_format import ComputeProfile
from sim.evaluate import Prediction, evaluate
from sim.hardware import get_gpu
from sim.models import get_model
from sim.topology import build_topology
from validation.grid import Case


def predict_case(c: Case, compute: dict[tuple[str, int], Path], link: Path | None,
                 device: str, pace: str = "slowest") -> Prediction:
    """The simulator's prediction of ``c`` on ``device`` ("cpu" or "cuda") from the compute
    profile of its model and process count in ``compute`` and the link profile ``link``.

    ``pace="slowest"``: a profile pooled over processes (``profiles.pooled``) holds the
    median process, but a run of N processes that wait for each other goes at the pace of
    its slowest one, so compute is scaled by the expected slowest of N processes drawn from
    those the profile measured (``expected_slowest``; for one process, the mean). ``"median"``:
    unscaled."""
    gpu = get_gpu("cpu" if device == "cpu" else "h100-sxm")
    wl = Workload(get_model(c.model), c.resolution, c.resolution, c.steps, dtype="fp32",
                  text_encoder=False, vae=False)
    cfg = ParallelConfig(c.nproc, **c.degrees())
    topo = build_topology(gpu, c.nproc, "pcie" if device == "cpu" else "nvlink")
    if link is not None:
        # The link fit of the regime holding this run's typical message: a patch's hidden
        # states (batch x tokens/M x hidden, fp32).
        m = wl.model
        msg = m.batch * wl.tokens // c.patches * m.hidden * 4
        topo = apply_link_profile(topo, link, nbytes=msg)
    prof = ComputeProfile.read(compute[(c.model, c.nproc)])
    factors = prof.meta.get("process_factors") if pace == "slowest" else None
    scale = expected_slowest(factors, c.nproc) if isinstance(factors, list) else 1.0
    cost = ProfileCost(wl, gpu, prof, scale=scale)
    return evaluate(wl, cfg, gpu, topo, cost)
