"""Score the simulator against published multi-GPU measurements (issue 10's benchmark).

Each row of the CSV is one measured configuration (model, GPU, link, GPU count, parallel
degrees, patches, warmup, resolution, steps, latency or ``OOM``). Rows are grouped by
(set, model, GPU, link, resolution, steps); each group is calibrated only by its own
single-GPU row through ``--single-gpu-latency`` (as a user would), and every other row is
predicted by the same code path as ``python -m sim.predict``. Nothing is fitted to the rows.
The text encoder counts, in latency and memory, as ``sim.predict``'s default: the sources'
example scripts move the whole pipeline onto each GPU and time the whole pipeline call.

Printed: per-row errors (``--rows``), the contest table (within one group and GPU count, is
the configuration predicted fastest the one measured fastest; regret = measured latency of
the pick / measured best) and one summary line: median and worst absolute error, rows within
20 %, out-of-memory agreement, contests won, geometric-mean regret.

Run: ``python benchmarks/published.py [CSV ...] [--rows] [--json]`` (default: both shared
CSVs, ``../shared/data/published-dev.csv`` and ``l20-pipefusion-sweep.csv``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from sim.errors import UserError
from sim.predict import build_parser, predict

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_CSVS = [DATA / "published-dev.csv", DATA / "l20-pipefusion-sweep.csv"]
DEGREES = ("pipefusion", "ulysses", "ring", "cfg", "tensor", "distrifusion")
# The rows of one group are calibrated by its single-GPU row.
GROUP = ["set", "model", "gpu", "link", "resolution", "steps"]
INTS = ["gpus", "warmup", "resolution", "steps", *DEGREES]
# What the simulator says of a row it refused.
REFUSED = {"predicted_s": math.nan, "predicted_oom": False, "error": "", "config": "",
           "exposed_comm_s": math.nan, "bubble_fraction": math.nan}


def read_rows(path: Path) -> pd.DataFrame:
    """One row per measured configuration of a published-measurement CSV (columns as in
    ``../shared/data``; an empty or missing set, degree, patches or warmup reads as the file's
    name, 1, ``auto`` and 0): ``GROUP``, ``gpus``, the degrees, ``patches``, ``warmup``,
    ``label`` (the CSV's strategy) and ``measured_s`` (seconds; NaN where the source ran out of
    memory)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    defaults = {"set": path.stem, "patches": "auto", "warmup": "0", "strategy": "",
                **dict.fromkeys(DEGREES, "1")}
    for col, default in defaults.items():
        df[col] = df[col].replace("", default) if col in df else default
    latency = df["latency_s"].str.strip()
    return df.astype(dict.fromkeys(INTS, int)).assign(
        label=df["strategy"], measured_s=latency.mask(latency.str.upper() == "OOM").astype(float))


def _argv(row: Any, single_gpu_s: float) -> list[str]:
    argv = ["--model", row.model, "--gpu", row.gpu, "--link", row.link,
            "--gpus", str(row.gpus), "--resolution", str(row.resolution),
            "--steps", str(row.steps),
            "--patches", row.patches, "--warmup", str(row.warmup)]
    for k in DEGREES:
        argv += [f"--{k}", str(getattr(row, k))]
    if not math.isnan(single_gpu_s):
        argv += ["--single-gpu-latency", repr(float(single_gpu_s))]
    return argv


def predict_rows(rows: pd.DataFrame, calibrate: bool = True) -> pd.DataFrame:
    """``rows`` with what the simulator says of each, calibrated by its group's single-GPU
    row: ``predicted_s`` (NaN when refused), ``predicted_oom``, ``error`` (why it refused),
    ``config`` (its label, with the patch count it chose), ``exposed_comm_s``,
    ``bubble_fraction`` and ``rel_err`` (predicted over measured - 1; NaN without both)."""
    single = rows[(rows.gpus == 1) & (rows.measured_s > 0)].groupby(GROUP).measured_s.last()
    cal = rows.join(single.rename("cal"), on=GROUP)["cal"] if calibrate else \
        pd.Series(math.nan, index=rows.index)
    parser = build_parser()
    out = []
    for r, c in zip(rows.itertuples(), cal):
        try:
            pred = predict(parser.parse_args(_argv(r, c)))
        except UserError as e:
            out.append({**REFUSED, "error": str(e)})
            continue
        out.append({**REFUSED, "predicted_s": pred.latency_s, "predicted_oom": pred.oom,
                    "config": pred.config.label(),
                    "exposed_comm_s": pred.metrics.exposed_comm_s,
                    "bubble_fraction": pred.metrics.bubble_fraction})
    rows = rows.join(pd.DataFrame(out, index=rows.index))
    return rows.assign(rel_err=(rows.predicted_s / rows.measured_s - 1)
                       .where(~rows.predicted_oom))


