"""The planner's report: ranked configurations, the recommended timeline, latency by strategy,
memory against capacity, PCIe against NVLink, latency against GPU count."""

from __future__ import annotations

from pathlib import Path

from reports.figures import bars, gantt, grouped, lines, stacked_memory
from reports.html import table_html, write_page
from sim.evaluate import Prediction


def ranked_table(ranked: list[Prediction]) -> str:
    """Every simulated configuration as a sortable table."""
    serial = next((p for p in ranked if p.config.strategy == "serial"), None)
    cols = ["#", "configuration", "family", "gpus", "latency s", "speedup", "memory GB",
            "bubble %", "exposed comm ms", "MB/step", "fits"]
    rows, classes = [], []
    for i, p in enumerate(ranked, 1):
        m = p.metrics
        rows.append([i, p.config.label(), p.config.strategy, p.config.gpus, p.latency_s,
                     serial.latency_s / p.latency_s if serial else float("nan"), p.memory_gb,
                     100 * m.bubble_fraction, 1e3 * max(m.exposed_comm_s),
                     m.comm_bytes_per_step / 1e6, "OOM" if p.oom else "yes"])
        classes.append("oom" if p.oom else "")
    return table_html(cols, rows, classes)


def write_plan_report(path: str | Path, title: str, intro: str, ranked: list[Prediction],
                      recommended: Prediction, per_family: list[Prediction],
                      links: dict[str, dict[str, float]], link_note: str,
                      by_gpus: dict[str, dict[int, float]]) -> None:
    """Write the planner report. ``links`` maps link -> family -> best latency (s);
    ``by_gpus`` maps family -> GPU count -> best latency (s)."""
    rec = recommended
    fams = [p.config.strategy + ": " + p.config.label() for p in per_family]
    sections: list[tuple[str, object]] = [
        ("Ranked configurations (click a header to sort)", ranked_table(ranked)),
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
    write_page(path, title, sections, intro)
