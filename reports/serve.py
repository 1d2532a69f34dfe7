"""``python -m reports.serve``: the serving planner with an HTML report.

Takes every ``sim.serve`` flag plus ``--report FILE``, prints what ``sim.serve`` prints (its
JSON with ``--json``), and writes the report: the ranked splits; SLO attainment against
arrival rate for the first rows (each run again on the same seeded stream at rates around the
capacities); the latency CDF per class, the replicas' timeline (its first requests) and, with
``--price``, the Pareto front of cost per good image against P99 latency, all at ``--rate``
(or, without it, at 90 % of the first row's capacity, as the report says).

Example::

    python -m reports.serve --model pixart --gpu l40 --gpus 8 --link pcie \\
        --mix 1024:0.7,2048:0.3 --slo 1.5x --rate 0.65 --price 2 --report serve.html
"""

from __future__ import annotations

import argparse
import math

from sim import serve
from sim.cli import print_json, run_main
from sim.errors import UserError
from sim.outputs import check_outputs, write_outputs
from sim.serve_metrics import summarize
from sim.serve_text import split_config_text, write_timeline

# Candidates drawn in the attainment figure (the first rows with a capacity).
CURVES = 6
# Arrival rates of the attainment figure, as fractions of the largest capacity drawn.
RATE_FRACTIONS = (0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.35, 1.5)
# Requests drawn in the timeline (the first ones to arrive): enough to see the queues form,
# few enough for a light page.
TIMELINE_REQUESTS = 300


def build_parser() -> argparse.ArgumentParser:
    """``sim.serve``'s flags plus ``--report``."""
    p = serve.build_parser("python -m reports.serve")
    p.add_argument("--report", required=True, metavar="FILE",
                   help="write an interactive HTML report (Plotly, opens offline)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:  # plotly is an optional extra: without it, one line before any work
        from reports.serve_report import Bar, Curve, Point, write_serve_report
    except ImportError:
        raise UserError("reports need plotly: pip install 'ditsim[reports]'") from None
    check_outputs([("--report", args.report), ("--trace", args.trace)])
    plan = serve.plan_pool(args)
    model, names, ranked = plan.model, plan.names, plan.ranked

    caps = [c for c in ranked if c.capacity]
    top = caps[:CURVES]
    ref = max((c.capacity or 0.0 for c in top), default=0.0) or plan.rate or \
        model.trace_rate or 0.0
    curves = []
    if ref > 0:
        rates = [ref * f for f in RATE_FRACTIONS]
        for c in top or ranked[:CURVES]:
            att = [summarize(model.run(c.split, r), names).overall["attainment"]
                   for r in rates]
            curves.append(Curve(f"{c.split.label()} {c.split.router_label(names)}", rates,
                                att, c.capacity))

    # The run the CDF, the timeline and the Pareto points describe.
    if plan.rate is not None or args.replay:
        at, where = plan.rate, (f"at {plan.rate:g} req/s" if plan.rate is not None
                                else "the replayed trace")
    elif caps:
        at = 0.9 * (caps[0].capacity or 0.0)
        where = f"at {at:.3g} req/s (90 % of the first row's capacity; give --rate to choose)"
    else:
        raise UserError("nothing to draw: no split has a capacity and no --rate was given")
    first = ranked[0]
    run = plan.timeline if plan.timeline is not None else model.run(first.split, at)
    lat = {n: [s.latency_s for s in run.served if s.request.cls == c and not s.dropped]
           for c, n in enumerate(names)}
    lat = {n: v for n, v in lat.items() if v}
    slo_s = dict(zip(names, plan.slo))
    points = None
    if args.price is not None:
        points = []
        for i, c in enumerate(ranked[:args.top]):
            summary = plan.at_rate.get(i) or summarize(model.run(c.split, at), names,
                                                       args.price)
            p99 = summary.overall["latency_s"]["p99"]
            if summary.cost_per_1000_good is not None and p99 is not None and \
                    math.isfinite(p99):
                points.append(Point(f"{c.split.label()} {c.split.router_label(names)}", p99,
                                    summary.cost_per_1000_good))
    reps = first.split.replicas()
    labels = [f"r{i} {g.gpus} GPU{'s' if g.gpus > 1 else ''} {cfg.label()}"
              for i, ((gi, cfg), g) in enumerate(zip(reps, [first.split.groups[gi]
                                                             for gi, _ in reps]))]
    origin = run.start_s
    shown = sorted((s for s in run.served if not s.dropped),
                   key=lambda s: s.request.arrival_s)[:TIMELINE_REQUESTS]
    bars = [Bar(labels[s.replica], s.start_s - origin, s.finish_s - origin,
                names[s.request.cls],
                f"request {s.request.index} ({names[s.request.cls]}): arrived "
                f"{s.request.arrival_s - origin:.2f} s, waited {s.wait_s:.2f} s, served "
                f"{s.service_s:.2f} s{'' if s.good else ', missed its SLO'}")
            for s in shown]

    columns = ["#", "split", "router", "capacity req/s", "bound req/s"]
    if plan.at_rate:
        columns += ["within SLO %", "P99 s", "goodput req/s"] + \
            (["cost per 1k good"] if args.price is not None else [])
    rows = []
    for i, c in enumerate(ranked):
        row = [i + 1, split_config_text(c.split), c.split.router_label(names),
               c.capacity if c.capacity is not None else "-", c.bound]
        if plan.at_rate:
            s = plan.at_rate.get(i)
            o = s.overall if s else None
            row += [100 * o["attainment"] if o else "-",
                    o["latency_s"]["p99"] if o and o["latency_s"]["p99"] is not None else "-",
                    o["goodput_rps"] if o else "-"]
            if args.price is not None:
                row.append(s.cost_per_1000_good if s and s.cost_per_1000_good is not None
                           else "-")
        rows.append(row)
    r = plan.result
    intro = (f"{r['model']} on {r['gpus']} x {r['gpu']} ({r['link']}); classes "
             f"{', '.join(f'{n} ({cl.weight:.0%})' for n, cl in zip(names, plan.classes))}; "
             f"SLO {', '.join(f'{n} {s:.3g} s' for n, s in slo_s.items())}; target "
             f"{args.target:.0%} within SLO; {r['requests']} requests per run, seed "
             f"{r['seed']}; {r['splits_searched']} split x router candidates, "
             f"{r['pool_runs']} pool runs.")
    write_outputs([
        ("--trace", args.trace if plan.timeline is not None else None,
         lambda p: write_timeline(plan.timeline, names, p)),
        ("--report", args.report, lambda p: write_serve_report(
            p, "ditsim serve", intro, columns, rows, curves, args.target, plan.rate, lat,
            slo_s, f"{split_config_text(first.split)}, {where}", points, "--price's currency",
            at if at is not None else (model.trace_rate or 0.0), bars, labels,
            f"{split_config_text(first.split)}, {where}: the first {len(shown)} requests"))])
    if args.json:
        print_json(plan.result)
    else:
        serve.print_plan(plan)
    return 0


if __name__ == "__main__":
    run_main(main)
