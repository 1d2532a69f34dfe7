"""How well a measured profile predicts block times it was not measured at.

Target (issue 4): inside the measured range, the predicted block time is within 5 % of a fresh
measurement of the same shape. The script predicts block shapes that are *not* on the
profile's grid (PipeFusion patch counts M = 3, 5, 6, 12 at the profiled resolutions, and
resolutions a quarter, half and three quarters of the way between profiled ones with M = 1..4)
with ``sim.cost.profile.ProfileCost`` and compares each with a fresh measurement taken with the
collector's own harness (same clock, threads, warm-up, repeats and interleaved passes).

Two modes:

- default: collect a fresh profile (the shipped profile's settings) and, in the same
  interleaved passes, the off-grid shapes; this isolates the interpolation error from the
  machine's drift between two sessions.
- ``--profile FILE``: predict from that file (e.g. the shipped one) and measure the off-grid
  shapes and the grid shapes now; the grid shapes show how far the machine has drifted since
  the profile was taken (the floor under any prediction error).

    python benchmarks/bench_profile_accuracy.py [--model pixart-small] [--profile FILE]
                                                [--json OUT]

Exit status 0 when the interpolated shapes meet the target, 1 when not, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from executor.op_runner import PixArtRunner  # noqa: E402
from profiles.compute import collect_with  # noqa: E402
from profiles.device import device_name, device_slug  # noqa: E402
from profiles.grid import block_grid  # noqa: E402
from profiles.settings import Settings, default_settings  # noqa: E402
from profiles.timing import measure_tasks  # noqa: E402
from sim.config import Workload  # noqa: E402
from sim.cost.profile import ProfileCost  # noqa: E402
from sim.cost.profile_format import ComputeProfile  # noqa: E402
from sim.errors import UserError  # noqa: E402
from sim.hardware import GPUS  # noqa: E402
from sim.models import DiTModel, get_model  # noqa: E402
from sim.schedule import Compute  # noqa: E402

TARGET = 0.05
OFF_GRID_PATCHES = (3, 5, 6, 12)
BETWEEN_PATCHES = (1, 2, 3, 4)


def off_grid(m: DiTModel, resolutions: list[int], grid: set[tuple[int, int]]
             ) -> list[tuple[int, int, int]]:
    """(resolution, q, kv) block shapes inside the measured range but not on its grid."""
    res = sorted(resolutions)
    step = m.vae_factor * m.patch_size
    between = sorted({(a + (b - a) * k // 4) // step * step for a, b in zip(res, res[1:])
                      for k in (1, 2, 3)} - set(res))
    out = []
    for r in res + between:
        rows, cols = m.token_grid(r, r)
        for mm in (OFF_GRID_PATCHES if r in res else BETWEEN_PATCHES):
            q = math.ceil(rows / mm) * cols
            if mm <= rows and (q, rows * cols) not in grid:
                out.append((r, q, rows * cols))
    return out


def settings_of(prof: ComputeProfile, model: DiTModel) -> Settings:
    """The collector settings a profile was taken with (from its metadata)."""
    m = prof.meta
    return Settings(model=model, device="cpu", dtype=m["dtype"],
                    resolutions=tuple(m["resolutions"]), patches=tuple(m["patches"]),
                    threads=m["threads"], repeats=m["repeats"], warmup=m["warmup"],
                    min_total_s=m["min_total_s"], head_shards=(), quick=False,
                    clock=m.get("clock", "wall"), passes=m.get("passes", 1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="pixart-small", help="model of a fresh profile")
    ap.add_argument("--profile", help="predict from this CPU profile instead of a fresh one")
    ap.add_argument("--repeats", type=int, help="timed calls per shape of a fresh profile "
                    "(default: the collector's 7)")
    ap.add_argument("--json", help="write the per-shape results here")
    a = ap.parse_args(argv)
    import torch

    try:
        if a.profile:
            prof = ComputeProfile.read(a.profile)
            model = get_model(prof.model)
            if prof.meta["device"] != "cpu":
                raise UserError("this benchmark re-measures on the CPU; pass a CPU profile")
            here = device_slug("cpu", device_name("cpu"), prof.meta["threads"])
            if here != prof.meta.get("device_key"):
                print(f"warning: profile measured on {prof.meta.get('device_key')}, this is "
                      f"{here}", file=sys.stderr)
            s = settings_of(prof, model)
            grid = {(x.q_tokens, x.kv_tokens) for x in prof.select("block")}
            shapes = [(r, q, kv) for r in s.resolutions for q, kv in sorted(grid, reverse=True)
                      if kv == model.image_tokens(r)]
            shapes += off_grid(model, list(s.resolutions), grid)
            torch.set_num_threads(s.threads)
            runner = PixArtRunner(model, s.device, s.dtype, s.resolutions, s.seed)
            times = measure_tasks(runner, s, [("block", "", r, q, kv, model.heads)
                                              for r, q, kv in shapes])
        else:
            model = get_model(a.model)
            s = default_settings(model, "cpu", "fp32", None, False, 1, a.repeats, None)
            grid = {(q, kv) for _, q, kv in block_grid(model, s.resolutions, s.patches)}
            shapes = off_grid(model, list(s.resolutions), grid)
            prof, times = collect_with(s, [("block", "", r, q, kv, model.heads)
                                           for r, q, kv in shapes], progress=False)
            prof.path = "fresh profile"
        res = max(prof.meta["resolutions"])
        cost = ProfileCost(Workload(model, res, res, 1, prof.meta["dtype"]), GPUS["cpu"], prof)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    meta = prof.meta
    print(f"{prof.path or 'profile'}: {model.name}, {meta['device_name']}, {meta['threads']} "
          f"thread(s), {meta['dtype']}, {meta.get('clock', 'wall')} clock, taken "
          f"{meta['date']}; load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
          f"cores")
    print(f"{'px':>5} {'q':>6} {'kv':>6} {'source':>12} {'predicted ms':>13} {'fresh ms':>10} "
          f"{'error':>8}")
    rows = []
    for (r, q, kv), t in zip(shapes, times):
        pred, src = cost.estimate(Compute("blocks", 1, 0, (0, 0), q, kv, model.batch))
        fresh = statistics.median(t)
        err = pred / fresh - 1.0
        rows.append({"resolution": r, "q": q, "kv": kv, "source": src, "predicted_s": pred,
                     "fresh_s": fresh, "error": err})
        print(f"{r:>5} {q:>6} {kv:>6} {src:>12} {pred * 1e3:>13.3f} {fresh * 1e3:>10.3f} "
              f"{err * 100:>7.2f}%")

    def stats(sel: list[dict]) -> dict:
        e = [abs(x["error"]) for x in sel]
        return {"shapes": len(e), "median_abs_error": statistics.median(e) if e else None,
                "max_abs_error": max(e) if e else None,
                "mean_error": statistics.fmean(x["error"] for x in sel) if e else None,
                "within_target": sum(x <= TARGET for x in e)}

    inside = [x for x in rows if x["source"] == "interpolated"]
    summary = {"profile": prof.path, "model": model.name, "target": TARGET,
               "interpolated": stats(inside),
               "remeasured_grid": stats([x for x in rows if x["source"] == "measured"]),
               "loadavg_1min": os.getloadavg()[0], "date": meta["date"]}
    for name in ("interpolated", "remeasured_grid"):
        st = summary[name]
        if st["shapes"]:
            print(f"{name}: {st['shapes']} shapes, median |error| "
                  f"{st['median_abs_error'] * 100:.2f} %, max {st['max_abs_error'] * 100:.2f} "
                  f"%, mean {st['mean_error'] * 100:+.2f} %, {st['within_target']} within "
                  f"{TARGET * 100:.0f} %")
    if a.json:
        Path(a.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    ok = bool(inside) and summary["interpolated"]["max_abs_error"] <= TARGET
    print("target met" if ok else "target missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
