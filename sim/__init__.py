"""ditsim simulator: plans and predicts multi-GPU DiT inference. Imports no torch.

The Python API (``sim.api``) is exported here under the commands' names:
``sim.predict(model=..., gpus=..., ...)``, ``sim.plan(...)``, ``sim.compare(...)`` (each is
the command's module, callable), plus ``Prediction``, ``Plan``, ``Comparison``,
``Candidate`` and ``UserError``. Nothing is imported until first used, so that
``python -m sim.predict`` and ``import sim.trace`` stay light.
"""

from __future__ import annotations

import sys
from typing import Any

_API_NAMES = ("Candidate", "Comparison", "Plan", "Prediction", "Trace", "UserError")


def __getattr__(name: str) -> Any:
    # A submodule import sets the package attribute itself: these load on first access.
    if name == "predict":
        import sim.predict
    elif name == "plan":
        import sim.plan
    elif name == "compare":
        import sim.compare
    elif name == "api" or name in _API_NAMES:
        import sim.api  # noqa: F401  (loads it; the name bound is the package)

        return sys.modules["sim.api"] if name == "api" else getattr(sys.modules["sim.api"], name)
    else:
        raise AttributeError(f"module 'sim' has no attribute {name!r}")
    return sys.modules[f"sim.{name}"]
