"""Snapshot of predictions on a grid, to check that a speed change moves no prediction.

``python benchmarks/prediction_snapshot.py write FILE`` stores, for every configuration of
``grid()``, the latency and metrics of ``sim.evaluate.evaluate`` in its three modes (the
per-op schedule as ``sim.predict`` runs it, the planner's fast mode, and the full per-op
simulation when the code has one); ``python benchmarks/prediction_snapshot.py compare OLD NEW``
prints the largest relative differences of each mode and exits 1 when one exceeds 0.1 %.
Works with any revision of the code (run it with that revision first on ``PYTHONPATH``).
"""

from __future__ import annotations

import inspect
import json
import sys

from sim.config import ParallelConfig, Workload, validate
from sim.errors import UserError
from sim.evaluate import evaluate
from sim.hardware import get_gpu
from sim.models import get_model
from sim.topology import build_topology

TOLERANCE = 1e-3  # the bound on how far a speed change may move a prediction
KEYS = ("latency_s", "loop_s", "bubble_fraction", "exposed_comm_s", "comm_bytes_per_step")


def grid() -> list[tuple[str, str, str, int, int, int, ParallelConfig]]:
    """(model, gpu, link, nodes, resolution, steps, config) of the grid."""
    out = []
    clusters = [("l40", "pcie", 1), ("a100-sxm-80g", "nvlink", 1)]
    for model in ("pixart", "sd3", "hunyuan-dit"):
        for gpu, link, nodes in clusters:
            for n in (2, 4, 8):
                cfgs = [ParallelConfig(n, n, n, 1), ParallelConfig(n, n, 2 * n, 0),
                        ParallelConfig(n, ulysses=n) if n <= 8 else None,
                        ParallelConfig(n, ring=n), ParallelConfig(n, tensor=n),
                        ParallelConfig(n, distrifusion=n, warmup=1),
                        ParallelConfig(n, n // 2, 4, 1, cfg=2),
                        ParallelConfig(n, n // 2, n, 1, ulysses=2)]
                if n >= 4:
                    cfgs.append(ParallelConfig(n, n // 4, 4, 1, ring=2, tensor=2))
                for c in cfgs:
                    if c is not None:
                        out.append((model, gpu, link, nodes, 1024, 0, c))
    for res in (2048, 512):
        out.append(("pixart", "l40", "pcie", 1, res, 0, ParallelConfig(8, 8, 16, 1)))
        out.append(("pixart", "l40", "pcie", 1, res, 0, ParallelConfig(8, 4, 8, 2, ulysses=2)))
    out.append(("pixart", "l40", "pcie", 1, 1024, 5, ParallelConfig(4, 4, 8, 1)))
    out.append(("flux", "h100-sxm", "nvlink", 2, 1024, 0,
                ParallelConfig(16, 4, 4, 1, ring=2, tensor=2)))
    out.append(("flux", "h100-sxm", "nvlink", 2, 1024, 0, ParallelConfig(16, 16, 16, 1)))
    out.append(("flux", "l40", "pcie", 2, 1024, 0, ParallelConfig(16, 4, 8, 1, ulysses=4)))
    valid = []
    for model, gpu, link, nodes, res, steps, cfg in out:
        m = get_model(model)
        try:
            validate(Workload(m, res, res, steps or m.default_steps), cfg)
        except UserError:
            continue  # e.g. a Ulysses degree that does not divide the heads
        valid.append((model, gpu, link, nodes, res, steps, cfg))
    return valid


def key(model: str, gpu: str, link: str, nodes: int, res: int, steps: int,
        cfg: ParallelConfig) -> str:
    return f"{model} {gpu} {link} x{nodes} {res}px s{steps} {cfg.gpus}gpus {cfg.label()}"


def modes() -> dict[str, dict]:
    """The evaluate() keyword sets of this revision: per-op (predict), fast (planner), and
    exact (full per-op simulation, when it exists)."""
    params = inspect.signature(evaluate).parameters
    out = {"predict": {}, "fast": {"fast": True}}
    if "exact" in params:
        out["exact"] = {"exact": True}
    return out


def write(path: str) -> None:
    snap: dict[str, dict] = {}
    for model, gpu_name, link, nodes, res, steps, cfg in grid():
        m = get_model(model)
        gpu = get_gpu(gpu_name)
        wl = Workload(m, res, res, steps or m.default_steps)
        entry = {}
        for mode, kw in modes().items():
            p = evaluate(wl, cfg, gpu, build_topology(gpu, cfg.gpus, link, nodes), **kw)
            d = p.as_dict()
            entry[mode] = {k: d[k] for k in KEYS}
        snap[key(model, gpu_name, link, nodes, res, steps, cfg)] = entry
        print(key(model, gpu_name, link, nodes, res, steps, cfg), entry["predict"]["latency_s"],
              file=sys.stderr)
    with open(path, "w") as fh:
        json.dump(snap, fh, indent=1)


def compare(old_path: str, new_path: str) -> int:
    old, new = (json.load(open(p)) for p in (old_path, new_path))
    worst = 0.0
    # The old per-op mode (the full simulation before periodic extension) is the reference
    # for both the new per-op and exact modes.
    pairs = [("predict", "predict"), ("predict", "exact"), ("fast", "fast"), ("exact", "exact")]
    for ref_mode, mode in pairs:
        diffs = []
        for k, e in old.items():
            if k not in new or ref_mode not in e or mode not in new[k]:
                continue
            for f in KEYS:
                a, b = e[ref_mode][f], new[k][mode][f]
                rel = abs(b - a) / max(abs(a), 1e-12) if f != "bubble_fraction" else abs(b - a)
                diffs.append((rel, k, f, a, b))
        if not diffs:
            continue
        diffs.sort(reverse=True)
        worst = max(worst, diffs[0][0])
        print(f"old {ref_mode} vs new {mode}: {len(diffs)} numbers, largest difference "
              f"{diffs[0][0]:.2e} ({diffs[0][1]} {diffs[0][2]}: {diffs[0][3]} -> {diffs[0][4]})")
    print(f"worst {worst:.2e} ({'within' if worst <= TOLERANCE else 'OVER'} {TOLERANCE:g})")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2])
    else:
        sys.exit(compare(sys.argv[2], sys.argv[3]))
