"""Metrics of a simulated serving run: latency and queueing-delay quantiles, SLO attainment,
goodput, throughput per GPU, GPU busy and idle-while-queued fractions, cost per good image.

Quantiles use ``sim.stats.quantile`` (linear between ranks). Dropped requests count in
attainment (as misses) but have no latency. Rates are per second of the run, from the first
arrival to the last finish.

Torch-free.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sim.serving import Served, ServeRun
from sim.stats import quantile

QUANTILES = (0.5, 0.9, 0.95, 0.99)


def _quantiles(values: list[float]) -> dict[str, float | None]:
    xs = sorted(values)
    return {f"p{round(q * 100)}": (quantile(xs, q) if xs else None) for q in QUANTILES}


def group_metrics(served: list[Served], window_s: float) -> dict:
    """Counts, quantiles (seconds), attainment (0..1) and goodput (good requests per second
    of ``window_s``) of one group of requests."""
    done = [s for s in served if not s.dropped]
    good = sum(1 for s in served if s.good)
    return {
        "requests": len(served),
        "served": len(done),
        "dropped": len(served) - len(done),
        "within_slo": good,
        "attainment": good / len(served) if served else None,
        "goodput_rps": good / window_s if window_s > 0 else None,
        "latency_s": _quantiles([s.latency_s for s in done]),
        "mean_latency_s": sum(s.latency_s for s in done) / len(done) if done else None,
        "queueing_s": _quantiles([s.wait_s for s in done]),
        "mean_queueing_s": sum(s.wait_s for s in done) / len(done) if done else None,
    }


@dataclass
class RunSummary:
    """Every number of a run (``as_dict`` for JSON)."""

    overall: dict
    per_class: dict[str, dict]
    window_s: float
    gpus: int
    busy_fraction: float  # GPU-seconds busy / (GPUs x window)
    idle_while_queued_fraction: float  # idle GPU-seconds while a request waited / same
    images_per_s_per_gpu: float
    cost_per_1000_good: float | None  # in the unit of --price, per 1,000 images within SLO
    replica_busy_fraction: list[float]
    batches: dict  # batches served: count, mean size, histogram {size: batches}

    def as_dict(self) -> dict:
        return {"overall": self.overall, "per_class": self.per_class,
                "window_s": self.window_s, "gpus": self.gpus,
                "gpu_busy_fraction": self.busy_fraction,
                "idle_while_queued_fraction": self.idle_while_queued_fraction,
                "images_per_s_per_gpu": self.images_per_s_per_gpu,
                "cost_per_1000_good": self.cost_per_1000_good,
                "replica_busy_fraction": self.replica_busy_fraction,
                "batches": self.batches}


def summarize(run: ServeRun, names: list[str], price_per_gpu_hour: float | None = None
              ) -> RunSummary:
    """Metrics of ``run``; ``names`` are the class names by index; ``price_per_gpu_hour``
    (any currency) gives the cost of the run's GPU time per 1,000 requests within SLO."""
    window = run.end_s - run.start_s
    gpus = sum(run.replica_gpus)
    per_class = {name: group_metrics([s for s in run.served if s.request.cls == c], window)
                 for c, name in enumerate(names)}
    gpu_s = gpus * window
    busy = sum(b * g for b, g in zip(run.busy_s, run.replica_gpus))
    served = sum(1 for s in run.served if not s.dropped)
    good = sum(1 for s in run.served if s.good)
    cost = None
    if price_per_gpu_hour is not None and good:
        cost = price_per_gpu_hour * gpu_s / 3600 / good * 1000
    return RunSummary(
        overall=group_metrics(run.served, window), per_class=per_class, window_s=window,
        gpus=gpus, busy_fraction=busy / gpu_s if gpu_s > 0 else 0.0,
        idle_while_queued_fraction=run.idle_while_queued_gpu_s / gpu_s if gpu_s > 0 else 0.0,
        images_per_s_per_gpu=served / gpu_s if gpu_s > 0 else 0.0,
        cost_per_1000_good=cost,
        replica_busy_fraction=[b / window if window > 0 else 0.0 for b in run.busy_s],
        batches=batch_stats(run.served))


def batch_stats(served: list[Served]) -> dict:
    """The batches ``served`` ran in (requests that started together on one replica): how
    many, their mean size (requests per batch) and a histogram {size: batches}."""
    sizes = Counter((s.replica, s.start_s) for s in served if not s.dropped)
    hist = Counter(sizes.values())
    n = len(sizes)
    return {"count": n, "mean_size": sum(sizes.values()) / n if n else None,
            "histogram": {str(k): hist[k] for k in sorted(hist)}}


def idle_while_queued_gpu_s(served: list[Served], replica_gpus: list[int]) -> float:
    """GPU-seconds that GPUs sat idle while some request waited in a queue (arrived, not yet
    started), from a timeline's arrival, start and finish times (seconds): what
    ``simulate_pool`` integrates as it runs, for a timeline measured elsewhere
    (``executor.serve``). Dropped requests never wait in a queue."""
    events: list[tuple[float, int, int]] = []  # (time, change in queued, change in busy GPUs)
    for s in served:
        if s.dropped:
            continue
        g = replica_gpus[s.replica]
        events += [(s.request.arrival_s, 1, 0), (s.start_s, -1, g), (s.finish_s, 0, -g)]
    events.sort(key=lambda e: e[0])
    total = sum(replica_gpus)
    queued = busy = 0
    last = events[0][0] if events else 0.0
    out = 0.0
    for t, dq, db in events:
        if queued > 0:
            out += (t - last) * (total - busy)
        queued += dq
        busy += db
        last = t
    return out
