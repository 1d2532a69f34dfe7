"""Cost models: the time of each compute op, in seconds, behind one ``CostModel`` protocol.

- ``roofline``: the analytic default from datasheet peaks (``RooflineCost``);
- ``profile``: measured profiles (``ProfileCost``), read through ``profile_format`` and
  interpolated with ``interp``; link profiles applied to a topology;
- ``spec``: ``CostSpec``, plain data naming which of the two to build.

Torch-free: profiles are read here, collected by the ``profiles`` package.
"""

from sim.cost.roofline import CostModel, RooflineCost
from sim.cost.spec import CostSpec

__all__ = ["CostModel", "CostSpec", "RooflineCost"]
