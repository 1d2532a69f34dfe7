"""Text and CSV output of ``python -m sim.serve``: the plan as a table with its why line,
per-class metrics, and the request timeline (``--trace``). Torch-free."""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Callable
from pathlib import Path

from sim.arrivals import RequestClass
from sim.capacity import REL_TOL, Candidate, ServeModel, Split
from sim.replicas import ServiceTable
from sim.serve_metrics import RunSummary
from sim.serving import ServeRun


def write_timeline(run: ServeRun, names: list[str], path: Path) -> None:
    """One row per request: id, class, arrival, replica (-1 dropped), start, finish,
    deadline, latency, within SLO."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["request", "class", "arrival_s", "replica", "start_s", "finish_s",
                    "deadline_s", "latency_s", "within_slo"])
        # repr: the shortest text that reads back as the same float (exact round trip).
        for s in run.served:
            w.writerow([s.request.index, names[s.request.cls], repr(s.request.arrival_s),
                        s.replica, "" if s.dropped else repr(s.start_s),
                        "" if s.dropped else repr(s.finish_s), repr(s.deadline_s),
                        "" if s.dropped else repr(s.latency_s), int(s.good)])


def split_config_text(split: Split) -> str:
    """``1x4 cfg2 x ring2 + 4x1 serial``: the split with each group's configuration."""
    return " + ".join(f"{g.count}x{g.gpus} {g.config.label()}" for g in split.groups)


def finite_or_none(v: float) -> float | None:
    """``v``, or ``None`` for an infinite latency (a configuration that cannot run a class),
    which strict JSON cannot carry."""
    return v if math.isfinite(v) else None


def _f(v: float | None, fmt: str = ".2f") -> str:
    """``v`` formatted, ``-`` when missing."""
    return "-" if v is None else format(v, fmt)


def class_table(summary: RunSummary) -> str:
    """Per class and overall: attainment, latency and queueing quantiles."""
    head = (f"{'class':<10}{'requests':>9}{'dropped':>8}{'in SLO':>8}{'goodput/s':>10}"
            f"{'lat P50':>9}{'P90':>8}{'P95':>8}{'P99':>8}{'queue P50':>10}{'P90':>8}"
            f"{'P95':>8}{'P99':>8}")
    lines = [head, "-" * len(head)]
    rows = list(summary.per_class.items()) + [("all", summary.overall)]
    for name, m in rows:
        lat, q = m["latency_s"], m["queueing_s"]
        lines.append(f"{name:<10}{m['requests']:>9}{m['dropped']:>8}"
                     f"{_f(m['attainment'], '.1%'):>8}{_f(m['goodput_rps'], '.3f'):>10}"
                     f"{_f(lat['p50']):>9}{_f(lat['p90']):>8}{_f(lat['p95']):>8}"
                     f"{_f(lat['p99']):>8}{_f(q['p50']):>10}{_f(q['p90']):>8}"
                     f"{_f(q['p95']):>8}{_f(q['p99']):>8}")
    return "\n".join(lines)


def _fastest(split: Split, table: ServiceTable, c: int) -> tuple[float, int]:
    """Class ``c``'s isolated latency on the split's fastest replica, and its width."""
    return min((table.latency(cfg, c), cfg.gpus) for _, cfg in split.replicas())