def contests(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per contest: configurations of one group and GPU count > 1, at least two, one
    of them measured. Columns: ``GROUP``, ``gpus``, ``best`` (label and config of the one
    measured fastest), ``pick`` (of the one predicted fastest among those predicted to fit;
    None when none is), ``won`` and ``regret`` (measured latency of the pick over the measured
    best; NaN when the pick ran out of memory in the measurement, or there is none)."""
    out = []
    for key, g in rows[rows.gpus > 1].groupby(GROUP + ["gpus"], sort=False):
        if len(g) < 2 or g.measured_s.isna().all():
            continue
        best = g.loc[g.measured_s.idxmin()]
        fits = g.predicted_s[~g.predicted_oom].dropna()
        pick = g.loc[fits.idxmin()] if len(fits) else None
        out.append((*key, best.label + " " + best.config,
                    None if pick is None else pick.label + " " + pick.config,
                    pick is not None and pick.name == best.name,
                    math.nan if pick is None else pick.measured_s / best.measured_s))
    return pd.DataFrame(out, columns=[*GROUP, "gpus", "best", "pick", "won", "regret"])


def summary(rows: pd.DataFrame) -> dict:
    """The headline figures of one CSV (calibration rows are left out of the errors)."""
    scored = rows[rows.gpus > 1]
    errs = scored.rel_err.abs().dropna()
    known = scored[scored.predicted_s.notna()]
    cs = contests(rows)
    regrets = cs.regret.dropna()
    return {
        "rows": len(scored),
        "scored": len(errs),
        "refused": int((scored.error != "").sum()),
        "median_abs_err": errs.median(),
        "worst_abs_err": errs.max(),
        "within_20pct": (errs <= 0.2).mean(),
        "oom_agreement": (known.measured_s.isna() == known.predicted_oom).mean(),
        "contests": len(cs),
        "contests_won": int(cs.won.sum()),
        "geomean_regret": statistics.geometric_mean(regrets) if len(regrets) else math.nan,
        "picks_oom": int((cs.pick.notna() & cs.regret.isna()).sum()),
    }


def _fmt_s(x: float) -> str:
    return "OOM" if math.isnan(x) else f"{x:.3f}"


def print_rows(rows: pd.DataFrame) -> None:
    print(f"{'set':<24} {'model':<13} {'gpu':<13} {'n':>2} {'res':>5} {'config':<28} "
          f"{'measured':>9} {'predicted':>9} {'err':>7}")
    for r in rows[rows.gpus > 1].itertuples():
        pred = "refused" if r.error else ("OOM" if r.predicted_oom else _fmt_s(r.predicted_s))
        err = "" if math.isnan(r.rel_err) else f"{r.rel_err:+.1%}"
        if math.isnan(r.measured_s) or r.predicted_oom:
            err = "agree" if math.isnan(r.measured_s) == r.predicted_oom else "OOM miss"
        print(f"{r.set[:24]:<24} {r.model[:13]:<13} {r.gpu[:13]:<13} {r.gpus:>2} "
              f"{r.resolution:>5} {(r.config or r.label)[:28]:<28} {_fmt_s(r.measured_s):>9} "
              f"{pred:>9} {err:>7}")


def print_contests(rows: pd.DataFrame) -> None:
    print(f"{'set':<24} {'model':<13} {'gpu':<13} {'n':>2} {'res':>5} {'measured best':<24} "
          f"{'predicted pick':<24} {'regret':>7}")
    for c in contests(rows).itertuples():
        regret = "OOM" if math.isnan(c.regret) else f"{c.regret:.2f}x"
        print(f"{c.set[:24]:<24} {c.model[:13]:<13} {c.gpu[:13]:<13} {c.gpus:>2} "
              f"{c.resolution:>5} {c.best[:24]:<24} {(c.pick or '-')[:24]:<24} "
              f"{regret:>7}{'' if c.won else '  *'}")


def summary_line(name: str, s: dict) -> str:
    return (f"{name}: {s['scored']} rows scored, median |error| {s['median_abs_err']:.1%}, "
            f"worst {s['worst_abs_err']:.1%}, within 20 % {s['within_20pct']:.0%}, "
            f"OOM agreement {s['oom_agreement']:.0%}, contests won {s['contests_won']} of "
            f"{s['contests']}, geomean regret {s['geomean_regret']:.3f}x"
            + (f" ({s['picks_oom']} picks OOM)" if s["picks_oom"] else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", nargs="*", type=Path, default=DEFAULT_CSVS,
                    help="published-measurement CSVs (default: both shared ones)")
    ap.add_argument("--rows", action="store_true", help="print every row's error")
    ap.add_argument("--contests", action="store_true", help="print the contest table")
    ap.add_argument("--json", action="store_true", help="print the summaries as JSON")
    ap.add_argument("--set", default=None, metavar="NAME",
                    help="only the rows whose set column starts with NAME")
    args = ap.parse_args(argv)
    results = {}
    for path in args.csv:
        if not path.is_file():
            print(f"error: no such CSV {path}; give the path of a published-measurement CSV",
                  file=sys.stderr)
            return 2
        rows = read_rows(path)
        if args.set:
            rows = rows[rows["set"].str.startswith(args.set)]
        rows = predict_rows(rows)
        results[path.name] = summary(rows)
        if args.rows:
            print_rows(rows)
        if args.contests:
            print_contests(rows)
        if not args.json:
            print(summary_line(path.name, results[path.name]))
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
