"""Measured denoising loop of every pure strategy at two CPU processes against the simulator's
prediction from the shipped CPU profiles (issue 11: the strategies besides PipeFusion had never
met a measurement).

One ``executor.batch`` launch runs PipeFusion (M=2, W=1), CFG, Ulysses, ring, tensor and
DistriFusion (W=1), each with ``--warmup-runs 1 --runs R``; each is predicted with
``ProfileCost`` on the co-running compute profile and the busy gloo link profile, as
``python -m validation`` predicts its PipeFusion rows. The profiles were measured on the
machine they are named after: elsewhere, collect them first (``python -m profiles.collect``,
``python -m profiles.links``) and pass ``--profile``/``--link-profile``. Collectives are priced
from the link profile's collective rows where it has them (``sim.engine.collective_call``;
the shipped AMD EPYC profile predates issue 11: its collectives were timed with the ranks busy
under their plain names and it has no ``ring_kv`` rows, so the ring keeps the point-to-point
model), else from its point-to-point fit. ``python -m validation`` runs the same strategies
with profiles it measures first. Run it on a quiet machine: a loaded one slows the
measurement, not the prediction.

    python benchmarks/bench_executor_strategies.py [--model pixart-small] [--resolution 256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere

CASES = {  # name -> (executor.run flags, ParallelConfig degrees), two processes each
    "pipefusion2 M=2 W=1": ("--patches 2 --warmup 1", dict(pipefusion=2, patches=2, warmup=1)),
    "cfg2": ("--cfg 2", dict(cfg=2)),
    "ulysses2": ("--ulysses 2", dict(ulysses=2)),
    "ring2": ("--ring 2", dict(ring=2)),
    "tensor2": ("--tensor 2", dict(tensor=2)),
    "distrifusion2 W=1": ("--distrifusion 2 --warmup 1", dict(distrifusion=2, warmup=1)),
}


def measure(model: str, res: int, steps: int, runs: int, out: Path) -> list[dict]:
    """Every case's ``executor.run --json`` object, from one two-process launch."""
    base = f"--model {model} --resolution {res} --steps {steps} --warmup-runs 1 --runs {runs}"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", "-m", "executor.batch", str(out),
           *(f"{base} {flags}" for flags, _ in CASES.values())]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: the executor launch failed: {proc.stderr.strip()[-500:]}")
    return [json.loads((out / f"run-{i}.json").read_text()) for i in range(len(CASES))]


def predict(model: str, res: int, steps: int, degrees: dict, profile: Path,
            link: Path) -> float:
    """Predicted loop seconds of one case."""
    from sim.config import ParallelConfig, Workload
    from sim.cost.link_profile import apply_link_profile
    from sim.cost.profile import ProfileCost
    from sim.evaluate import evaluate
    from sim.hardware import get_gpu
    from sim.models import get_model
    from sim.topology import build_topology

    gpu = get_gpu("cpu")
    wl = Workload(get_model(model), res, res, steps, dtype="fp32", text_encoder=False,
                  vae=False)
    d = dict(degrees)
    d.setdefault("warmup", 1)
    cfg = ParallelConfig(2, **d)
    m = wl.model
    # The regime of the run's typical message, as validation.predict picks it.
    msg = m.batch * wl.tokens // cfg.patches * m.hidden * 4
    topo = apply_link_profile(build_topology(gpu, 2, "pcie"), link, nbytes=msg)
    return evaluate(wl, cfg, gpu, topo, ProfileCost(wl, gpu, profile)).latency_s


def main(argv: list[str] | None = None) -> int:
    """Measure, predict and print a table (or JSON with ``--json``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pixart-small")
    p.add_argument("--resolution", type=int, default=256, help="pixels (square)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--runs", type=int, default=3)
    data = ROOT / "profiles" / "data"
    p.add_argument("--profile", type=Path, help="compute profile (default: the shipped "
                   "co-running CPU profile of the model)")
    p.add_argument("--link-profile", type=Path,
                   default=data / "links_gloo_loopback_w2_busy_cpu-amd-epyc-t1.csv")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    profile = args.profile or data / f"cpu-amd-epyc-t1_{args.model}_fp32_co1.csv"
    for path in (profile, args.link_profile):
        if not path.is_file():
            raise SystemExit(f"error: no profile {path}; collect one for this machine")
    with tempfile.TemporaryDirectory() as tmp:
        measured = measure(args.model, args.resolution, args.steps, args.runs, Path(tmp))
    rows = []
    for (name, (_, degrees)), s in zip(CASES.items(), measured):
        pred = predict(args.model, args.resolution, args.steps, degrees, profile,
                       args.link_profile)
        rows.append({"case": name, "measured_s": s["latency_s"], "runs_s": s["latencies_s"],
                     "predicted_s": pred, "error": pred / s["latency_s"] - 1})
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{args.model} {args.resolution} px, {args.steps} steps, 2 CPU processes")
    print("| case | measured s (median; min-max) | predicted s | error |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['measured_s']:.3f} ({min(r['runs_s']):.3f}-"
              f"{max(r['runs_s']):.3f}) | {r['predicted_s']:.3f} | {r['error']:+.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