def why(ranked: list[Candidate], model: ServeModel, names: list[str], target: float,
        top: int, at_rate: Callable[[Split], RunSummary] | None = None,
        rate: float | None = None) -> str:
    """One line on why the first split wins: its margin over the next split, and the
    trade-off against the split with the fastest replicas (latency alone vs throughput);
    with ``at_rate`` (the run of a split at ``rate`` requests per second), how the two
    compare at that rate."""
    best = ranked[0]
    if not best.capacity:
        return (f"no split reaches {target:.0%} within SLO even unloaded: loosen --slo or "
                f"--target")
    table = model.table
    done = [c for c in ranked if c.capacity is not None]
    parts = [f"{best.capacity:.3g} req/s with {target:.0%} within SLO"]
    other = next((c for c in ranked[1:] if c.split.label() != best.split.label()), None)
    if other is not None and other.capacity:
        gap = best.capacity / other.capacity - 1
        parts.append(f"{gap:.0%} above the next split, {other.split.label()}"
                     if gap > REL_TOL else
                     f"equal, within the bisection's {REL_TOL:.0%}, to the next split, "
                     f"{other.split.label()}")
    c0 = max(range(len(names)), key=lambda c: table.classes[c].weight)
    lat_b, k_b = _fastest(best.split, table, c0)
    # The split whose fastest replica is fastest alone: what one would pick for latency.
    quick = min(ranked, key=lambda c: (_fastest(c.split, table, c0), -(c.capacity or 0)))
    lat_q, k_q = _fastest(quick.split, table, c0)
    if lat_q < lat_b * (1 - 0.005):
        n = min(top, len(done))
        cap = (f"only {quick.capacity:.3g} req/s" if quick.capacity is not None else
               f"under {done[n - 1].capacity:.3g} req/s (row {n}'s capacity)")
        parts.append(f"one {k_q}-GPU replica serves a {names[c0]} request faster alone "
                     f"({lat_q:.2f} s vs {lat_b:.2f} s on {k_b} GPU{'s' if k_b > 1 else ''}) "
                     f"but {quick.split.label()} sustains {cap}: narrower replicas queue "
                     f"less under load")
        if at_rate is not None and rate is not None:
            b, q = at_rate(best.split).overall, at_rate(quick.split).overall
            parts.append(f"at {rate:g} req/s {quick.split.label()} has "
                         f"{_f(q['attainment'], '.0%')} within SLO (P99 "
                         f"{_f(q['latency_s']['p99'])} s), {best.split.label()} "
                         f"{_f(b['attainment'], '.0%')} (P99 {_f(b['latency_s']['p99'])} s)")
    else:
        n_b = sum(g.count for g in best.split.groups if g.gpus == k_b)
        parts.append(f"its {k_b}-GPU replica{'s are' if n_b > 1 else ' is'} also the fastest "
                     f"alone for {names[c0]} ({lat_b:.2f} s)")
    return "; ".join(parts)


