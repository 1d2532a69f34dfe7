"""The simulator's prediction of a grid configuration from the profiles measured on this
machine."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from profiles.pooled import expected_slowest
from sim.config import ParallelConfig, Workload
from sim.cost.link_profile import apply_link_profile
from sim.cost.probe import reference_block
from sim.cost.profile import ProfileCost
from sim.cost.profile_format import ComputeProfile, Sample
from sim.errors import UserError
from sim.evaluate import Prediction, evaluate
from sim.hardware import get_gpu
from sim.models import get_model
from sim.topology import build_topology
from validation.grid import Case

# Whether ``predict_case`` costs blocking collectives at the run's compute between calls
# (``sim.stretch``) where the link profile timed them after two stretches.
STRETCH = True


def predict_case(c: Case, compute: dict[tuple[str, int], Path], link: Path | None,
                 device: str, pace: str = "slowest", scale: float | None = None,
                 stretch: bool | None = None) -> Prediction:
    """The simulator's prediction of ``c`` on ``device`` ("cpu" or "cuda") from the compute
    profile of its model and process count in ``compute`` and the link profile ``link``.

    ``pace="slowest"``: a profile pooled over processes (``profiles.pooled``) holds the
    median process, but a run of N processes that wait for each other goes at the pace of
    its slowest one, so compute is scaled by the expected slowest of N processes drawn from
    those the profile measured (``expected_slowest``; for one process, the mean). ``"median"``:
    unscaled. ``scale``, when given, is the pace itself (``probe_pace``).

    ``stretch`` (default ``STRETCH``): cost each blocking collective at the compute the run
    does between its calls (``sim.stretch``), where the link profile timed the calls after
    two stretches (``sim.cost.link_profile.collective_curves``)."""
    gpu = get_gpu("cpu" if device == "cpu" else "h100-sxm")
    wl = Workload(get_model(c.model), c.resolution, c.resolution, c.steps, dtype="fp32",
                  text_encoder=False, vae=False)
    cfg = ParallelConfig(c.nproc, **c.degrees())
    prof = ComputeProfile.read(compute[(c.model, c.nproc)])
    if scale is None:
        factors = prof.meta.get("process_factors") if pace == "slowest" else None
        scale = expected_slowest(factors, c.nproc) if isinstance(factors, list) else 1.0
    cost = ProfileCost(wl, gpu, prof, scale=scale)
    topo = build_topology(gpu, c.nproc, "pcie" if device == "cpu" else "nvlink")
    if link is not None:
        # The link fit of the regime holding this run's typical message: a patch's hidden
        # states (batch x tokens/M x hidden, fp32).
        m = wl.model
        msg = m.batch * wl.tokens // c.patches * m.hidden * 4
        topo = apply_link_profile(topo, link, nbytes=msg,
                                  stretch=STRETCH if stretch is None else stretch)
    return evaluate(wl, cfg, gpu, topo, cost)


# Seconds of probing per probe (before the runs, and again after them), and the calls'
# bounds: enough calls that a scheduler hiccup does not set the median, few enough that the
# probes stay a small part of a launch.
PROBE_S = 0.25
PROBE_CALLS = (3, 20)


def probe_sample(c: Case, prof: ComputeProfile) -> Sample:
    """The row of ``prof`` for the op ``executor.pace`` probes in a run of ``c``."""
    kind, q, kv, heads = reference_block(get_model(c.model), c.resolution)
    for s in prof.samples:
        if (s.op, s.variant, s.q_tokens, s.kv_tokens, s.heads) == ("block", kind, q, kv, heads):
            return s
    raise UserError(f"the compute profile of {c.model} has no whole-image {kind} block at "
                    f"{c.resolution} px to compare the pace probe with; collect it again")


def probe_calls(c: Case, prof: ComputeProfile) -> int:
    """Probe calls that fill about ``PROBE_S`` seconds at the profile's speed."""
    per = probe_sample(c, prof).median_s
    return max(PROBE_CALLS[0], min(PROBE_CALLS[1], math.ceil(PROBE_S / per)))


def probe_pace(c: Case, probes: list[list[dict]], prof: ComputeProfile) -> float:
    """The pace of one launch of ``c``: per rank, the mean of its probe before and after the
    runs (``probes``: per rank, ``executor.pace.probe``'s results) over the profile's time of
    the same op, on the clock the profile was timed on; of the ranks, the slowest (the ranks
    wait for each other, so the run goes at the slowest's pace). Dimensionless: 1.0 is the
    profile's speed, 1.2 a launch 20 % slower."""
    ref = probe_sample(c, prof).median_s
    clock = "wall_s" if prof.meta.get("clock") == "wall" else "thread_s"
    return max(statistics.mean(p[clock] for p in rank) for rank in probes) / ref


def pace_by_probe(c: Case, device: str) -> None:
    """Predict each launch of ``c`` again at the pace its probe measured (``probe_pace``),
    from the profiles that launch was predicted from, keeping the earlier predictions in
    ``c.unpaced``."""
    c.unpaced, c.predicted = c.predicted, []
    for r, probes in enumerate(c.probes):
        compute, link = c.sources[min(r, len(c.sources) - 1)]
        pace = probe_pace(c, probes, ComputeProfile.read(compute[(c.model, c.nproc)]))
        c.paces.append(pace)
        c.prediction = predict_case(c, compute, link, device, scale=pace)
        c.predicted.append(c.prediction.latency_s)
