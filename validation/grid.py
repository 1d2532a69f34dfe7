"""The configurations validation runs (its grids) and what becomes of each: measured and
predicted latencies, the last measured trace and the prediction."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from sim.evaluate import Prediction

GRIDS = {
    # (models, resolutions, steps, 2-process (patches, warmup) pairs)
    "smoke": (("pixart-tiny",), (256,), 4, ((2, 1),)),
    "quick": (("pixart-tiny", "pixart-small"), (256, 512), 6,
              ((1, 1), (2, 1), (4, 1), (8, 1), (4, 0), (4, 2))),
    "full": (("pixart-tiny", "pixart-small"), (256, 384, 512), 8,
             tuple((m, w) for m in (1, 2, 4, 8) for w in (0, 1, 2))),
    # The MM-DiT test models (issue 12): PipeFusion as above, plus Ulysses (SEQUENCE).
    "mmdit": (("sd3-tiny", "flux-tiny"), (256, 512), 6, ((1, 1), (2, 1), (4, 1), (4, 0))),
}
# Ulysses degrees each grid also runs on its parallel process count (no PipeFusion, W = 1).
SEQUENCE = {"mmdit": (2,)}


@dataclass
class Case:
    """One configuration of the grid and what became of it."""

    model: str
    resolution: int
    steps: int
    nproc: int
    patches: int
    warmup: int
    ulysses: int = 1  # Ulysses degree (the other processes go to PipeFusion)
    runs: int = 1  # measured runs per launch (short configurations get more)
    measured: list[float] = field(default_factory=list)
    predicted: list[float] = field(default_factory=list)  # per set of profiles (seconds)
    trace_path: Path | None = None
    prediction: Prediction | None = None

    @property
    def name(self) -> str:
        """The configuration for people: ``pixart-tiny 256px n=2 M=2 W=1``."""
        seq = f" U={self.ulysses}" if self.ulysses > 1 else ""
        return (f"{self.model} {self.resolution}px n={self.nproc}{seq} M={self.patches} "
                f"W={self.warmup}")

    @property
    def slug(self) -> str:
        """The configuration for file names: ``pixart-tiny-256-n2-m2-w1``."""
        seq = f"-u{self.ulysses}" if self.ulysses > 1 else ""
        return (f"{self.model}-{self.resolution}-n{self.nproc}{seq}-m{self.patches}-"
                f"w{self.warmup}")

    def executor_args(self, out: Path, device: str, repeat: int, warmup_runs: int) -> str:
        """The ``executor.run`` argument string of launch ``repeat``; its trace goes to
        ``out/traces``."""
        trace = out / "traces" / f"{self.slug}-r{repeat}.csv"
        return shlex.join(["--warmup-runs", str(warmup_runs), "--runs", str(self.runs),
                           "--model", self.model, "--resolution", str(self.resolution),
                           "--steps", str(self.steps), "--patches", str(self.patches),
                           "--warmup", str(self.warmup), "--ulysses", str(self.ulysses),
                           "--device", device, "--dtype", "fp32",
                           "--trace", str(trace), "--json"])


def grid_cases(grid: str, nproc: int, only: tuple[str, ...] = ()) -> list[Case]:
    """The configurations of ``grid``: every model and resolution on one process, and the
    grid's (patches, warmup) pairs and its Ulysses degrees (``SEQUENCE``) that divide
    ``nproc`` on ``nproc`` processes (``only``: these models alone)."""
    models, resolutions, steps, pairs = GRIDS[grid]
    cases = []
    for model in models:
        if only and model not in only:
            continue
        for res in resolutions:
            cases.append(Case(model, res, steps, 1, 1, 0))
            if nproc > 1:
                cases += [Case(model, res, steps, nproc, m, w) for m, w in pairs]
                cases += [Case(model, res, steps, nproc, 1, 1, ulysses=u)
                          for u in SEQUENCE.get(grid, ()) if nproc % u == 0]
    return cases
