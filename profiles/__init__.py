"""Measured per-layer and per-link profiles: the files under ``profiles/data/``, their loader,
and the tools that collect them.

The loader (``profiles.format``) and the interpolation helpers (``profiles.interp``) are plain
Python: the simulator reads profiles without torch. Only the collectors (``python -m
profiles.collect``, ``python -m profiles.links``) import torch, and only inside themselves.
"""

from profiles.format import (
    ComputeProfile,
    LinkProfile,
    Sample,
    load_compute_profile,
    load_link_profile,
)

__all__ = ["ComputeProfile", "LinkProfile", "Sample", "load_compute_profile",
           "load_link_profile"]
