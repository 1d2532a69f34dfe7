"""Score the simulator against published multi-GPU measurements (issue 10's benchmark).

Each row of the CSV is one measured configuration (model, GPU, link, GPU count, parallel
degrees, patches, warmup, resolution, steps, latency or ``OOM``). Rows are grouped by
(set, model, GPU, link, resolution, steps); each group is calibrated only by its own
single-GPU row through ``--single-gpu-latency`` (as a user would), and every other row is
predicted by the same code path as ``python -m sim.predict``. Nothing is fitted to the rows.

Printed: per-row errors (``--rows``), the contest table (within one group and GPU count, is
the configuration predicted fastest the one measured fastest; regret = measured latency of
the pick / measured best) and one summary line: median and worst absolute error, rows within
20 %, out-of-memory agreement, contests won, geometric-mean regret.

Run: ``python benchmarks/published.py [CSV ...] [--rows] [--json]`` (default: both shared
CSVs, ``../shared/data/published-dev.csv`` and ``l20-pipefusion-sweep.csv``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sim.errors import UserError
from sim.predict import build_parser, predict

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_CSVS = [DATA / "published-dev.csv", DATA / "l20-pipefusion-sweep.csv"]
DEGREES = ("pipefusion", "ulysses", "ring", "cfg", "tensor", "distrifusion")


@dataclass
class Row:
    """One measured configuration and what the simulator says of it."""

    set: str
    model: str
    gpu: str
    link: str
    gpus: int
    degrees: dict[str, int]
    patches: str
    warmup: int
    resolution: int
    steps: int
    measured_s: float | None  # None: the source ran out of memory
    label: str
    predicted_s: float | None = None
    predicted_oom: bool = False
    error: str = ""  # the simulator refused the configuration (why)
    config: str = ""  # the simulator's label, with the patch count it chose
    extra: dict = field(default_factory=dict)

    @property
    def group(self) -> tuple:
        return (self.set, self.model, self.gpu, self.link, self.resolution, self.steps)

    @property
    def rel_err(self) -> float | None:
        if self.measured_s is None or self.predicted_s is None or self.predicted_oom:
            return None
        return self.predicted_s / self.measured_s - 1


def read_rows(path: Path) -> list[Row]:
    """Rows of a published-measurement CSV (columns as in ``../shared/data``)."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            lat = r["latency_s"].strip()
            degrees = {k: int(r.get(k) or 1) for k in DEGREES}
            out.append(Row(
                set=r.get("set") or path.stem, model=r["model"], gpu=r["gpu"], link=r["link"],
                gpus=int(r["gpus"]), degrees=degrees, patches=r.get("patches") or "auto",
                warmup=int(r.get("warmup") or 0), resolution=int(r["resolution"]),
                steps=int(r["steps"]), measured_s=None if lat.upper() == "OOM" else float(lat),
                label=r.get("strategy") or ""))
    return out


def _argv(row: Row, single_gpu_s: float | None) -> list[str]:
    argv = ["--model", row.model, "--gpu", row.gpu, "--link", row.link,
            "--gpus", str(row.gpus), "--resolution", str(row.resolution),
            "--steps", str(row.steps), "--no-text-encoder",
            "--patches", row.patches, "--warmup", str(row.warmup)]
    for k, v in row.degrees.items():
        argv += [f"--{k}", str(v)]
    if single_gpu_s is not None:
        argv += ["--single-gpu-latency", repr(single_gpu_s)]
    return argv


def predict_rows(rows: list[Row], calibrate: bool = True) -> None:
    """Fill in each row's prediction, calibrated by its group's single-GPU row."""
    single = {r.group: r.measured_s for r in rows if r.gpus == 1 and r.measured_s}
    parser = build_parser()
    for r in rows:
        cal = single.get(r.group) if calibrate else None
        try:
            pred = predict(parser.parse_args(_argv(r, cal)))
        except UserError as e:
            r.error = str(e)
            continue
        r.predicted_s = pred.latency_s
        r.predicted_oom = pred.oom
        r.config = pred.config.label()
        r.extra = {"exposed_comm_s": pred.metrics.exposed_comm_s,
                   "bubble_fraction": pred.metrics.bubble_fraction}


