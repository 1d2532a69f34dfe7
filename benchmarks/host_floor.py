"""Host time per dispatched operator, read from a GPU compute profile's host-bound blocks.

A block on a few hundred tokens gives a GPU almost nothing to do (pixart-alpha at 512 tokens:
about 33 GFLOP, 0.03 ms at an H200's dense peak), so its measured time is the CPU's: the
dispatch of the block's operators (``DiTModel.host_ops``, counted by ``profiles.host_ops``).
This divides the profile's block times at the smallest token counts by that count and prints
the per-operator host time beside the registry's ``launch_overhead_s``. Only rows whose GPU
work at the dense peak is under ``--gpu-share`` (default 15 %) of their fastest run are used:
at the 37 % of peak the H200 reaches on these blocks, their GPU work is then at most 40 % of
the row, and the CPU's dispatch is what the row measures.

    python benchmarks/host_floor.py profiles/data/cuda-nvidia-h200_*_bf16.csv [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from sim.cli import run_main  # noqa: E402
from sim.cost.shipped import profile_gpu  # noqa: E402
from sim.models import get_model  # noqa: E402


def host_floor(path: str, gpu_share: float) -> dict:
    """Per-operator host seconds of the host-bound blocks of the profile at ``path``."""
    prof, gpu = profile_gpu(path)
    meta = prof.meta
    model = get_model(meta["model"])
    rows = []
    for s in prof.select("block"):
        single = s.variant == "single"
        index = model.num_blocks - 1 if single else 0
        ops = model.block_host_ops(index)
        gpu_s = model.block_flops(index, s.q_tokens, s.kv_tokens) * s.batch / gpu.peak_flops
        if gpu_s > gpu_share * s.min_s:
            continue
        rows.append({"variant": s.variant, "q_tokens": s.q_tokens, "kv_tokens": s.kv_tokens,
                     "host_ops": ops, "median_s": s.median_s, "min_s": s.min_s,
                     "per_op_median_s": s.median_s / ops, "per_op_min_s": s.min_s / ops})
    per_op = [r["per_op_median_s"] for r in rows]
    return {"profile": str(path), "model": model.name, "device_name": meta["device_name"],
            "registry_launch_overhead_s": gpu.launch_overhead_s, "rows": rows,
            "per_op_median_s": statistics.median(per_op) if per_op else None,
            "per_op_range_s": [min(per_op), max(per_op)] if per_op else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profiles", nargs="+", help="GPU compute profiles (profiles.collect)")
    p.add_argument("--gpu-share", type=float, default=0.15,
                   help="largest share of a row's time its GPU work at dense peak may take")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    results = [host_floor(f, a.gpu_share) for f in a.profiles]
    if a.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        if r["per_op_median_s"] is None:
            print(f"{r['model']}: no host-bound block in {r['profile']}")
            continue
        lo, hi = r["per_op_range_s"]
        print(f"{r['model']} on {r['device_name']}: {len(r['rows'])} host-bound block rows, "
              f"{r['per_op_median_s'] * 1e6:.1f} us per operator (median; {lo * 1e6:.1f}-"
              f"{hi * 1e6:.1f}), registry {r['registry_launch_overhead_s'] * 1e6:.0f} us")
        for v in sorted({x["variant"] for x in r["rows"]}):
            xs = [x for x in r["rows"] if x["variant"] == v]
            fast = min(x["min_s"] for x in xs) * 1e3
            slow = max(x["median_s"] for x in xs) * 1e3
            print(f"  {v}: {xs[0]['host_ops']} operators, block {fast:.2f}-{slow:.2f} ms "
                  f"(fastest run - slowest median) at {min(x['q_tokens'] for x in xs)}-"
                  f"{max(x['q_tokens'] for x in xs)} tokens")
    return 0


if __name__ == "__main__":
    run_main(main)
