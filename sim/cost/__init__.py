"""Cost models: the time of each compute op, in seconds, behind one ``CostModel`` protocol.

- ``base``: the ``CostModel`` protocol and the ``SOURCES`` an op's time can come from;
- ``roofline``: the analytic default from datasheet peaks (``RooflineCost``);
- ``profile``: measured compute profiles (``ProfileCost``), read through ``profile_format``
  and interpolated with ``interp``;
- ``link_profile``: measured link profiles applied to a topology (``apply_link_profile``);
- ``spec``: ``CostSpec``, plain data naming which of the two cost models to build.

Torch-free: profiles are read here, collected by the ``profiles`` package.
"""

from sim.cost.base import CostModel
from sim.cost.roofline import RooflineCost
from sim.cost.spec import CostSpec

__all__ = ["CostModel", "CostSpec", "RooflineCost"]