@dataclass
class Contest:
    """Configurations measured on the same hardware, model, resolution and GPU count."""

    key: tuple
    rows: list[Row]
    best: Row  # measured fastest
    pick: Row | None  # predicted fastest (among those predicted to fit)

    @property
    def won(self) -> bool:
        return self.pick is self.best

    @property
    def regret(self) -> float | None:
        """Measured latency of the pick over the measured best; None when the pick ran out
        of memory in the measurement."""
        if self.pick is None or self.pick.measured_s is None:
            return None
        assert self.best.measured_s is not None
        return self.pick.measured_s / self.best.measured_s


def contests(rows: list[Row]) -> list[Contest]:
    """One contest per (group, GPU count > 1) with at least two measured configurations."""
    by: dict[tuple, list[Row]] = {}
    for r in rows:
        if r.gpus > 1:
            by.setdefault(r.group + (r.gpus,), []).append(r)
    out = []
    for key, rs in by.items():
        measured = [r for r in rs if r.measured_s is not None]
        if len(rs) < 2 or not measured:
            continue
        best = min(measured, key=lambda r: r.measured_s)
        fits = [r for r in rs if r.predicted_s is not None and not r.predicted_oom]
        pick = min(fits, key=lambda r: r.predicted_s) if fits else None
        out.append(Contest(key, rs, best, pick))
    return out


def summary(rows: list[Row]) -> dict:
    """The headline figures of one CSV (calibration rows are left out of the errors)."""
    scored = [r for r in rows if r.gpus > 1]
    errs = [abs(r.rel_err) for r in scored if r.rel_err is not None]
    oom_known = [r for r in scored if r.predicted_s is not None]
    agree = sum((r.measured_s is None) == r.predicted_oom for r in oom_known)
    cs = contests(rows)
    regrets = [c.regret for c in cs if c.regret is not None]
    return {
        "rows": len(scored),
        "scored": len(errs),
        "refused": sum(1 for r in scored if r.error),
        "median_abs_err": statistics.median(errs) if errs else math.nan,
        "worst_abs_err": max(errs) if errs else math.nan,
        "within_20pct": sum(e <= 0.2 for e in errs) / len(errs) if errs else math.nan,
        "oom_agreement": agree / len(oom_known) if oom_known else math.nan,
        "contests": len(cs),
        "contests_won": sum(c.won for c in cs),
        "geomean_regret": math.exp(statistics.fmean(math.log(x) for x in regrets))
        if regrets else math.nan,
        "picks_oom": sum(1 for c in cs if c.pick is not None and c.regret is None),
    }


def _fmt_s(x: float | None) -> str:
    return "OOM" if x is None else f"{x:.3f}"


def print_rows(rows: list[Row]) -> None:
    print(f"{'set':<24} {'model':<13} {'gpu':<13} {'n':>2} {'res':>5} {'config':<28} "
          f"{'measured':>9} {'predicted':>9} {'err':>7}")
    for r in rows:
        if r.gpus == 1:
            continue
        pred = "refused" if r.error else ("OOM" if r.predicted_oom else _fmt_s(r.predicted_s))
        err = f"{r.rel_err:+.1%}" if r.rel_err is not None else ""
        if r.measured_s is None or r.predicted_oom:
            err = "agree" if (r.measured_s is None) == r.predicted_oom else "OOM miss"
        print(f"{r.set[:24]:<24} {r.model[:13]:<13} {r.gpu[:13]:<13} {r.gpus:>2} "
              f"{r.resolution:>5} {(r.config or r.label)[:28]:<28} {_fmt_s(r.measured_s):>9} "
              f"{pred:>9} {err:>7}")


def print_contests(rows: list[Row]) -> None:
    print(f"{'set':<24} {'model':<13} {'gpu':<13} {'n':>2} {'res':>5} {'measured best':<24} "
          f"{'predicted pick':<24} {'regret':>7}")
    for c in contests(rows):
        s, model, gpu, _, res, _, n = c.key
        pick = c.pick.label + " " + (c.pick.config or "") if c.pick else "-"
        regret = "OOM" if c.regret is None else f"{c.regret:.2f}x"
        mark = "" if c.won else "  *"
        print(f"{s[:24]:<24} {model[:13]:<13} {gpu[:13]:<13} {n:>2} {res:>5} "
              f"{(c.best.label + ' ' + c.best.config)[:24]:<24} {pick[:24]:<24} "
              f"{regret:>7}{mark}")


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
            rows = [r for r in rows if r.set.startswith(args.set)]
        predict_rows(rows)
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
