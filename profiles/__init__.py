"""Profilers (torch): ``python -m profiles.collect`` times blocks and the ops around them,
``python -m profiles.links`` times point-to-point and collective transfers. Both write the
files under ``profiles/data/`` whose format, loader and interpolation live with the cost model
that reads them (``sim.cost.profile_format``, ``sim.cost.interp``, ``sim.cost.profile``).
"""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"  # the shipped profiles

__all__ = ["DATA_DIR"]
