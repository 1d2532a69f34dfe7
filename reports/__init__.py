"""Plotly reports: self-contained HTML files that open offline (plotly.js inlined).

The builders (``html``, ``figures``, ``*_report``) render data handed to them and never run a
simulation; the commands ``python -m reports.plan`` and ``python -m reports.compare`` take the
flags of ``sim.plan`` and ``sim.compare`` plus ``--report FILE``, run sim's search to gather
the data, and print what the sim commands print.
"""
