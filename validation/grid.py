"""The configurations validation runs (its grids) and what becomes of each: measured and
predicted latencies, the last measured trace and the prediction."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from sim.evaluate import Prediction

# The pure strategies besides PipeFusion, each at two processes, with the warmup W it runs at
# (DistriFusion's synchronous steps; the others ignore W and run the executor's default).
STRATEGIES = (("ulysses", 1), ("ring", 1), ("tensor", 1), ("cfg", 1), ("distrifusion", 1))

# A grid is one or more parts, each (models, resolutions, steps, multi-process PipeFusion
# (patches, warmup) pairs, the other strategies (name, warmup) at two processes).
GridPart = tuple[tuple[str, ...], tuple[int, ...], int, tuple[tuple[int, int], ...],
                 tuple[tuple[str, int], ...]]

GRIDS: dict[str, tuple[GridPart, ...]] = {
    "smoke": ((("pixart-tiny",), (256,), 4, ((2, 1),), (("ring", 1),)),),
    "quick": ((("pixart-tiny", "pixart-small"), (256, 512), 6,
               ((1, 1), (2, 1), (4, 1), (8, 1), (4, 0), (4, 2)), STRATEGIES),),
    "full": ((("pixart-tiny", "pixart-small"), (256, 384, 512), 8,
              tuple((m, w) for m in (1, 2, 4, 8) for w in (0, 1, 2)), ()),),
    # The MM-DiT test models (issue 12): PipeFusion as above, plus Ulysses at two processes.
    # The small ones (hidden 384, 8 blocks) at 256 px only, where their loops last about as
    # long as pixart-small's (1-2 s): long enough that per-call overheads weigh little,
    # short enough to keep the grid near ten minutes; at 512 px each would take 4-5 times as
    # long.
    "mmdit": ((("sd3-tiny", "flux-tiny"), (256, 512), 6, ((1, 1), (2, 1), (4, 1), (4, 0)),
               (("ulysses", 1),)),
              (("sd3-small", "flux-small"), (256,), 6, ((2, 1), (4, 1)), (("ulysses", 1),))),
}


def grid_models(grid: str) -> tuple[str, ...]:
    """Every model of ``grid``, in the grid's order."""
    return tuple(m for part in GRIDS[grid] for m in part[0])


@dataclass
class Case:
    """One configuration of the grid and what became of it."""

    model: str
    resolution: int
    steps: int
    nproc: int
    patches: int
    warmup: int
    strategy: str = "pipefusion"  # the parallel degree nproc goes to (one process: serial)
    runs: int = 1  # measured runs per launch (short configurations get more)
    launches: list[list[float]] = field(default_factory=list)  # measured runs per launch (s)
    # Per launch, the last run's compute-thread CPU seconds over its loop's wall seconds,
    # averaged over the ranks: how much of the loop the ranks spent computing.
    cpu_share: list[float] = field(default_factory=list)
    predicted: list[float] = field(default_factory=list)  # per set of profiles (seconds)
    trace_path: Path | None = None
    prediction: Prediction | None = None
    # --pace probe: calls of the pace probe per launch (0: none), and per launch what it
    # reported (per rank, before and after the runs: executor.pace), the profiles that
    # launch was predicted from, the pace found and the prediction before pacing (seconds).
    probe_calls: int = 0
    probes: list[list] = field(default_factory=list)
    sources: list[tuple] = field(default_factory=list)
    paces: list[float] = field(default_factory=list)
    unpaced: list[float] = field(default_factory=list)

    @property
    def measured(self) -> list[float]:
        """Every launch's measured runs, seconds."""
        return [t for runs in self.launches for t in runs]

    @property
    def family(self) -> str:
        """The strategy family errors are summarised by: ``serial`` (one process),
        ``pipefusion``, ``ulysses``, ``ring``, ``tensor``, ``cfg``, ``distrifusion``."""
        return "serial" if self.nproc == 1 else self.strategy

    @property
    def pipefusion(self) -> bool:
        """Whether the processes go to PipeFusion stages (as do the one-process runs)."""
        return self.strategy == "pipefusion"

    @property
    def name(self) -> str:
        """The configuration for people: ``pixart-tiny 256px n=2 M=2 W=1``, ``pixart-tiny
        256px ulysses2``, ``pixart-tiny 256px distrifusion2 W=1``."""
        if self.pipefusion:
            return (f"{self.model} {self.resolution}px n={self.nproc} M={self.patches} "
                    f"W={self.warmup}")
        warm = f" W={self.warmup}" if self.strategy == "distrifusion" else ""
        return f"{self.model} {self.resolution}px {self.strategy}{self.nproc}{warm}"

    @property
    def slug(self) -> str:
        """The configuration for file names: ``pixart-tiny-256-n2-m2-w1``,
        ``pixart-tiny-256-ulysses2-w1``."""
        if self.pipefusion:
            return (f"{self.model}-{self.resolution}-n{self.nproc}-m{self.patches}-"
                    f"w{self.warmup}")
        return f"{self.model}-{self.resolution}-{self.strategy}{self.nproc}-w{self.warmup}"

    def degrees(self) -> dict[str, int]:
        """The ``ParallelConfig`` degrees (and patches, warmup) of this configuration, as
        ``sim.predict`` takes them: every process to ``strategy``."""
        return {self.strategy: self.nproc, "patches": self.patches, "warmup": self.warmup}

    def executor_args(self, out: Path, device: str, repeat: int, warmup_runs: int) -> str:
        """The ``executor.run`` argument string of launch ``repeat``; its trace goes to
        ``out/traces``."""
        trace = out / "traces" / f"{self.slug}-r{repeat}.csv"
        degree = [] if self.pipefusion else [f"--{self.strategy}", str(self.nproc)]
        return shlex.join(["--warmup-runs", str(warmup_runs), "--runs", str(self.runs),
                           "--model", self.model, "--resolution", str(self.resolution),
                           "--steps", str(self.steps), "--patches", str(self.patches),
                           "--warmup", str(self.warmup), *degree, "--device", device,
                           "--dtype", "fp32", "--trace", str(trace), "--json",
                           *(["--pace-probe", str(self.probe_calls)] if self.probe_calls
                             else [])])


def grid_cases(grid: str, nproc: int, only: tuple[str, ...] = ()) -> list[Case]:
    """The configurations of ``grid``: for every part, every model and resolution on one
    process, the part's PipeFusion (patches, warmup) pairs on ``nproc`` processes and, when
    ``nproc`` is 2, its other strategies on two processes (CFG parallelism has two halves and
    no other degree; ``only``: these models alone)."""
    cases = []
    for models, resolutions, steps, pairs, strategies in GRIDS[grid]:
        for model in models:
            if only and model not in only:
                continue
            for res in resolutions:
                cases.append(Case(model, res, steps, 1, 1, 0))
                if nproc > 1:
                    cases += [Case(model, res, steps, nproc, m, w) for m, w in pairs]
                if nproc == 2:
                    cases += [Case(model, res, steps, 2, 1, w, name) for name, w in strategies]
    return cases
