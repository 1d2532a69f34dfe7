"""The validation report: predicted against measured, error by configuration (and by strategy
family), and for the worst configuration the measured and simulated timelines one above the
other with the ops whose durations disagree most."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from reports.figures import bars, gantt, predicted_vs_measured
from reports.html import table_html, write_page
from sim.trace import Trace


def write_validation_report(path: str | Path, cases: list[Any], rows: list[dict],
                            pairs: list[Any], per_op: Any, elapsed_s: float, args: Any,
                            families: Any = None) -> None:
    """``cases`` carry ``name``, ``trace_path`` and ``prediction``; ``rows`` are the CSV rows;
    ``pairs`` each case's measured and predicted ops joined (a DataFrame per case, as
    ``validation.compare.join_traces`` makes them); ``per_op`` their error per op kind, all
    cases together (``validation.compare.op_error_summary``); ``families`` the error per
    strategy family (indexed by family: ``configs``, ``median`` and ``worst`` absolute
    relative error), shown as a table when given."""
    names = [c.name for c in cases]
    meas = [r["measured_s"] for r in rows]
    pred = [r["predicted_s"] for r in rows]
    errs = [r["rel_err"] for r in rows]
    worst = max(range(len(rows)), key=lambda i: abs(errs[i]))
    c = cases[worst]
    measured = Trace.read_csv(c.trace_path)
    joined = pairs[worst]
    gap = (joined.predicted_s - joined.measured_s).abs()
    # astype(object): Python numbers, which table_html right-aligns and sorts as numbers
    top = [[p.rank, p.op, p.step, p.patch, f"{p.layer_first}-{p.layer_last}", p.tag,
            1e3 * p.measured_s, 1e3 * p.predicted_s, 100 * p.rel_err]
           for p in joined.loc[gap.sort_values(ascending=False, kind="stable").index[:25]]
           .astype(object).itertuples()]
    op_rows = [[p.Index, p.count, p.measured_s, p.predicted_s, 100 * p.rel_err]
               for p in per_op.sort_index().astype(object).itertuples()]
    cfg_rows = [[r["model"], r["resolution"], r["nproc"], r["strategy"], r["patches"],
                 r["warmup"],
                 r["measured_s"], r["predicted_s"], 100 * r["rel_err"], r["measured_runs"],
                 100 * r["measured_iqr"]] for r in rows]
    abs_errs = [abs(e) for e in errs]
    launches = f"{args.repeats} launch{'es' if args.repeats > 1 else ''}"
    intro = (f"{len(rows)} configurations, {args.grid} grid, {launches} each "
             f"(median of all measured runs kept), device {args.device}, {elapsed_s:.0f} s in "
             f"all. Median |error| "
             f"{statistics.median(abs_errs):.1%}, worst {max(abs_errs):.1%}. Times are the "
             f"denoising loop; predictions use this machine's measured profiles.")
    warm = c.prediction.config.warmup
    write_page(path, "ditsim validation: predicted against measured", [
        ("Predicted against measured", predicted_vs_measured(meas, pred, names,
                                                             "loop latency per configuration")),
        ("Error by configuration", bars(names, [100 * e for e in errs],
                                        "relative error of the prediction (%)", "%",
                                        ["#c44" if abs(e) > 0.15 else "#4c78a8" for e in errs])),
        ("Configurations (click a header to sort)",
         table_html(["model", "px", "processes", "strategy", "M", "W", "measured s",
                     "predicted s", "error %", "runs", "run-to-run IQR %"], cfg_rows)),
        *([("Error per strategy family",
            table_html(["family", "configurations", "median |error| %", "worst |error| %"],
                       [[f.Index, f.configs, 100 * f.median, 100 * f.worst]
                        for f in families.astype(object).itertuples()]))]
          if families is not None else []),
        ("Error per op kind, all configurations (summed durations)",
         table_html(["op", "count", "measured s", "predicted s", "error %"], op_rows)),
        (f"Measured timeline: {c.name} (largest error)",
         gantt(measured, f"measured {statistics.median(c.measured):.3f} s", warm)),
        (f"Simulated timeline: {c.name}",
         gantt(c.prediction.trace, f"predicted {c.prediction.latency_s:.3f} s", warm)),
        (f"Ops of {c.name} whose durations disagree most",
         table_html(["rank", "op", "step", "patch", "layers", "tag", "measured ms",
                     "predicted ms", "error %"], top)),
    ], intro)
