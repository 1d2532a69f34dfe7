"""The roofline's block times against a GPU profile's, shape by shape.

For every block row of a compute profile measured on a GPU (``profiles.collect --device
cuda``), the time the simulator gives the same block without the profile: the roofline's GPU
time (``RooflineCost.block_time``, the registry's peak and efficiency) and the CPU's dispatch
of its operators (``DiTModel.block_host_ops`` x ``launch_overhead_s``); the engine runs an op
no faster than either, so the larger is the prediction. Rows are grouped by resolution (the
kv token count of a full image) so PipeFusion's patch range (q = kv / M) reads as one curve.

    python benchmarks/gpu_block_shapes.py profiles/data/cuda-nvidia-h200_*_bf16.csv [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from sim.cli import run_main  # noqa: E402
from sim.config import Workload  # noqa: E402
from sim.cost.roofline import RooflineCost  # noqa: E402
from sim.cost.shipped import profile_gpu  # noqa: E402
from sim.models import get_model  # noqa: E402


def compare(path: str) -> dict:
    """Per block row of the profile at ``path``: measured median and predicted seconds."""
    prof, gpu = profile_gpu(path)
    meta = prof.meta
    model = get_model(meta["model"])
    rows = []
    for px in meta["resolutions"]:
        wl = Workload(model, px, px, 1, dtype=meta["dtype"], text_encoder=False, vae=False)
        cost = RooflineCost(wl, gpu)
        full = wl.tokens
        for s in prof.select("block"):
            if s.kv_tokens != full:
                continue
            index = model.num_blocks - 1 if s.variant == "single" else 0
            gpu_s = cost.block_time(index, s.q_tokens, s.kv_tokens, s.batch)
            host_s = model.block_host_ops(index) * gpu.launch_overhead_s
            pred = max(gpu_s, host_s)
            rows.append({"resolution": px, "variant": s.variant, "q_tokens": s.q_tokens,
                         "kv_tokens": s.kv_tokens, "measured_s": s.median_s,
                         "roofline_s": gpu_s, "host_s": host_s, "predicted_s": pred,
                         "rel_err": pred / s.median_s - 1})
    return {"profile": str(path), "model": model.name, "gpu": gpu.name,
            "efficiency": gpu.efficiency, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profiles", nargs="+", help="GPU compute profiles (profiles.collect)")
    p.add_argument("--rows", action="store_true", help="print every row")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    results = [compare(f) for f in a.profiles]
    if a.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'model':14s} {'px':>5s} {'variant':8s} {'rows':>4s} {'median |err|':>12s} "
          f"{'range':>17s}")
    for r in results:
        keys = sorted({(x["resolution"], x["variant"]) for x in r["rows"]})
        for px, v in keys:
            xs = [x for x in r["rows"] if (x["resolution"], x["variant"]) == (px, v)]
            errs = [x["rel_err"] for x in xs]
            print(f"{r['model']:14s} {px:5d} {v:8s} {len(xs):4d} "
                  f"{statistics.median(abs(e) for e in errs) * 100:11.1f}% "
                  f"{min(errs) * 100:+7.1f} .. {max(errs) * 100:+5.1f}%")
            if a.rows:
                for x in sorted(xs, key=lambda x: x["q_tokens"]):
                    print(f"    q={x['q_tokens']:6d}  measured {x['measured_s'] * 1e3:8.3f} ms"
                          f"  roofline {x['roofline_s'] * 1e3:8.3f}  host {x['host_s'] * 1e3:6.3f}"
                          f"  {x['rel_err'] * 100:+6.1f}%")
    return 0


if __name__ == "__main__":
    run_main(main)