def print_text(args: argparse.Namespace, result: dict, ranked: list[Candidate],
               at_rate: dict[int, RunSummary], model: ServeModel, names: list[str],
               classes: list[RequestClass], refs: list[tuple[float, int]], slo: list[float],
               usable: dict, searched: int, pruned: int, missed: int, elapsed: float,
               run_at: Callable[[Split], RunSummary] | None = None) -> None:
    """The human-readable plan; ``run_at`` gives a split's run at ``--rate`` for the why
    line."""
    r = result
    mix = ", ".join(f"{n} ({cl.weight:.0%})" for n, cl in zip(names, classes))
    arrivals = ("replayed trace" if args.replay else
                "Poisson arrivals" if args.arrivals == "poisson" else
                f"gamma arrivals (CV {args.cv:g})")
    nodes = f", {r['nodes']} nodes" if r["nodes"] > 1 else ""
    print(f"{r['model']} on {r['gpus']} x {r['gpu']} ({r['link']}{nodes}); classes {mix}; "
          f"{arrivals}, {r['requests']} requests, seed {r['seed']}")
    slos = ", ".join(f"{n} {s:.3g} s" + (f" ({s / ref:.3g} x {ref:.3g} s on {k} GPU"
                                         f"{'s' if k > 1 else ''})" if cl["slo_given"][-1:] == "x"
                                         else "")
                     for n, s, (ref, k), cl in zip(names, slo, refs, r["classes"]))
    print(f"SLO: {slos}; target {r['target']:.0%} within SLO; queue {r['queue']}, "
          f"{'admission control' if r['admission'] else 'no admission control'}"
          + (f"; same-class batches of up to {r['max_batch']} (limits tried: "
             f"{', '.join(str(c) for c in sorted({c.split.max_batch for c in ranked}))})"
             if r["max_batch"] > 1 else ""))
    print("\nreplica widths (configuration chosen for the mix; isolated latency per class):")
    for k, cfg in sorted(usable.items()):
        lats = "  ".join(f"{n} {_f(finite_or_none(model.table.latency(cfg, c)), '.3f')} s"
                         for c, n in enumerate(names))
        print(f"  {k:>3} GPU{'s' if k > 1 else ' '}  {cfg.label():<34}{lats}")
    if "replica_pace" in r:
        def pace_text(p: float | dict[str, float]) -> str:
            if isinstance(p, dict):
                return "/".join(f"{n} x{v:.4g}" for n, v in p.items())
            return f"x{p:.4g}"
        print("replica pace (each replica's service times are the ones above times its pace): "
              + ", ".join(f"replica {i} {pace_text(p)}" for i, p in enumerate(r["replica_pace"])))
    print()
    if not ranked:
        print("no split to evaluate")
        return
    best = ranked[0]
    if best.capacity is not None:
        print(f"recommended: {split_config_text(best.split)}, router "
              f"{best.split.router_label(names)}  ->  capacity {best.capacity:.3g} req/s at "
              f"{r['target']:.0%} within SLO")
        print(f"why: {why(ranked, model, names, r['target'], args.top, run_at, args.rate)}")
        print()
    rate_txt = (f"at {args.rate:g} req/s" if args.rate is not None else "replayed")
    head = f"{'#':>3}  {'split':<14}{'router':<36}{'capacity/s':>11}{'bound/s':>9}"
    if at_rate:
        head += (f"  | {rate_txt}: {'in SLO':>7}{'P99 s':>8}{'goodput/s':>10}{'busy':>6}"
                 + (f"{'cost/1k':>9}" if args.price else ""))
    lines = [head, "-" * len(head)]
    for i, c in enumerate(ranked[:args.top]):
        row = (f"{i + 1:>3}  {c.split.label():<14}{c.split.router_label(names):<36}"
               f"{_f(c.capacity, '.3g'):>11}{c.bound:>9.3g}")
        if i in at_rate:
            s = at_rate[i]
            o = s.overall
            row += (f"  | {'':{len(rate_txt) + 1}} {_f(o['attainment'], '.1%'):>7}"
                    f"{_f(o['latency_s']['p99']):>8}{_f(o['goodput_rps'], '.3f'):>10}"
                    f"{s.busy_fraction:>6.0%}"
                    + (f"{_f(s.cost_per_1000_good, '.2f'):>9}" if args.price else ""))
        lines.append(row)
    print("\n".join(lines))
    if 0 in at_rate:
        s = at_rate[0]
        print(f"\n#1 {rate_txt}, per class (seconds):")
        print(class_table(s))
        print(f"GPU busy {s.busy_fraction:.1%}, idle while requests queued "
              f"{s.idle_while_queued_fraction:.1%}, {s.images_per_s_per_gpu:.3f} images/s "
              f"per GPU" + (f", {s.cost_per_1000_good:.2f} per 1,000 images within SLO"
                            if s.cost_per_1000_good is not None else "")
              + (f"; {s.batches['count']} batches, mean {s.batches['mean_size']:.2f} requests"
                 if r["max_batch"] > 1 and s.batches["count"] else ""))
    kinds = "split x router x batch limit" if r["max_batch"] > 1 else "split x router"
    print(f"\n{searched} {kinds} candidates in {elapsed:.1f} s: "
          f"{searched - pruned - missed} bisected, {pruned} skipped by the throughput "
          f"bound, {missed} by one run missing the target at the last row's capacity; "
          f"{r['pool_runs']} pool runs, {r['request_simulations']} per-request simulations.")
