"""The serving planner's report: the ranked pool splits, SLO attainment against arrival rate
per candidate, the latency CDF per class, the Pareto front of cost per image against P99
latency, and a timeline of the replicas serving requests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go

from reports.html import table_html, write_page

_CLASS_COLORS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2",
                 "#eeca3b", "#9d755d"]


@dataclass
class Curve:
    """Attainment (0..1) of one candidate at each arrival rate (requests per second)."""

    label: str
    rates: list[float]
    attainment: list[float]
    capacity: float | None


@dataclass
class Point:
    """One candidate at the report's rate: P99 latency (s) and cost per 1,000 good images."""

    label: str
    p99_s: float
    cost: float


@dataclass
class Bar:
    """One request on one replica: seconds from the first arrival."""

    replica: str
    start_s: float
    finish_s: float
    cls: str
    text: str


def pareto(points: list[Point]) -> list[Point]:
    """The points no other point beats on both P99 and cost, by increasing P99."""
    front: list[Point] = []
    for p in sorted(points, key=lambda p: (p.p99_s, p.cost)):
        if not front or p.cost < front[-1].cost:
            front.append(p)
    return front


def attainment_figure(curves: list[Curve], target: float, rate: float | None) -> go.Figure:
    """Attainment against arrival rate, one line per candidate, the target dashed."""
    fig = go.Figure()
    for c in curves:
        fig.add_trace(go.Scatter(x=c.rates, y=[100 * a for a in c.attainment],
                                 mode="lines+markers", name=c.label))
    fig.add_hline(y=100 * target, line_dash="dash", line_color="grey",
                  annotation_text=f"target {target:.0%}")
    if rate is not None:
        fig.add_vline(x=rate, line_dash="dot", line_color="grey",
                      annotation_text=f"--rate {rate:g}")
    fig.update_layout(title="requests within SLO against arrival rate (capacity: where a line "
                      "crosses the target)", xaxis_title="arrival rate (requests/s)",
                      yaxis_title="% within SLO", yaxis_range=[0, 101])
    return fig


def cdf_figure(latencies: dict[str, list[float]], slo_s: dict[str, float], title: str
               ) -> go.Figure:
    """Empirical CDF of latency per class, each class's SLO as a dotted line."""
    fig = go.Figure()
    for i, (name, xs) in enumerate(latencies.items()):
        xs = sorted(xs)
        color = _CLASS_COLORS[i % len(_CLASS_COLORS)]
        fig.add_trace(go.Scatter(x=xs, y=[100 * (k + 1) / len(xs) for k in range(len(xs))],
                                 mode="lines", name=name, line=dict(color=color,
                                                                    shape="hv")))
        fig.add_vline(x=slo_s[name], line_dash="dot", line_color=color,
                      annotation_text=f"SLO {name}")
    fig.update_layout(title=title, xaxis_title="latency (s), arrival to finish",
                      yaxis_title="% of requests at most")
    return fig


def pareto_figure(points: list[Point], unit: str, rate: float) -> go.Figure:
    """Cost per 1,000 images within SLO against P99 latency, the front joined."""
    front = pareto(points)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[p.p99_s for p in points], y=[p.cost for p in points],
                             mode="markers", name="candidates", text=[p.label for p in points],
                             hoverinfo="text+x+y", marker=dict(color="#bab0ac", size=9)))
    fig.add_trace(go.Scatter(x=[p.p99_s for p in front], y=[p.cost for p in front],
                             mode="lines+markers+text", name="Pareto front",
                             text=[p.label for p in front], textposition="top right",
                             marker=dict(color="#e45756", size=10)))
    fig.update_layout(title=f"cost per 1,000 images within SLO against P99 latency at "
                      f"{rate:.3g} req/s", xaxis_title="P99 latency (s)",
                      yaxis_title=f"cost per 1,000 good images ({unit})")
    return fig


def timeline_figure(bars: list[Bar], replicas: list[str], title: str) -> go.Figure:
    """One lane per replica, one bar per request served, coloured by class."""
    classes = sorted({b.cls for b in bars})
    fig = go.Figure()
    for i, cls in enumerate(classes):
        mine = [b for b in bars if b.cls == cls]
        fig.add_trace(go.Bar(y=[b.replica for b in mine], x=[b.finish_s - b.start_s
                                                            for b in mine],
                             base=[b.start_s for b in mine], orientation="h", name=cls,
                             marker_color=_CLASS_COLORS[i % len(_CLASS_COLORS)],
                             marker_line=dict(color="white", width=0.5),
                             hovertext=[b.text for b in mine], hoverinfo="text"))
    fig.update_layout(title=title, barmode="overlay", xaxis_title="time (s) from the first "
                      "arrival", yaxis=dict(categoryorder="array",
                                            categoryarray=replicas[::-1]),
                      height=max(300, 28 * len(replicas) + 140), legend_title="class")
    return fig


def write_serve_report(path: str | Path, title: str, intro: str, columns: list[str],
                       rows: list[list], curves: list[Curve], target: float,
                       rate: float | None, latencies: dict[str, list[float]],
                       slo_s: dict[str, float], cdf_title: str,
                       points: list[Point] | None, price_unit: str, points_rate: float,
                       bars: list[Bar], replicas: list[str], timeline_title: str) -> None:
    """Write the serving report (one self-contained HTML file). ``points`` is ``None`` when
    no price was given (the Pareto section then says how to get it)."""
    sections: list[tuple[str, object]] = [
        ("Pool splits ranked by capacity (click a header to sort)", table_html(columns, rows)),
        ("SLO attainment against arrival rate", attainment_figure(curves, target, rate)),
        ("Latency distribution per class", cdf_figure(latencies, slo_s, cdf_title)),
    ]
    if points:
        sections.append(("Cost per image against P99 latency",
                         pareto_figure(points, price_unit, points_rate)))
    else:
        sections.append(("Cost per image against P99 latency",
                         "<p class='note'>Give --price PER_GPU_HOUR for the cost of each "
                         "candidate and its Pareto front.</p>"))
    sections.append(("Replicas serving requests", timeline_figure(bars, replicas,
                                                                  timeline_title)))
    write_page(path, title, sections, intro)
