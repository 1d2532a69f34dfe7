"""Plotly report builders: self-contained HTML files that open offline (plotly.js inlined).

They render data handed to them (predictions, traces, tables); they never run a simulation.
"""
