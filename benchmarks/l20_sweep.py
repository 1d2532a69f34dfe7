"""Prediction error on the published PixArt-alpha PipeFusion sweep on 8 x L20 (PCIe Gen4).

Calibration uses only the single-GPU rows (``--single-gpu-latency`` per resolution); every
PipeFusion row is then predicted from physics. The source's warmup count is uncertain (1 or
2), so both are reported. Run: ``python benchmarks/l20_sweep.py [--csv PATH] [--warmup N]``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

from sim.config import ParallelConfig, Workload
from sim.evaluate import calibration_scale, evaluate
from sim.hardware import get_gpu
from sim.models import get_model
from sim.topology import build_topology

DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "l20-pipefusion-sweep.csv"


def run(path: Path, warmup: int | None, include_vae: bool) -> list[dict]:
    rows = list(csv.DictReader(open(path)))
    gpu = get_gpu("l20")
    topo = build_topology(gpu, 8, "pcie")
    scales = {}
    out = []
    for r in rows:
        res, steps = int(r["resolution"]), int(r["steps"])
        # The source times the transformer loop with the VAE; the text encoder is not part of
        # its measurement (prompts are encoded once, outside the timed region).
        wl = Workload(get_model(r["model"]), res, res, steps, text_encoder=False, vae=include_vae)
        if int(r["gpus"]) == 1:
            scales[res] = calibration_scale(wl, gpu, float(r["latency_s"]))
    for r in rows:
        if r["strategy"] != "pipefusion":
            continue
        res, steps, n = int(r["resolution"]), int(r["steps"]), int(r["gpus"])
        wl = Workload(get_model(r["model"]), res, res, steps, text_encoder=False, vae=include_vae)
        w = int(r["warmup"]) if warmup is None else warmup
        pred = evaluate(wl, ParallelConfig(n, n, int(r["patches"]), w), gpu, topo,
                        scale=scales[res]).latency_s
        meas = float(r["latency_s"])
        out.append({"gpus": n, "patches": int(r["patches"]), "resolution": res,
                    "measured_s": meas, "predicted_s": pred, "rel_err": pred / meas - 1})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--warmup", type=int, default=None, help="override the CSV's warmup")
    ap.add_argument("--no-vae", action="store_true", help="assume the VAE was not timed")
    ap.add_argument("--rows", action="store_true", help="print every row")
    args = ap.parse_args()
    res = run(args.csv, args.warmup, not args.no_vae)
    errs = [abs(r["rel_err"]) for r in res]
    if args.rows:
        print(f"{'gpus':>4} {'M':>3} {'res':>5} {'measured':>9} {'predicted':>9} {'err':>7}")
        for r in res:
            print(f"{r['gpus']:>4} {r['patches']:>3} {r['resolution']:>5} {r['measured_s']:>9.3f}"
                  f" {r['predicted_s']:>9.3f} {r['rel_err']:>+7.1%}")
    print(f"{len(res)} PipeFusion rows, warmup={args.warmup if args.warmup is not None else 'csv'}"
          f", vae={'no' if args.no_vae else 'yes'}: median |error| "
          f"{statistics.median(errs):.1%}, worst {max(errs):.1%}")


if __name__ == "__main__":
    main()
