"""Plotly figures shared by the reports: timelines, bars, scatter against y = x."""

from __future__ import annotations

from collections import defaultdict

import plotly.graph_objects as go

from sim.trace import Trace, is_comm

_COLORS = {"blocks": "#4c78a8", "embed": "#72b7b2", "final": "#54a24b",
           "scheduler_step": "#eeca3b", "text_encode": "#b279a2", "vae_decode": "#9d755d",
           "send": "#f58518", "recv": "#e45756", "wait": "#e45756"}


def gantt(trace: Trace, title: str, warmup_steps: int = 0) -> go.Figure:
    """One lane per rank for compute and one for communication; warmup steps drawn lighter,
    pipelined steps solid; gaps in a compute lane are bubbles."""
    lanes: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    ranks = sorted({r.rank for r in trace.rows})
    for r in trace.rows:
        rank, op, step, patch = r.rank, r.op, r.step, r.patch
        start, end = r.start_s, r.end_s
        if end <= start:
            continue
        comm = is_comm(op)
        lane = f"rank {rank} {'comm' if comm else 'compute'}"
        kind = op if op in _COLORS else "collective"
        warm = 0 <= step < warmup_steps
        key = f"{kind}{' (warmup)' if warm else ''}"
        d = lanes[key]
        d["y"].append(lane)
        d["x"].append((end - start) * 1e3)
        d["base"].append(start * 1e3)
        d["text"].append(f"{op} step {step} patch {patch} layers {r.layer_first}-"
                         f"{r.layer_last}{' ' + r.tag if r.tag else ''} "
                         f"{(end - start) * 1e3:.3f} ms")
    fig = go.Figure()
    for key, d in sorted(lanes.items()):
        kind = key.split(" ")[0]
        fig.add_trace(go.Bar(
            y=d["y"], x=d["x"], base=d["base"], orientation="h", name=key,
            marker_color=_COLORS.get(kind, "#bab0ac"),
            opacity=0.45 if "warmup" in key else 1.0, hovertext=d["text"],
            hoverinfo="text"))
    order = [f"rank {r} {k}" for r in ranks for k in ("compute", "comm")]
    fig.update_layout(title=title, barmode="overlay", xaxis_title="time (ms)",
                      yaxis=dict(categoryorder="array", categoryarray=order[::-1]),
                      height=max(300, 40 * len(order) + 120), legend_title="op")
    return fig


def bars(labels: list[str], values: list[float], title: str, ytitle: str,
         colors: list[str] | None = None, text: list[str] | None = None) -> go.Figure:
    """A simple bar chart."""
    fig = go.Figure(go.Bar(x=labels, y=values, marker_color=colors, text=text,
                           textposition="outside"))
    fig.update_layout(title=title, yaxis_title=ytitle)
    return fig


def stacked_memory(per_rank: list[dict], capacity_gb: float, title: str) -> go.Figure:
    """Stacked memory per rank (GB) with the GPU's capacity as a line."""
    parts = ["weights", "text_encoder", "vae", "activations", "kv_buffers", "recv_buffers",
             "runtime"]
    x = [f"rank {i}" for i in range(len(per_rank))]
    fig = go.Figure()
    for p in parts:
        fig.add_trace(go.Bar(x=x, y=[m[p] for m in per_rank], name=p.replace("_", " ")))
    fig.add_hline(y=capacity_gb, line_dash="dash", line_color="red",
                  annotation_text=f"capacity {capacity_gb:.0f} GB")
    fig.update_layout(barmode="stack", title=title, yaxis_title="GB")
    return fig


def grouped(categories: list[str], series: dict[str, list[float | None]], title: str,
            ytitle: str, log: bool = False) -> go.Figure:
    """Grouped bars: one group per category, one bar per series."""
    fig = go.Figure()
    for name, vals in series.items():
        fig.add_trace(go.Bar(x=categories, y=vals, name=name))
    fig.update_layout(barmode="group", title=title,
                      yaxis_title=f"{ytitle} (log scale)" if log else ytitle,
                      yaxis_type="log" if log else "linear")
    return fig


def lines(x: list, series: dict[str, list[float | None]], title: str, xtitle: str,
          ytitle: str) -> go.Figure:
    """One line with markers per series over the shared ``x`` values (gaps where None)."""
    fig = go.Figure()
    for name, ys in series.items():
        fig.add_trace(go.Scatter(x=x, y=ys, mode="lines+markers", name=name))
    # Ticks at the given x values only (GPU counts: no 1.5 GPUs).
    fig.update_layout(title=title, xaxis_title=xtitle, yaxis_title=ytitle,
                      xaxis=dict(tickmode="array", tickvals=list(x)))
    return fig


def predicted_vs_measured(measured: list[float], predicted: list[float], labels: list[str],
                          title: str) -> go.Figure:
    """Scatter of predicted against measured seconds with the y = x line."""
    lo = min(measured + predicted) * 0.9
    hi = max(measured + predicted) * 1.1
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x",
                             line=dict(dash="dash", color="grey")))
    fig.add_trace(go.Scatter(x=measured, y=predicted, mode="markers", name="configurations",
                             text=labels, hoverinfo="text+x+y"))
    fig.update_layout(title=title, xaxis_title="measured (s, log scale)",
                      yaxis_title="predicted (s, log scale)", xaxis_type="log",
                      yaxis_type="log")
    return fig
