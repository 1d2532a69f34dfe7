"""``python -m sim.serve``: plan a GPU pool for a stream of requests under a latency SLO.

Example::

    python -m sim.serve --model pixart --gpu l40 --gpus 8 --link pcie \\
        --mix 1024:0.7,2048:0.3 --slo 1.5x --rate 0.5

Without ``--replicas`` it searches pool splits (replica widths x configurations x router)
and ranks them by capacity: the highest arrival rate at which ``--target`` of the requests
finish within their SLO. With ``--replicas`` it evaluates that one split; with ``--rate``
(or ``--replay``) it also reports the run at that rate per class. The pieces: request streams
``sim.arrivals``, replicas and isolated latencies ``sim.replicas``, the queueing simulation
``sim.serving``, metrics ``sim.serve_metrics``, capacity and search ``sim.capacity``, text
and CSV output ``sim.serve_text``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from sim.arrivals import class_names, parse_mix, read_trace, unit_stream
from sim.capacity import (
    Candidate,
    ServeModel,
    Split,
    enumerate_splits,
    resolve_groups,
    search_splits,
)
from sim.cli import (
    add_workload_args,
    at_least,
    calibration_from_args,
    check_finite,
    cluster_from_args,
    cost_spec_from_args,
    finite,
    parse_int_list,
    parse_resolution,
    parser,
    positive,
    print_json,
    run_main,
    workload_from_args,
)
from sim.config import ParallelConfig
from sim.errors import UserError
from sim.outputs import check_outputs, write_outputs
from sim.progress import Progress
from sim.replicas import Cluster, ReplicaGroup, ServiceTable, parse_replicas
from sim.serve_metrics import RunSummary, summarize
from sim.serve_text import finite_or_none, print_text, write_timeline
from sim.serving import QUEUES, ROUTERS, ServeRun

DEFAULT_WIDTH_LIMIT = 8  # widest replica searched by default: one usual node


def build_parser(prog: str = "python -m sim.serve") -> argparse.ArgumentParser:
    """The command line of ``sim.serve`` (``prog``: the name in its usage line, for commands
    that take the same flags, such as ``reports.serve``)."""
    p = parser(prog,
               "Plan a GPU pool serving a stream of requests under a latency SLO: split into "
               "replicas, configurations, router; capacity at a target SLO attainment.")
    add_workload_args(p)
    p.add_argument("--mix", default=None, metavar="SIZE[@STEPS]:WEIGHT,...",
                   help="request classes and their shares, e.g. 1024:0.7,2048:0.3 (default: "
                        "one class, --resolution and --steps)")
    p.add_argument("--slo", default="1.5x", metavar="SLO",
                   help="SLO in seconds or Kx (K times the class's isolated latency on the "
                        "narrowest replica that runs it, one GPU when it fits); per class as "
                        "CLASS:SLO,... with an optional bare default first")
    p.add_argument("--target", type=float, default=0.9,
                   help="fraction of requests within SLO that capacity is defined by")
    p.add_argument("--rate", type=float, default=None,
                   help="arrival rate, requests per second: report every candidate's run at it")
    p.add_argument("--arrivals", default="poisson", choices=["poisson", "gamma"],
                   help="arrival process (gamma: inter-arrival coefficient of variation --cv)")
    p.add_argument("--cv", type=float, default=2.0,
                   help="coefficient of variation of gamma inter-arrival times (1 is Poisson)")
    p.add_argument("--replay", default=None, metavar="CSV",
                   help="replay a trace: rows arrival_s,model,width,height,steps[,slo_s] "
                        "(classes come from it; --rate time-scales it)")
    p.add_argument("--requests", type=int, default=2000, help="requests per simulated run")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrival stream")
    p.add_argument("--replicas", default=None, metavar="COUNTxGPUS[:CONFIG],...",
                   help="evaluate this split only, e.g. 4x1,1x4 or "
                        "1x4:pipefusion=4/patches=4/warmup=1,4x1 (default: search splits)")
    p.add_argument("--replica-pace", default=None, metavar="P1,P2,...",
                   help="with --replicas: each replica's service times are the simulated ones "
                        "times its pace, one positive factor per replica in --replicas order "
                        "(e.g. a real replica's measured reference time over its predicted "
                        "one; executor.serve reports the reference times), or per class: "
                        "384=1.02/512=1.1 for a replica; default: 1 for all")
    p.add_argument("--widths", default=None,
                   help="replica widths (GPUs) the search combines, comma-separated (default: "
                        f"powers of two up to {DEFAULT_WIDTH_LIMIT} that pack into the nodes)")
    p.add_argument("--router", default=None,
                   help=f"router(s), comma-separated, from {', '.join(ROUTERS)} (default: all "
                        f"in a search, lwl for --replicas)")
    p.add_argument("--pools", default=None, metavar="CLASS:GPUS,...",
                   help="with --replicas and --router pools: the replica width serving each "
                        "class, e.g. 2048:4,1024:1")
    p.add_argument("--queue", default="fcfs", choices=list(QUEUES),
                   help="queue discipline of each replica")
    p.add_argument("--admission", action="store_true",
                   help="drop a request at arrival when its predicted finish misses its SLO")
    p.add_argument("--max-batch", type=int, default=1, metavar="B",
                   help="serve up to B queued requests of the same class as one batch (default "
                        "1: one at a time); a search also tries the powers of two below B, "
                        "and a replica forms no batch larger than fits in its memory")
    p.add_argument("--warmup", default="1",
                   help="PipeFusion/DistriFusion warmup step counts the configurations may use")
    p.add_argument("--price", type=float, default=None, metavar="PER_GPU_HOUR",
                   help="price of one GPU-hour (any currency): cost per 1,000 images within SLO")
    p.add_argument("--top", type=int, default=10, help="rows of the ranking to print")
    p.add_argument("--trace", default=None, metavar="FILE",
                   help="write the request timeline of the run at --rate (or the replay) as CSV")
    p.add_argument("--no-capacity", action="store_true",
                   help="with --replicas and --rate (or --replay): only the run at that rate, "
                        "no capacity bisection")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def parse_slo(text: str, names: list[str]) -> list[str]:
    """Each class's SLO text from ``--slo``: ``S`` seconds or ``Kx`` for every class, or
    ``CLASS:VALUE,...`` per class (a bare value first is the default of classes not named).
    Checked before any simulation; ``resolve_slo`` turns them into seconds."""
    default: str | None = None
    per: dict[str, str] = {}
    for i, item in enumerate(text.split(",")):
        name, colon, value = item.strip().rpartition(":")
        if not colon:
            if i > 0 or default is not None:
                raise UserError(f"--slo: a value without a class may come only first, as "
                                f"the default; got '{item}'")
            default = value
        elif name not in names:
            raise UserError(f"--slo: unknown class '{name}'; the classes are "
                            f"{', '.join(names)}")
        else:
            per[name] = value
    out = []
    for name in names:
        value = per.get(name, default)
        if value is None:
            raise UserError(f"--slo gives no SLO for class {name}; name it or give a default "
                            f"first (e.g. --slo 2x,{name}:30)")
        v = value.strip().lower()
        try:
            number = float(v[:-1] if v.endswith(("x", "s")) else v)
        except ValueError:
            raise UserError(f"--slo: '{value}' is neither seconds nor Kx (e.g. 12 or "
                            f"1.5x)") from None
        positive(number, f"--slo of class {name}")
        out.append(v)
    return out


def parse_pace(text: str, replicas: int, names: list[str]) -> tuple[tuple[float, ...], ...]:
    """``--replica-pace 1.1,0.95`` -> per replica (``replicas`` of them, in ``--replicas``
    order) one positive, finite factor per request class (``names`` order). A replica's entry
    is one factor for every class, or one per class named ``CLASS=P`` and joined by ``/``
    (``384=1.02/512=1.10``), for replicas whose error differs by shape."""
    out = []
    for item in text.split(","):
        if "=" in item:
            got: dict[str, float] = {}
            for part in item.split("/"):
                name, _, value = part.partition("=")
                name = name.strip()
                if name not in names:
                    raise UserError(f"--replica-pace: unknown class '{name}' in '{item.strip()}'"
                                    f"; the classes are {', '.join(names)}")
                got[name] = _pace_value(value, item)
            missing = [n for n in names if n not in got]
            if missing:
                raise UserError(f"--replica-pace: '{item.strip()}' gives no factor for class "
                                f"{', '.join(missing)}; name every class or give one factor")
            out.append(tuple(got[n] for n in names))
        else:
            out.append((_pace_value(item, item),) * len(names))
    if len(out) != replicas:
        raise UserError(f"--replica-pace gives {len(out)} factor(s) for {replicas} replica(s) "
                        f"in --replicas: give one per replica, in --replicas order")
    return tuple(out)


def _pace_value(text: str, item: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--replica-pace: '{item.strip()}' is not a number; give one positive "
                        f"factor per replica (e.g. 1.1,0.95), or per class (384=1.02/512=1.1)"
                        ) from None
    positive(value, "--replica-pace")
    return value


def resolve_slo(texts: list[str], refs: list[tuple[float, int]]) -> list[float]:
    """SLO per class in seconds: ``Kx`` times the class's reference latency (``refs``: its
    seconds and the width it is taken on), else seconds."""
    return [float(v[:-1]) * ref if v.endswith("x") else float(v.rstrip("s"))
            for v, (ref, _) in zip(texts, refs)]


def parse_names(text: str | None, flag: str, choices: tuple[str, ...]) -> tuple[str, ...] | None:
    """``"jsq,lwl"`` -> ("jsq", "lwl"), each checked against ``choices``."""
    if text is None:
        return None
    out = tuple(v.strip() for v in text.split(","))
    for v in out:
        if v not in choices:
            raise UserError(f"{flag}: unknown '{v}'; choose from {', '.join(choices)}")
    return out


def batch_caps(max_batch: int) -> list[int]:
    """The batch limits a search tries for ``--max-batch``: 1, the powers of two below it,
    and itself (a larger batch amortises more but holds the head request longer, so the best
    limit depends on load and SLO)."""
    caps, k = [], 1
    while k < max_batch:
        caps.append(k)
        k *= 2
    return caps + [max_batch]


def default_widths(cluster: Cluster) -> list[int]:
    """Powers of two up to ``DEFAULT_WIDTH_LIMIT`` (and the pool) that pack into the nodes."""
    out, k = [], 1
    while k <= min(cluster.gpus, DEFAULT_WIDTH_LIMIT):
        if cluster.fits(k):
            out.append(k)
        k *= 2
    return out


def _pools_assignment(text: str | None, names: list[str],
                      groups: tuple[ReplicaGroup, ...]) -> tuple[int, ...]:
    """Group index per class from ``--pools CLASS:GPUS,...`` (each width must be a group's)."""
    if text is None:
        raise UserError("--router pools with --replicas needs --pools CLASS:GPUS,... (the "
                        "replica width serving each class)")
    widths = [g.gpus for g in groups]
    if len(set(widths)) != len(widths):
        raise UserError("--pools names groups by width: give --replicas one entry per width")
    got: dict[str, int] = {}
    for item in text.split(","):
        name, colon, k = item.strip().rpartition(":")
        if not colon or name not in names:
            raise UserError(f"--pools: unknown class '{name or item}'; the classes are "
                            f"{', '.join(names)}")
        try:
            got[name] = widths.index(int(k))
        except ValueError:
            raise UserError(f"--pools {item}: no replica group of {k} GPUs in --replicas") \
                from None
    missing = [n for n in names if n not in got]
    if missing:
        raise UserError(f"--pools gives no replicas to class {', '.join(missing)}")
    return tuple(got[n] for n in names)


def batch_table(table: ServiceTable, cfg: ParallelConfig, names: list[str],
                max_batch: int) -> dict:
    """For ``--json`` with ``--max-batch`` above 1: per class, the largest batch a replica
    running ``cfg`` forms (below ``max_batch`` when a larger one does not fit in its memory,
    then ``memory_capped``) and the engine's latency of each batch size up to it, seconds."""
    if max_batch <= 1:
        return {}
    limit = {n: table.batch_limit(cfg, c, max_batch) for c, n in enumerate(names)}
    return {"batch_limit": limit,
            "batch_memory_capped": {n: 0 < k < max_batch for n, k in limit.items()},
            "batch_latency_s": {n: [table.batch_latency(cfg, c, b) for b in range(1, k + 1)]
                                for c, (n, k) in enumerate(limit.items())}}


@dataclass
class ServePlan:
    """Everything ``sim.serve`` works out for one command line: the JSON result, the ranked
    candidates with their runs at ``--rate`` (``at_rate``, by row), the serving model (latency
    table, SLOs, stream), the first row's run at the rate (``timeline``), and what the text
    output prints."""

    args: argparse.Namespace
    result: dict
    ranked: list[Candidate]
    at_rate: dict[int, RunSummary]
    model: ServeModel
    names: list[str]
    classes: list
    refs: list[tuple[float, int]]
    slo: list[float]
    usable: dict
    splits: int
    pruned: int
    missed: int
    elapsed: float
    rate: float | None
    timeline: ServeRun | None


def plan_pool(args: argparse.Namespace) -> ServePlan:
    """Run ``sim.serve``'s search (or its one split) for parsed flags ``args``; raises
    ``UserError`` on bad input. Writes nothing and prints only progress on stderr."""
    t0 = time.perf_counter()
    wl = workload_from_args(args)
    gpu, _ = cluster_from_args(args)
    cluster = Cluster(gpu, args.gpus, args.link, args.nodes, args.inter_node, args.link_profile,
                      args.nccl, args.host_cpu, args.ring_overlap)
    finite(args.target, "--target", low=1e-9, high=1.0)
    if args.target <= 0:
        raise UserError(f"--target must be above 0, got {args.target:g}")
    if args.rate is not None:
        positive(args.rate, "--rate")
    positive(args.cv, "--cv")
    at_least(args.requests, 1, "--requests")
    if args.max_batch < 1:
        raise UserError(f"--max-batch must be at least 1 (1 serves one request at a time), "
                        f"got {args.max_batch}")
    at_least(args.top, 1, "--top")
    if args.price is not None:
        positive(args.price, "--price")
    warmups = tuple(sorted(set(parse_int_list(args.warmup, "--warmup") or ())))
    if not warmups or min(warmups) < 0:
        raise UserError(f"--warmup must list step counts of at least 0, got '{args.warmup}'")
    routers = parse_names(args.router, "--router", ROUTERS)

    if args.replay:
        if args.mix is not None:
            raise UserError("--mix and --replay both give the classes; the trace's rows are "
                            "the mix, so drop --mix")
        classes, stream = read_trace(args.replay, args.model)
        span = stream[-1].arrival_s - stream[0].arrival_s
        trace_rate = len(stream) / span if span > 0 else None
    else:
        h, w = parse_resolution(args.resolution)
        classes = parse_mix(args.mix, w, h, wl.steps)
        stream = unit_stream(classes, args.requests,
                             1.0 if args.arrivals == "poisson" else args.cv, args.seed)
        trace_rate = None
    names = class_names(classes)
    slo_texts = parse_slo(args.slo, names)
    # Flags that contradict each other are refused before any simulation.
    if args.no_capacity and not (args.replicas and (args.rate is not None or args.replay)):
        raise UserError("--no-capacity needs --replicas and a run to report (--rate or "
                        "--replay)")
    if args.pools and not args.replicas:
        raise UserError("--pools applies to --replicas; a search tries every assignment")
    if args.replicas and routers is not None and len(routers) != 1:
        raise UserError("--replicas evaluates one split: give one --router")
    if args.replica_pace is not None and not args.replicas:
        raise UserError("--replica-pace applies to --replicas (a factor per replica of one "
                        "given split); a search has no fixed replicas")
    spec = cost_spec_from_args(args)
    scale = calibration_from_args(args, wl, gpu, spec)
    table = ServiceTable(wl.model, classes, cluster, wl.dtype, wl.text_encoder, wl.vae, spec,
                         scale, warmups)
    progress = Progress(quiet=args.quiet, t0=t0)  # on stderr: --json on stdout stays clean

    # Replica widths and their configurations.
    if args.replicas:
        fixed = parse_replicas(args.replicas, args.gpus)
        pace = (parse_pace(args.replica_pace, sum(g.count for g in fixed), names)
                if args.replica_pace is not None else None)
        widths = sorted({g.gpus for g in fixed})
        for k in widths:
            cluster.topology(k)  # refuses widths that do not pack into the nodes
    else:
        fixed = None
        pace = None
        widths = parse_int_list(args.widths, "--widths")
        widths = sorted(set(widths)) if widths else default_widths(cluster)
        for k in widths:
            if k < 1 or not cluster.fits(k):
                raise UserError(f"--widths: a replica of {k} GPUs does not pack into "
                                f"{args.nodes} node(s) of {cluster.per_node} GPUs")
    for i, k in enumerate(widths):
        progress("choosing replica configurations", i, len(widths))
        if fixed is None:
            table.best_config(k)
    groups_fixed = resolve_groups(table, fixed) if fixed else None
    width_cfgs = ({g.gpus: g.config for g in groups_fixed} if groups_fixed else
                  {k: table.best_config(k) for k in widths})
    usable = {k: c for k, c in width_cfgs.items() if c is not None}
    if not usable:
        raise UserError("no replica width serves every class (each runs out of memory or "
                        "does not apply to some size); allow wider replicas with --widths")

    refs = [table.reference(c) for c in range(len(classes))]
    slo = resolve_slo(slo_texts, refs)
    for c, name in enumerate(names):
        best_alone = min(table.latency(cfg, c) for cfg in usable.values())
        if slo[c] < best_alone and not (args.replay and all(
                r.slo_s is not None for r in stream if r.cls == c)):
            raise UserError(f"the SLO of class {name} ({slo[c]:.3g} s) is below its isolated "
                            f"latency on every replica width ({best_alone:.3g} s at best): no "
                            f"request of it can meet it; loosen --slo or allow other widths")
    model = ServeModel(table, slo, args.queue, args.admission, stream, trace_rate)
    # The splits to evaluate.
    if groups_fixed:
        router = (routers or ("lwl",))
        assign = (_pools_assignment(args.pools, names, groups_fixed) if router[0] == "pools"
                  else None)
        splits = [Split(groups_fixed, router[0], assign, args.max_batch, pace)]
    else:
        splits = []
        for shape, router, assign in enumerate_splits(args.gpus, sorted(usable), len(classes),
                                                      routers or ROUTERS):
            groups = tuple(ReplicaGroup(n, k, usable[k]) for n, k in shape)
            for cap in batch_caps(args.max_batch):
                splits.append(Split(groups, router, assign, cap))
    if (args.replay and trace_rate is None) or args.no_capacity:
        ranked: list[Candidate] = [Candidate(s, model.bound(s, args.target)) for s in splits]
        pruned = missed = 0
    else:
        ranked, pruned, missed = search_splits(model, splits, args.target, args.top,
                                       lambda d, n: progress("searching splits", d, n))
    progress.end()

    rate = args.rate
    at_rate: dict[int, RunSummary] = {}
    shown = ranked[:args.top]
    timeline: ServeRun | None = None
    if rate is not None or args.replay:
        for i, cand in enumerate(shown):
            run = model.run(cand.split, rate)
            at_rate[i] = summarize(run, names, args.price)
            if i == 0:
                timeline = run
    elapsed = time.perf_counter() - t0

    result = {
        "model": wl.model.name, "gpu": gpu.name, "gpus": args.gpus, "link": args.link,
        "nodes": args.nodes, "target": args.target, "queue": args.queue,
        "admission": args.admission, "rate_rps": rate, "max_batch": args.max_batch,
        "arrivals": "replay" if args.replay else args.arrivals,
        "cv": args.cv if args.arrivals == "gamma" and not args.replay else None,
        "requests": len(stream), "seed": args.seed, "price_per_gpu_hour": args.price,
        "classes": [{"name": n, "width": cl.width, "height": cl.height, "steps": cl.steps,
                     "weight": cl.weight, "slo_s": slo[c], "slo_given": slo_texts[c],
                     "reference_latency_s": refs[c][0],
                     "reference_gpus": refs[c][1]}
                    for c, (n, cl) in enumerate(zip(names, classes))],
        "widths": [{"gpus": k, "config": cfg.as_dict(), "label": cfg.label(),
                    # None: the configuration cannot run that class (size, memory).
                    "isolated_latency_s": {n: finite_or_none(table.latency(cfg, c))
                                           for c, n in enumerate(names)},
                    **batch_table(table, cfg, names, args.max_batch)}
                   for k, cfg in sorted(usable.items())],
        "candidates": [{"split": c.split.label(), "router": c.split.router_label(names),
                        "replicas": [{"count": g.count, "gpus": g.gpus,
                                      "config": g.config.label()} for g in c.split.groups],
                        "max_batch": c.split.max_batch,
                        "bound_rps": c.bound, "capacity_rps": c.capacity,
                        "at_rate": at_rate[i].as_dict() if i in at_rate else None}
                       for i, c in enumerate(ranked)],
        "splits_searched": len(splits), "pruned_by_bound": pruned,
        "pruned_by_one_run": missed, "pool_runs": model.runs,
        "request_simulations": table.simulated, "elapsed_s": elapsed,
    }
    if pace is not None:  # only then: without it the output is what it was before the flag
        # A replica's one factor as a number, per-class factors as a mapping by class.
        result["replica_pace"] = [p[0] if len(set(p)) == 1 else dict(zip(names, p))
                                  for p in pace]
    check_finite(result, "the serving plan")
    return ServePlan(args, result, ranked, at_rate, model, names, classes, refs, slo, usable,
                     len(splits), pruned, missed, elapsed, rate, timeline)


def print_plan(plan: ServePlan) -> None:
    """The human-readable plan on stdout."""
    args, model, names = plan.args, plan.model, plan.names

    def run_at(split: Split) -> RunSummary:
        return summarize(model.run(split, plan.rate), names, args.price)

    print_text(args, plan.result, plan.ranked, plan.at_rate, model, names, plan.classes,
               plan.refs, plan.slo, plan.usable, plan.splits, plan.pruned, plan.missed,
               plan.elapsed, run_at if plan.rate is not None else None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_outputs([("--trace", args.trace)])
    plan = plan_pool(args)
    write_outputs([("--trace", args.trace if plan.timeline else None,
                    lambda p: write_timeline(plan.timeline, plan.names, p))])
    if args.json:
        print_json(plan.result)
        return 0
    print_plan(plan)
    if args.trace and plan.timeline is None:
        print("note: --trace needs a run to write: give --rate (or --replay)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
