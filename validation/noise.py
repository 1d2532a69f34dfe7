"""What the machine's own scatter leaves a perfect model: the errors a validation grid would
show if the simulator predicted every configuration exactly.

A configuration's measurement is the median of its runs pooled over its launches
(``validation.results``), and on a small VM the launches of one configuration, minutes apart,
differ by more than the runs inside one launch do. A perfect model predicts each
configuration's expected latency, so its error on a grid is nothing but that scatter. It is
estimated from the grid's own launches by the bootstrap: a draw takes, for every
configuration, as many launches as it had, with replacement, and pools their runs; the error
is the configuration's centre over the draw's median run, minus one.

- unpaced: one number per configuration, the pooled median of all its launches;
- paced (``--pace probe``): the centre times each launch's pace, the prediction being the
  median over the drawn launches as ``validation.predict.pace_by_probe`` makes it; the centre
  is the median over launches of the launch's median run over its pace.

Three launches are few for a bootstrap. For the median of three launches scattering normally
it overstates the spread, by about a tenth in standard deviation (variance 0.54 against 0.44
sigma^2 in a simulation of 20,000 triples); it knows nothing of the drift between grids
(``benchmarks/grid_spread.py``), which adds to the floor. The result is an estimate of the
floor, not a bound. Standard library only.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

TARGET_MEDIAN = 0.05  # issue 11: median |error| per family and over the grid
TARGET_WORST = 0.15  # issue 11: worst |error| per family and over the grid
DRAWS = 2000  # bootstrap draws: the shares below move by about a point between seeds


@dataclass
class Launches:
    """One configuration: its name, strategy family and, per launch, its measured runs'
    seconds and (``--pace probe``) the launch's pace (dimensionless, 1.0: the profile's)."""

    name: str
    family: str
    runs: list[list[float]]
    paces: list[float] | None = None

    @classmethod
    def of(cls, name: str, family: str, runs: list[list[float]],
           paces: list[float] | None) -> Launches:
        """The launches that have both runs and, when any pace is given, a pace (a run
        stopped between its launches and its pacing leaves one list longer)."""
        if not paces:  # unpaced: no list, or an empty one
            return cls(name, family, list(runs))
        k = min(len(runs), len(paces))
        return cls(name, family, list(runs[:k]), list(paces[:k]))

    def centre(self, paced: bool) -> float:
        """The expected seconds a perfect model predicts (at a pace of 1 when ``paced``)."""
        if paced and self.paces:
            return statistics.median(statistics.median(r) / p
                                     for r, p in zip(self.runs, self.paces))
        return statistics.median([t for r in self.runs for t in r])

    def draw_error(self, rng: random.Random, centre: float, paced: bool) -> float:
        """A perfect model's relative error on one bootstrap draw of the launches."""
        picks = [rng.randrange(len(self.runs)) for _ in self.runs]
        measured = statistics.median([t for i in picks for t in self.runs[i]])
        predicted = centre
        if paced and self.paces:
            predicted = centre * statistics.median([self.paces[i] for i in picks])
        return predicted / measured - 1


def floors(cases: list[Launches], paced: bool, draws: int = DRAWS, seed: int = 0) -> dict:
    """The perfect model's errors on ``cases`` over ``draws`` bootstrap draws.

    Returns ``families``: per family and ``all``, the rows, the median over draws of the
    grid's median and worst |error| (fractions), and the share of draws meeting
    ``TARGET_MEDIAN``, ``TARGET_WORST`` and both; ``p90``: per configuration in the order
    given (``names``), the |error| it exceeds in a tenth of the draws; ``rows_p90``: the
    same with the configurations' names, largest first. ``paced`` is honoured only when
    every case has its launches' paces."""
    if not cases or any(not c.runs or not all(c.runs) for c in cases):
        raise ValueError("every configuration needs at least one launch with runs")
    paced = paced and all(c.paces for c in cases)
    rng = random.Random(seed)
    centres = [c.centre(paced) for c in cases]
    groups = {"all": list(range(len(cases)))}
    for k, c in enumerate(cases):
        groups.setdefault(c.family, []).append(k)
    per_draw: dict[str, list[tuple[float, float]]] = {f: [] for f in groups}
    per_case: list[list[float]] = [[] for _ in cases]
    for _ in range(draws):
        errs = [abs(c.draw_error(rng, m, paced)) for c, m in zip(cases, centres)]
        for k, e in enumerate(errs):
            per_case[k].append(e)
        for fam, idx in groups.items():
            sel = [errs[k] for k in idx]
            per_draw[fam].append((statistics.median(sel), max(sel)))
    families = {}
    for fam, pairs in per_draw.items():
        families[fam] = {
            "rows": len(groups[fam]),
            "median": statistics.median(m for m, _ in pairs),
            "worst": statistics.median(w for _, w in pairs),
            "meets_median": sum(m <= TARGET_MEDIAN for m, _ in pairs) / draws,
            "meets_worst": sum(w <= TARGET_WORST for _, w in pairs) / draws,
            "meets_both": sum(m <= TARGET_MEDIAN and w <= TARGET_WORST
                              for m, w in pairs) / draws,
        }
    p90 = [sorted(e)[int(0.9 * (len(e) - 1))] for e in per_case]
    named = sorted(zip(p90, (c.name for c in cases)), reverse=True)
    return {"paced": paced, "draws": draws, "seed": seed, "families": families,
            "names": [c.name for c in cases], "p90": p90,
            "rows_p90": [{"row": n, "p90": p} for p, n in named]}


def summary_line(result: dict) -> str:
    """One line for the end of a validation run: the perfect model's median and worst |error|
    over the grid and how often its worst stays within the target."""
    a = result["families"]["all"]
    kind = "paced" if result["paced"] else "unpaced"
    return (f"a perfect model on these launches ({kind}; the machine's own scatter, "
            f"{result['draws']} bootstrap draws): median |error| {a['median']:.1%}, worst "
            f"{a['worst']:.1%}; worst <= {TARGET_WORST:.0%} in {a['meets_worst']:.0%} of draws")


def grid_floors(cases: list, paced: bool, draws: int = DRAWS, seed: int = 0) -> dict:
    """``floors`` of a validation run's ``validation.grid.Case`` list (each with its
    ``launches`` and, paced, its ``paces``)."""
    return floors([Launches.of(c.name, c.family, c.launches, c.paces) for c in cases],
                  paced, draws, seed)


def beyond_line(names: list[str], errors: list[float], p90: list[float]) -> str:
    """One line naming the rows whose |error| (``errors``, fractions) exceeds what a perfect
    model's exceeds in a tenth of the draws (``p90``, from ``floors``): rows the machine's
    scatter explains poorly, though about a tenth of any grid's rows land there by chance."""
    out = [(abs(e) - q, n, e) for n, e, q in zip(names, errors, p90) if abs(e) > q]
    out.sort(reverse=True)
    shown = "; ".join(f"{n} {e:+.1%}" for _, n, e in out[:5]) + ("; ..." if len(out) > 5 else "")
    return (f"rows beyond their own launches' scatter (|error| above the perfect model's 90th "
            f"percentile): {len(out)} of {len(names)} (about {len(names) / 10:.0f} by "
            f"chance){': ' + shown if out else ''}")
