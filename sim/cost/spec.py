"""Which cost model prices compute ops: a measured profile file, or the analytic roofline.

Kept apart from both models so that neither imports the other through it."""

from __future__ import annotations

from dataclasses import dataclass

from sim.config import Workload
from sim.cost.base import CostModel
from sim.cost.profile import ProfileCost
from sim.cost.roofline import RooflineCost
from sim.hardware import GPU


@dataclass(frozen=True)
class CostSpec:
    """How compute ops are costed: a measured profile file, or the analytic roofline. Plain
    data, so planner worker processes can build their own cost model from it."""

    profile: str | None = None
    notes: tuple[str, ...] = ()  # about the profile (sim.cost.profile.speed_check)

    def build(self, wl: Workload, gpu: GPU, scale: float = 1.0) -> CostModel:
        """The cost model for ``wl`` on ``gpu`` with every time multiplied by ``scale``."""
        if self.profile is None:
            return RooflineCost(wl, gpu, scale)
        return ProfileCost(wl, gpu, self.profile, scale, self.notes)

    def describe(self, cost: CostModel) -> dict:
        """What the cost model rests on, for JSON output."""
        if hasattr(cost, "describe"):
            return {"kind": "profile", **cost.describe()}
        return {"kind": "roofline", "notes": ["analytic roofline: datasheet peaks and "
                                              "efficiencies of sim/hardware.py"]}
