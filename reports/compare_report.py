"""The comparison report: strategies x resolutions as a table and as charts."""

from __future__ import annotations

from pathlib import Path

from reports.figures import grouped
from reports.html import fixed, table_html, write_page
from sim.evaluate import Prediction


def write_compare_report(path: str | Path, title: str, intro: str, resolutions: list[int],
                         cells: dict[str, dict[int, Prediction]],
                         missing: dict[str, str]) -> None:
    """Write the comparison report (latency, speedup and memory per strategy family)."""
    serial = cells.get("serial", {})
    cols = ["strategy", "configuration at the largest size"]
    for r in resolutions:
        cols += [f"{r} px latency s", f"{r} px speedup", f"{r} px GB/GPU", f"{r} px fits"]
    rows, classes = [], []
    for fam, row in cells.items():
        if not row:
            continue
        last = row.get(resolutions[-1])
        line: list = [fam, last.config.label() if last else ""]
        for r in resolutions:
            p = row.get(r)
            if p is None:
                line += ["n/a", "n/a", "n/a", "n/a"]
                continue
            speed = serial[r].latency_s / p.latency_s if r in serial else float("nan")
            line += [p.latency_s, speed, p.memory_gb, "OOM" if p.oom else "yes"]
        rows.append(line)
        classes.append("oom" if any(p.oom for p in row.values()) else "")
    # Per resolution: latency, speedup, GB per GPU (then the fits column).
    formats = {2 + 4 * i + k: f for i in range(len(resolutions))
               for k, f in enumerate((fixed(3, " s"), fixed(2, "x"), fixed(1)))}
    fams = [f for f, row in cells.items() if row]
    labels = [f"{r} px" for r in resolutions]
    lat = {f: [cells[f][r].latency_s if r in cells[f] else None for r in resolutions]
           for f in fams}
    speed = {f: [serial[r].latency_s / cells[f][r].latency_s if r in cells[f] and r in serial
                 else None for r in resolutions] for f in fams}
    mem = {f: [cells[f][r].memory_gb if r in cells[f] else None for r in resolutions]
           for f in fams}
    # An OOM note reads on its own ("OOM at 4096 px"); others say why the row is n/a.
    notes = "".join(f"<p class='note'>{f}: {'' if why.startswith('OOM') else 'n/a, '}{why}</p>"
                    for f, why in missing.items())
    write_page(path, title, [
        ("Strategies x resolutions (click a header to sort)", table_html(cols, rows, classes,
                                                                          formats) + notes),
        ("Latency", grouped(labels, lat, "latency per strategy", "seconds", log=True)),
        ("Speedup over one GPU", grouped(labels, speed, "speedup", "x")),
        ("Memory per GPU", grouped(labels, mem, "fullest GPU (GB)", "GB")),
    ], intro)
