"""The planner's report: the recommendation and why it wins first, then the recommended
timeline, latency by strategy, memory against capacity, PCIe against NVLink, latency against
GPU count, and last the ranked configurations, folded (``<details>``) with their legend."""

from __future__ import annotations

import html
from pathlib import Path

from reports.figures import bars, gantt, grouped, lines, stacked_memory
from reports.html import fixed, ms, percent, table_html, write_page
from sim.evaluate import Prediction
from sim.plan import LEGEND


def ranked_table(ranked: list[Prediction]) -> str:
    """Every simulated configuration as a sortable table."""
    serial = next((p for p in ranked if p.config.strategy == "serial"), None)
    cols = ["#", "configuration", "family", "gpus", "latency", "speedup", "memory GB",
            "bubble", "exposed comm", "MB/step", "fits"]
    rows, classes = [], []
    for i, p in enumerate(ranked, 1):
        m = p.metrics
        rows.append([i, p.config.label(), p.config.strategy, p.config.gpus, p.latency_s,
                     serial.latency_s / p.latency_s if serial else float("nan"), p.memory_gb,
                     m.bubble_fraction, max(m.exposed_comm_s), m.comm_bytes_per_step / 1e6,
                     "OOM" if p.oom else "yes"])
        classes.append("oom" if p.oom else "")
    return table_html(cols, rows, classes, {4: fixed(3, " s"), 5: fixed(2, "x"),
                                            6: fixed(1), 7: percent, 8: ms, 9: fixed(1)})


def answer_html(recommended: Prediction, why: str, riskier: str | None) -> str:
    """The recommendation, why it wins (one item per reason) and the faster, riskier
    alternative when there is one."""
    rec = recommended
    head = (f"<p><b>Recommended: {html.escape(rec.config.label())} on {rec.config.gpus} "
            f"GPU{'s' if rec.config.gpus > 1 else ''}</b>: {rec.latency_s:.3f} s, "
            f"{rec.memory_gb:.1f} GB per GPU{' (does NOT fit)' if rec.oom else ''}</p>")
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in why.split("; ") if r)
    alt = f"<p>{html.escape(riskier)}</p>" if riskier else ""
    return f"<div class='answer'>{head}<p>Why:</p><ul>{reasons}</ul>{alt}</div>"


def folded_table(ranked: list[Prediction]) -> str:
    """The ranking, folded under a summary line, with the columns' legend."""
    legend = html.escape(LEGEND.replace("\n  ", " "))
    return (f"<details><summary>Ranked configurations: {len(ranked)} simulated (click to "
            f"open; click a header to sort)</summary>{ranked_table(ranked)}"
            f"<p class='note'>{legend}</p></details>")


def write_plan_report(path: str | Path, title: str, intro: str, ranked: list[Prediction],
                      recommended: Prediction, per_family: list[Prediction],
                      links: dict[str, dict[str, float]], link_note: str,
                      by_gpus: dict[str, dict[int, float]], why: str,
                      riskier: str | None = None) -> None:
    """Write the planner report. ``links`` maps link -> family -> best latency (s);
    ``by_gpus`` maps family -> GPU count -> best latency (s); ``why`` is ``sim.plan``'s why
    line and ``riskier`` its faster, riskier alternative (or None)."""
    rec = recommended
    fams = [p.config.strategy + ": " + p.config.label() for p in per_family]
    sections: list[tuple[str, object]] = [
        ("Recommendation", answer_html(rec, why, riskier)),
        (f"Timeline of the recommendation: {rec.config.label()} on {rec.config.gpus} GPUs",
         gantt(rec.trace, f"{rec.latency_s:.3f} s; lighter bars are synchronous warmup steps, "
               "gaps in a compute lane are bubbles", rec.config.warmup)),
        ("Latency by strategy (best of each family)",
         bars(fams, [p.latency_s for p in per_family], "best latency per strategy family",
              "seconds", ["#c44" if p.oom else "#4c78a8" for p in per_family],
              [f"{p.latency_s:.3g} s" + (" OOM" if p.oom else "") for p in per_family])),
        ("Memory per GPU of the recommendation against capacity",
         stacked_memory([m.as_dict() for m in rec.memory], rec.gpu.memory_bytes / 1e9,
                        f"{rec.config.label()}: memory per rank")),
        ("Memory of the fullest GPU, best of each family",
         bars(fams, [p.memory_gb for p in per_family], "fullest GPU per family (GB); red: "
              "does not fit", "GB", ["#c44" if p.oom else "#54a24b" for p in per_family])),
    ]
    if links:
        families = sorted({f for d in links.values() for f in d})
        sections.append((f"PCIe against NVLink ({link_note})",
                         grouped(families, {k: [v.get(f) for f in families]
                                            for k, v in links.items()},
                                 "best latency per family", "seconds", log=True)))
    if by_gpus:
        counts = sorted({n for d in by_gpus.values() for n in d})
        sections.append(("Latency against GPU count",
                         lines(counts, {f: [d.get(n) for n in counts]
                                        for f, d in by_gpus.items()},
                               "best latency per family using exactly that many GPUs",
                               "GPUs", "seconds")))
    sections.append(("Every configuration simulated", folded_table(ranked)))
    write_page(path, title, sections, intro)
