"""``python -m executor.serve``: replay an arrival trace against real executor replicas on this
host and record when each request arrived, started and finished, to check ``sim.serve``.

Example (two one-process replicas of pixart-tiny on CPU)::

    python -m executor.serve --model pixart-tiny --replay trace.csv --replicas 2x1 \\
        --router lwl --slo 2.5 --trace measured.csv --json

The trace is ``sim.serve --replay``'s CSV (``arrival_s, model, width, height, steps[,
slo_s]``). Each replica is a group of processes (``executor.serve_worker``) that load their
stage of the transformer once and then run one request at a time with the executor's own
request machinery (``executor.request.plan_run``, ``executor.runtime.LoadedRank``); a replica
of several processes runs the configuration given as in ``sim.serve --replicas``
(``1x2:pipefusion=2/patches=2/warmup=1``; gloo on CPU). This process is the dispatcher: it
releases each request at its arrival time, routes it with ``sim.serving.choose_replica`` and
orders each replica's queue with ``sim.serving.queue_key`` (the simulation's own router and
discipline), and hands a replica its next request as soon as every one of its processes has
reported the last one done.

Each replica's pace is measured before the first request of the trace: after its untimed
warm-up runs, ``--reference-runs`` rounds of one request of every class, timed (the replicas
side by side, as while serving). The median of a class's reference runs on a replica is the
router's service time of that class there (where the simulation uses its predicted
latencies), and the reference runs are reported (``reference_s``) for ``sim.serve
--replica-pace``: a replica's pace is its reference time over the simulation's prediction of
the same requests. The same rounds are timed again after the last request (``after``), only
to report how far the pace drifted during the replay (``reference_drift``): nothing measured
after the first arrival feeds the router.

Times are seconds from the dispatcher's origin, just before the first arrival, on the host's
monotonic clock (shared by every process on Linux): a request starts when its replica's first
process begins it and finishes when its last process ends it. The metrics are
``sim.serve_metrics``'s, the timeline CSV is ``sim.serve --trace``'s.

Exit status: 0, 2 on bad input (one ``error:`` line, checked before any process starts), 1
when a replica's process fails or hangs past ``--timeout`` (a line naming it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from executor.serve_pool import Pool, ReplicaFailed, replay, time_classes
from sim.arrivals import Request, RequestClass, class_names, read_trace, scaled
from sim.cli import at_least, parser, positive, run_main
from sim.config import ParallelConfig
from sim.errors import UserError
from sim.outputs import check_outputs, write_outputs
from sim.replicas import ReplicaGroup, parse_replicas
from sim.serve import parse_slo
from sim.serve_metrics import idle_while_queued_gpu_s, summarize
from sim.serve_text import write_timeline
from sim.serving import ServeRun

ROUTERS = ("lwl", "jsq")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``executor.serve``."""
    p = parser("python -m executor.serve",
               "Replay an arrival trace against real executor replicas on this host and record "
               "each request's arrival, start and finish (the measurement sim.serve predicts).")
    p.add_argument("--model", required=True,
                   help="registry PixArt model every row of the trace names (pixart-tiny, ...)")
    p.add_argument("--replay", required=True, metavar="CSV",
                   help="the trace: rows arrival_s,model,width,height,steps[,slo_s]")
    p.add_argument("--replicas", default="1x1", metavar="COUNTxPROCESSES[:CONFIG],...",
                   help="replicas as in sim.serve --replicas, in processes: 2x1, or "
                        "1x2:pipefusion=2/patches=2/warmup=1 (a replica of several processes "
                        "needs its configuration)")
    p.add_argument("--router", default="lwl", choices=ROUTERS,
                   help="lwl (least work left) or jsq (join the shortest queue), as sim.serve")
    p.add_argument("--queue", default="fcfs", choices=("fcfs", "edf"),
                   help="queue discipline of each replica")
    p.add_argument("--slo", default=None,
                   help="SLO in seconds for rows without slo_s: one value, or CLASS:SECONDS,... "
                        "with an optional bare default first")
    p.add_argument("--rate", type=float, default=None,
                   help="time-scale the trace to this many requests per second")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the weights, noise and prompt embeddings (every request)")
    p.add_argument("--warmup-runs", type=int, default=1,
                   help="untimed runs of each class on each replica before the replay (a "
                        "process's first run pays one-off costs)")
    p.add_argument("--reference-runs", type=int, default=3,
                   help="timed rounds of one request of every class on every replica, after "
                        "the warm-up and before the first arrival (each replica's pace and the "
                        "router's service times), and again after the last request (the drift)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for a replica before failing the replay")
    p.add_argument("--trace", default=None, metavar="FILE",
                   help="write the measured request timeline as CSV (sim.serve --trace's "
                        "columns)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return p


def replica_config(group: ReplicaGroup) -> ParallelConfig:
    """The configuration of a group's replicas: the one given, serial for one process."""
    if group.config is not None:
        return group.config
    if group.gpus == 1:
        return ParallelConfig(1)
    raise UserError(f"--replicas {group.label()}: give the configuration of a {group.gpus}-"
                    f"process replica, e.g. 1x2:pipefusion=2/patches=2/warmup=1")


def run_argv(model: str, cls: RequestClass, cfg: ParallelConfig, seed: int,
             timeout: float) -> list[str]:
    """``executor.run``'s flags for one request of class ``cls`` on a replica running
    ``cfg``: one torch thread per process, as torchrun gives the executor."""
    argv = ["--model", model, "--resolution", f"{cls.width}x{cls.height}",
            "--steps", str(cls.steps), "--seed", str(seed), "--threads", "1",
            "--timeout", repr(timeout), "--device", "cpu",
            # A warmup above a class's steps cannot apply to it (as sim.serve's table).
            "--warmup", str(min(cfg.warmup, cls.steps)),
            "--pipefusion", str(cfg.pipefusion), "--cfg", str(cfg.cfg),
            "--ulysses", str(cfg.ulysses), "--ring", str(cfg.ring), "--tensor",
            str(cfg.tensor), "--distrifusion", str(cfg.distrifusion)]
    if cfg.stage_blocks:
        argv += ["--stage-blocks", ",".join(map(str, cfg.stage_blocks))]
    if cfg.gpus > 1:  # executor.run refuses patches on one process
        argv += ["--patches", str(cfg.patches)]
    return argv


def request_slos(stream: list[Request], names: list[str], text: str | None) -> list[float]:
    """Each request's SLO in seconds: its own (``slo_s`` in the trace), else its class's from
    ``--slo`` (seconds only: a ``Kx`` SLO needs the simulator's reference latency)."""
    per_class: list[float | None] = [None] * len(names)
    if text is not None:
        for c, v in enumerate(parse_slo(text, names)):
            if v.endswith("x"):
                raise UserError(f"--slo {v}: executor.serve takes SLOs in seconds (a Kx SLO "
                                f"multiplies a simulated latency; use sim.serve's number)")
            per_class[c] = float(v.rstrip("s"))
    out = []
    for r in stream:
        slo = r.slo_s if r.slo_s is not None else per_class[r.cls]
        if slo is None:
            raise UserError(f"request {r.index} (class {names[r.cls]}) has no SLO: give --slo "
                            f"SECONDS or an slo_s column in the trace")
        out.append(slo)
    return out


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    args = build_parser().parse_args(argv)
    check_outputs([("--trace", args.trace)])
    at_least(args.warmup_runs, 0, "--warmup-runs")
    at_least(args.reference_runs, 1, "--reference-runs")
    positive(args.timeout, "--timeout")
    classes, stream = read_trace(args.replay, args.model)
    names = class_names(classes)
    if args.rate is not None:
        positive(args.rate, "--rate")
        span = stream[-1].arrival_s - stream[0].arrival_s
        if span <= 0:
            raise UserError("--rate needs a trace whose arrivals span some time")
        stream = scaled(stream, len(stream) / span / args.rate)
    slos = request_slos(stream, names, args.slo)
    groups = parse_replicas(args.replicas, None)
    configs = [replica_config(g) for g in groups for _ in range(g.count)]
    argvs = [[run_argv(args.model, cl, cfg, args.seed, args.timeout) for cl in classes]
             for cfg in configs]
    # Every (replica configuration, class) is checked here, before any process starts.
    from executor.request import plan_run
    from executor.run import build_parser as run_parser

    checked: set[tuple] = set()
    for cfg, per_class in zip(configs, argvs):
        for name, a in zip(names, per_class):
            if (cfg, name) not in checked:
                checked.add((cfg, name))
                try:
                    plan_run(run_parser().parse_args(a), cfg.gpus)
                except UserError as e:
                    raise UserError(f"class {name} on a replica of {cfg.label()}: {e}") \
                        from None

    pool = Pool(configs, argvs, args.timeout)
    try:
        loads = {}
        while len(loads) < len(pool.procs):
            msg = pool.receive(None)
            loads[(msg[1], msg[2])] = msg[3]
        before = time_classes(pool, len(classes), args.warmup_runs, args.reference_runs)
        service = [[statistics.median(ts) for ts in per_class] for per_class in before]
        t_replay = time.perf_counter()
        served, busy, cpu, max_lag = replay(pool, stream, slos, service, args.router, args.queue)
        replay_s = time.perf_counter() - t_replay
        after = time_classes(pool, len(classes), 0, args.reference_runs)
    except ReplicaFailed as e:
        pool.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    pool.close()

    gpus = [cfg.gpus for cfg in configs]
    run = ServeRun(served, gpus, busy, idle_while_queued_gpu_s(served, gpus))
    summary = summarize(run, names)
    write_outputs([("--trace", args.trace, lambda p: write_timeline(run, names, p))])
    result = {
        "model": args.model, "replay": args.replay, "requests": len(stream),
        "router": args.router, "queue": args.queue, "rate_rps": args.rate,
        "replicas": [{"processes": cfg.gpus, "config": cfg.label()} for cfg in configs],
        "classes": [{"name": n, "width": c.width, "height": c.height, "steps": c.steps}
                    for n, c in zip(names, classes)],
        "load_s": max(loads.values()),
        # The router's service times: each replica's median reference run per class.
        "warm_service_s": [{n: service[r][c] for c, n in enumerate(names)}
                           for r in range(len(configs))],
        "reference_runs": args.reference_runs,
        "reference_s": [{"before": dict(zip(names, before[r])),
                         "after": dict(zip(names, after[r]))} for r in range(len(configs))],
        # Median after the replay over median before, minus 1: the pace's drift in the run.
        "reference_drift": [{n: statistics.median(after[r][c]) / service[r][c] - 1
                             for c, n in enumerate(names)} for r in range(len(configs))],
        # What the served requests took on each replica (a check of the pace, never an input).
        "replica_service_s": [{n: _median([s.service_s for s in served
                                           if s.replica == r and s.request.cls == c])
                               for c, n in enumerate(names)} for r in range(len(configs))],
        "service_s": {n: _median([s.service_s for s in served if s.request.cls == c])
                      for c, n in enumerate(names)},
        # CPU seconds of a request's busiest process: what the profiles (thread CPU time)
        # predict, whatever else shares the cores.
        "service_cpu_s": {n: _median([cpu[s.request.index][0] for s in served
                                      if s.request.cls == c]) for c, n in enumerate(names)},
        # The denoising loop alone (what the simulator predicts); the rest of a request's
        # service is its set-up (interpreter state, scheduler copies, initial noise).
        "service_loop_s": {n: _median([cpu[s.request.index][1] for s in served
                                       if s.request.cls == c]) for c, n in enumerate(names)},
        "max_dispatch_lag_s": max_lag,
        "replay_s": replay_s, "wall_s": time.perf_counter() - t0,
        "summary": summary.as_dict(),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    o = summary.overall
    lat = o["latency_s"]
    print(f"{len(stream)} requests on {len(configs)} replica(s) "
          f"({', '.join(cfg.label() for cfg in configs)}), router {args.router}, "
          f"queue {args.queue}: {o['attainment']:.1%} within SLO, latency P50 "
          f"{lat['p50']:.3f} s, P90 {lat['p90']:.3f} s, P99 {lat['p99']:.3f} s; GPU busy "
          f"{summary.busy_fraction:.0%}; replay {replay_s:.1f} s")
    for r in range(len(configs)):
        runs = "; ".join(
            f"{n} {service[r][c]:.3f} s before, {statistics.median(after[r][c]):.3f} s after "
            f"({result['reference_drift'][r][n]:+.1%})" for c, n in enumerate(names))
        print(f"replica {r} reference (median of {args.reference_runs} run(s) per class): "
              f"{runs}")
    return 0


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


if __name__ == "__main__":
    run_main(main)
