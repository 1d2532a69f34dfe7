"""The serving simulation against a real serving run on this machine (issue 13, item 6).

    python benchmarks/bench_serve_executor.py [--case 2x1|1x2] [--utilisation 0.75]
        [--requests 240] [--seed 0] [--out DIR] [--profile-dir DIR]

1. Profiles this CPU for pixart-tiny at the classes' resolutions (``profiles.collect``, one
   thread, with one process computing beside the measured one, as when two replicas or two
   ranks share the two cores, pooled over three processes), unless ``--profile-dir`` already
   holds them; the ``1x2`` case also times messages between two busy processes
   (``profiles.links --busy``).
2. Predicts each class's isolated latency on one replica from that profile, and sets the
   arrival rate so that the predicted utilisation of the pool is ``--utilisation`` (a load
   near capacity, where queueing dominates). Each class's SLO is ``--slo-factor`` times its
   predicted isolated latency. Nothing here is taken from the measured run.
3. Writes a Poisson trace of ``--requests`` requests at that rate (``trace.csv``).
4. Replays it on real replicas: ``python -m executor.serve`` (``measured.csv``). Before the
   first arrival each replica times reference runs of every class (``--reference-runs`` of
   executor.serve, default 3, after the warm-up); it times them again after the last request.
5. Each replica's pace: the mix-weighted mean of its median reference times before the replay
   over the predicted isolated latencies of step 2 (one factor per replica, e.g. 1.2 for a
   replica process 20 % slower than the profile).
6. Predicts the same replay twice: ``python -m sim.serve --replay trace.csv --replicas ...
   --no-capacity`` from the same profiles (``simulated.csv``), and the same with
   ``--replica-pace`` set to the paces of step 5 (``simulated-paced.csv``).
7. Prints latency P50/P90/P99, queueing P50/P90, SLO attainment and the median service time
   per class, both predictions against the measurement, with the issue's targets (P50 and P90
   within 10 %, attainment within 5 points, judged for each prediction: the profile's alone,
   as the issue words it, the paced one and the per-class paced one), each replica's
   pace before and after the replay and the pace its served requests had (a check, never an
   input; a third prediction with that pace, marked hindsight, separates the error of the
   pace from that of the queue model), and a fourth prediction with one pace per replica and
   class (the same reference runs, each class's median over its own prediction;
   ``--replica-pace 384=P/512=P,...``), and writes everything to ``comparison.json``.

Cases: ``2x1`` two one-process replicas, router lwl; ``1x2`` one two-process PipeFusion
replica (M=2, W=1). Classes: pixart-tiny 384 px (60 %) and 512 px (40 %), 8 steps, fp32.
The measured run is wall-clock time: on a machine shared with other work the replicas run
slower than profiled (the profiles use the thread's CPU time). The pace, timed on the wall
clock, takes in the load present when it is measured, but not a load that changes during the
replay (the drift line shows it). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from profiles import collect
from profiles.device import device_name, device_slug
from sim.api import predict
from sim.arrivals import RequestClass, class_names, scaled, unit_stream, write_trace

MODEL = "pixart-tiny"
CLASSES = [RequestClass(384, 384, 8, 0.6), RequestClass(512, 512, 8, 0.4)]
CASES = {
    # replicas flag, processes per replica, replicas, executor/sim configuration flags
    "2x1": ("2x1", 1, 2),
    "1x2": ("1x2:pipefusion=2/patches=2/warmup=1", 2, 1),
}
TARGET_REL = 0.10  # P50 and P90 within 10 % (issue 13)
TARGET_POINTS = 5.0  # attainment within 5 points
# Targets are inclusive: 180 of 240 requests against 168 is 5 points, which the floats put
# 4e-15 above 5.
_SLACK = 1e-9


def profiles(profile_dir: Path, case: str, clock: str = "auto") -> tuple[Path, Path | None]:
    """The compute profile (one process beside the measured one, timed on ``clock``:
    ``profiles.collect --clock``) and, for a two-process replica, the busy link profile,
    collected into ``profile_dir`` when missing."""
    profile_dir.mkdir(parents=True, exist_ok=True)
    dev = device_slug("cpu", device_name("cpu"), 1)
    compute = profile_dir / f"{dev}_{MODEL}_fp32_co1.csv"
    res = ",".join(sorted({str(c.width) for c in CLASSES}))
    if not compute.exists():
        print(f"profiling {MODEL} at {res} px -> {compute}", file=sys.stderr)
        argv = ["--model", MODEL, "--device", "cpu", "--dtype", "fp32", "--threads", "1",
                "--co-run", "1", "--clock", clock, "--resolutions", res, "--patches", "1,2",
                "--ops", "block,embed,final,scheduler_step,condition", "--no-curve",
                # The median of three processes: one process's speed is partly its luck
                # (profiles/pooled.py), and the replicas are other processes.
                "--processes", "3", "--out", str(compute), "--no-progress"]
        if collect.main(argv) != 0:
            raise SystemExit("profile collection failed")
    link = None
    if CASES[case][1] > 1:
        link = profile_dir / f"links_gloo_loopback_w2_busy_{dev}.csv"
        if not link.exists():
            print(f"timing messages between 2 busy processes -> {link}", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc_per_node=2", "-m", "profiles.links", "--backend", "gloo",
                            "--quick", "--busy", "--out", str(link)], check=True,
                           capture_output=True)
    return compute, link


def sim_flags(compute: Path, link: Path | None, processes: int, replicas: int) -> list[str]:
    """The pool flags of sim.serve / sim.predict for this CPU."""
    flags = ["--model", MODEL, "--gpu", "cpu", "--gpus", str(processes * replicas), "--link",
             "pcie", "--dtype", "fp32", "--no-text-encoder", "--no-vae",
             "--profile", str(compute)]
    return flags + (["--link-profile", str(link)] if link else [])


def isolated(compute: Path, link: Path | None, case: str) -> list[float]:
    """Predicted isolated latency of each class on one replica of the case, seconds."""
    _, processes, _ = CASES[case]
    out = []
    for c in CLASSES:
        kw = dict(model=MODEL, gpu="cpu", gpus=processes, link="pcie", dtype="fp32",
                  text_encoder=False, vae=False, resolution=str(c.width), steps=c.steps,
                  profile=str(compute))
        if processes > 1:
            kw.update(pipefusion=2, patches=2, warmup=1, link_profile=str(link))
        out.append(predict(**kw).latency_s)
    return out


def stats(result: dict, names: list[str]) -> dict:
    """The compared numbers of one run (sim.serve's first row or executor.serve's summary)."""
    o = result["overall"]
    return {"p50": o["latency_s"]["p50"], "p90": o["latency_s"]["p90"],
            "p99": o["latency_s"]["p99"], "wait_p50": o["queueing_s"]["p50"],
            "wait_p90": o["queueing_s"]["p90"], "attainment": o["attainment"],
            "busy": result["gpu_busy_fraction"],
            "per_class_p90": {n: result["per_class"][n]["latency_s"]["p90"] for n in names}}


def pace_of(times: dict[str, list[float]], names: list[str], predicted: list[float]
            ) -> float | None:
    """A replica's pace: its mean measured service time under the mix (each class's median
    over ``times``, seconds, weighted by the class's share) over the predicted one of the same
    mix (``predicted`` per class, seconds); ``None`` when a class has no time."""
    if any(not times.get(n) for n in names):
        return None
    num = sum(c.weight * statistics.median(times[n]) for c, n in zip(CLASSES, names))
    return num / sum(c.weight * t for c, t in zip(CLASSES, predicted))


def simulate(argv: list[str], timeline: Path) -> dict:
    """``sim.serve``'s JSON for ``argv``, its request timeline written to ``timeline``."""
    return json.loads(subprocess.run(
        [sys.executable, "-m", "sim.serve", *argv, "--trace", str(timeline), "--json"],
        check=True, capture_output=True, text=True).stdout)


def dispatch_delays(path: Path) -> list[float]:
    """For each measured request, how long after it could have started it did (seconds): its
    start minus the later of its arrival and the finish of the request before it on its
    replica. The queueing the simulation models leaves zero; what remains is the dispatcher's
    and the message queues' own delay, whatever the load."""
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if r["start_s"]]
    out = []
    for k in {r["replica"] for r in rows}:
        prev = float("-inf")
        for r in sorted((r for r in rows if r["replica"] == k), key=lambda r: float(r["start_s"])):
            out.append(float(r["start_s"]) - max(float(r["arrival_s"]), prev))
            prev = float(r["finish_s"])
    return out


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _rel_ok(err: float) -> bool:
    """A relative error (simulated over measured, minus 1) within the 10 % target."""
    return abs(err) <= TARGET_REL + _SLACK


def _points_ok(points: float) -> bool:
    """An attainment difference (percentage points) within the 5-point target."""
    return abs(points) <= TARGET_POINTS + _SLACK


def _met(sim: dict, meas: dict) -> bool:
    """Whether one prediction (``stats`` of it) meets issue 13's targets against the
    measurement: P50 and P90 within 10 %, attainment within 5 points."""
    return (all(_rel_ok((sim[k] - meas[k]) / meas[k]) for k in ("p50", "p90"))
            and _points_ok(100 * (sim["attainment"] - meas["attainment"])))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", default="2x1", choices=sorted(CASES))
    ap.add_argument("--utilisation", type=float, default=0.75)
    ap.add_argument("--requests", type=int, default=240)
    ap.add_argument("--slo-factor", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="serve-check")
    ap.add_argument("--profile-clock", choices=("auto", "wall", "cpu"), default="auto",
                    help="clock of the compute profile (profiles.collect --clock; auto: the "
                         "thread's CPU time with one thread)")
    ap.add_argument("--profile-dir", default=None,
                    help="profiles to reuse or collect into (default: OUT/profiles)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    compute, link = profiles(Path(a.profile_dir) if a.profile_dir else out / "profiles", a.case,
                             a.profile_clock)
    t_prof = time.perf_counter() - t0
    replicas_flag, processes, replicas = CASES[a.case]
    lat = isolated(compute, link, a.case)
    mean = sum(c.weight * t for c, t in zip(CLASSES, lat))
    rate = a.utilisation * replicas / mean
    names = class_names(CLASSES)
    slo = [a.slo_factor * t for t in lat]
    stream = scaled(unit_stream(CLASSES, a.requests, 1.0, a.seed), 1 / rate)
    trace = out / "trace.csv"
    write_trace(trace, MODEL, CLASSES, stream, slo)
    print(f"case {a.case}: predicted isolated latency "
          f"{', '.join(f'{n} {t:.3f} s' for n, t in zip(names, lat))}; rate {rate:.3f} req/s "
          f"for a predicted utilisation of {a.utilisation:.2f}; SLO "
          f"{', '.join(f'{n} {s:.3f} s' for n, s in zip(names, slo))}; {a.requests} requests "
          f"over {stream[-1].arrival_s:.0f} s", flush=True)

    t1 = time.perf_counter()
    measured = json.loads(subprocess.run(
        [sys.executable, "-m", "executor.serve", "--model", MODEL, "--replay", str(trace),
         "--replicas", replicas_flag, "--router", "lwl", "--seed", str(a.seed),
         "--trace", str(out / "measured.csv"), "--json"],
        check=True, capture_output=True, text=True).stdout)
    t_exec = time.perf_counter() - t1
    # Each replica's pace, from its reference runs before the first arrival: nothing the
    # prediction uses comes from the served requests.
    pace = [pace_of(ref["before"], names, lat) for ref in measured["reference_s"]]
    pace_after = [pace_of(ref["after"], names, lat) for ref in measured["reference_s"]]
    # The served requests' own pace: a check of the measured pace, never an input.
    pace_served = [pace_of({n: [v] for n, v in sv.items() if v is not None}, names, lat)
                   for sv in measured["replica_service_s"]]
    sim_argv = [*sim_flags(compute, link, processes, replicas), "--replay", str(trace),
                "--replicas", replicas_flag, "--router", "lwl", "--no-capacity", "--quiet"]
    simulated = simulate(sim_argv, out / "simulated.csv")
    paced = simulate(sim_argv + ["--replica-pace", ",".join(map(repr, pace))],
                     out / "simulated-paced.csv")
    # The same reference runs, one factor per class: a replica whose error differs by shape
    # (a class slower than its profile, another not) keeps each class's own.
    pace_class = [{n: statistics.median(ref["before"][n]) / t for n, t in zip(names, lat)}
                  for ref in measured["reference_s"]]
    per_class = simulate(sim_argv + ["--replica-pace", ",".join(
        "/".join(f"{n}={v!r}" for n, v in pc.items()) for pc in pace_class)],
        out / "simulated-paced-per-class.csv")
    hindsight = (simulate(sim_argv + ["--replica-pace", ",".join(map(repr, pace_served))],
                          out / "simulated-hindsight.csv")
                 if all(v is not None for v in pace_served) else None)
    sim_row, paced_row = simulated["candidates"][0]["at_rate"], paced["candidates"][0]["at_rate"]
    m, s, sp = (stats(measured["summary"], names), stats(sim_row, names),
                stats(paced_row, names))
    pred_service = {n: simulated["widths"][0]["isolated_latency_s"][n] for n in names}

    rows = []
    print(f"\n{'':<22}{'profile':>10}{'paced':>10}{'measured':>10}{'error':>9}{'paced':>9}"
          f"  target: profile / paced")
    for key, label in (("p50", "latency P50 s"), ("p90", "latency P90 s"),
                       ("p99", "latency P99 s"), ("wait_p50", "queueing P50 s"),
                       ("wait_p90", "queueing P90 s")):
        err = (s[key] - m[key]) / m[key] if m[key] else float("nan")
        err_p = (sp[key] - m[key]) / m[key] if m[key] else float("nan")
        ok = "" if key not in ("p50", "p90") else (
            f"  {_verdict(_rel_ok(err))} / {_verdict(_rel_ok(err_p))} (10 %)")
        rows.append({"what": key, "simulated": s[key], "simulated_paced": sp[key],
                     "measured": m[key], "error": err, "error_paced": err_p})
        print(f"{label:<22}{s[key]:>10.3f}{sp[key]:>10.3f}{m[key]:>10.3f}{err:>+9.1%}"
              f"{err_p:>+9.1%}{ok}")
    pts = 100 * (s["attainment"] - m["attainment"])
    pts_p = 100 * (sp["attainment"] - m["attainment"])
    print(f"{'attainment':<22}{s['attainment']:>10.1%}{sp['attainment']:>10.1%}"
          f"{m['attainment']:>10.1%}{pts:>+8.1f}p{pts_p:>+8.1f}p"
          f"  {_verdict(_points_ok(pts))} / {_verdict(_points_ok(pts_p))} (5 points)")
    print(f"{'GPU busy':<22}{s['busy']:>10.1%}{sp['busy']:>10.1%}{m['busy']:>10.1%}")
    for n in names:
        for key, what in (("service_s", "wall"), ("service_loop_s", "loop"),
                          ("service_cpu_s", "CPU")):
            ms = measured[key][n]
            print(f"{f'service {n} s ({what})':<22}{pred_service[n]:>10.3f}{'':>10}{ms:>10.3f}"
                  f"{(pred_service[n] - ms) / ms:>+9.1%}")
    for r, served in enumerate(measured["replica_service_s"]):
        drift = pace_after[r] / pace[r] - 1
        print(f"replica {r} pace (reference time / predicted): {pace[r]:.3f} before the "
              f"replay (the prediction's), {pace_after[r]:.3f} after ({drift:+.1%} drift); "
              f"served requests' median "
              + ", ".join(f"{n} {served[n]:.3f} s" if served[n] is not None else f"{n} none"
                          for n in names)
              + (f" -> {pace_served[r]:.3f}" if pace_served[r] is not None else ""))
    pc = stats(per_class["candidates"][0]["at_rate"], names)
    pc50, pc90 = ((pc[k] - m[k]) / m[k] for k in ("p50", "p90"))
    pc_pts = 100 * (pc["attainment"] - m["attainment"])
    print("with a pace per replica and class (" + "; ".join(
        f"replica {r}: " + ", ".join(f"{n} {v:.3f}" for n, v in p.items())
        for r, p in enumerate(pace_class)) + f"; before the replay, a prediction): latency P50 "
          f"{pc['p50']:.3f} s ({pc50:+.1%}), P90 {pc['p90']:.3f} s ({pc90:+.1%}), attainment "
          f"{pc['attainment']:.1%} ({pc_pts:+.1f} points): "
          + ("targets met" if _met(pc, m) else "targets MISSED"))
    if hindsight is not None:
        h = stats(hindsight["candidates"][0]["at_rate"], names)
        e50, e90 = ((h[k] - m[k]) / m[k] for k in ("p50", "p90"))
        print(f"with the served requests' own pace (hindsight, not a prediction): latency P50 "
              f"{e50:+.1%}, P90 {e90:+.1%}, "
              f"attainment {100 * (h['attainment'] - m['attainment']):+.1f} points")
    met = {"profile": _met(s, m), "paced": _met(sp, m), "per_class": _met(pc, m)}
    print("targets (P50 and P90 within 10 %, attainment within 5 points): "
          + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in met.items()))
    delays = sorted(dispatch_delays(out / "measured.csv"))
    print(f"dispatch delay beyond the queue: median {1000 * delays[len(delays) // 2]:.1f} ms, "
          f"largest {1000 * delays[-1]:.1f} ms (start minus the later of arrival and the "
          f"previous finish on the replica)")
    print(f"\nprofiles {t_prof:.0f} s, executor.serve {t_exec:.0f} s (model load "
          f"{measured['load_s']:.0f} s, replay {measured['replay_s']:.0f} s, largest dispatch "
          f"lag {1000 * measured['max_dispatch_lag_s']:.0f} ms), whole "
          f"{time.perf_counter() - t0:.0f} s; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (a quiet run keeps it near the 2-3 processes of the "
          f"check itself); files in {out}/")
    (out / "comparison.json").write_text(json.dumps({
        "case": a.case, "rate_rps": rate, "utilisation_predicted": a.utilisation,
        "slo_s": dict(zip(names, slo)), "predicted_isolated_s": dict(zip(names, lat)),
        "rows": rows, "attainment": {"simulated": s["attainment"],
                                     "simulated_paced": sp["attainment"],
                                     "measured": m["attainment"], "points": pts,
                                     "points_paced": pts_p},
        "pace": {"before": pace, "after": pace_after, "served": pace_served,
                 "per_class_before": pace_class},
        "simulated_paced_per_class": per_class["candidates"][0]["at_rate"],
        "per_class_errors": {"p50": pc50, "p90": pc90, "attainment_points": pc_pts},
        "targets_met": met,
        "hindsight": hindsight["candidates"][0]["at_rate"] if hindsight else None,
        "measured": measured, "simulated": sim_row, "simulated_paced": paced_row,
        "load_average": [load_before, os.getloadavg()[0]],
        "dispatch_delay_s": {"median": delays[len(delays) // 2], "max": delays[-1]},
        "wall_s": time.perf_counter() - t0}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
