"""How far a validation run's predictions move from one link profile to another.

    python benchmarks/link_draws.py OUT PROFILE PROFILE [PROFILE ...] [--json]

``OUT`` is the ``--out`` folder of a ``python -m validation`` run on CPU (as
``benchmarks/repredict.py`` takes it). Every two-process row is predicted from the run's own
compute profiles and each link ``PROFILE`` in turn (single launches of ``profiles.links``, or
pools of them from ``profiles.pooled_links``). Per row it prints the mean over pairs of
profiles of the relative difference of their predictions, ``|a / b - 1|``; then the median
over rows and the worst row, and per profile the median and worst |error| against the run's
measurements. A profile that moves predictions little from the next collection's is a steadier
draw of the link; which one is right is the measurements' call. Exit status 2 with one line
when the folder or a profile is not usable.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import statistics
from pathlib import Path

from repredict import case_and_profile, run_files

from sim.cli import run_main
from sim.errors import UserError
from validation.predict import predict_case


def draws(out: Path, links: list[Path]) -> dict:
    """Per two-process row of the run in ``out``: its name, measurement and the prediction
    from each of ``links``; with the pairwise spread and each profile's errors."""
    table, profiles, _ = run_files(out)
    for link in links:
        if not link.is_file():
            raise UserError(f"{link} does not exist; give link profiles written by "
                            f"python -m profiles.links or profiles.pooled_links")
    with open(table, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["nproc"] != "1"]
    if not rows:
        raise UserError(f"{table} has no two-process rows")
    result = []
    for r in rows:
        c, compute = case_and_profile(r, profiles)
        preds = [predict_case(c, compute, link, "cpu").latency_s for link in links]
        pairs = [abs(a / b - 1) for a, b in itertools.combinations(preds, 2)]
        result.append({"configuration": c.name, "family": c.family,
                       "measured_s": float(r["measured_s"]), "predicted_s": preds,
                       "pairwise": statistics.fmean(pairs)})
    spread = [x["pairwise"] for x in result]
    per_profile = []
    for i, link in enumerate(links):
        errs = [abs(x["predicted_s"][i] / x["measured_s"] - 1) for x in result]
        per_profile.append({"profile": str(link), "median": statistics.median(errs),
                            "worst": max(errs)})
    worst = max(result, key=lambda x: x["pairwise"])
    return {"rows": result, "pairwise_median": statistics.median(spread),
            "pairwise_worst": worst["pairwise"], "pairwise_worst_row": worst["configuration"],
            "profiles": per_profile}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="a validation --out folder")
    p.add_argument("profiles", type=Path, nargs="+", help="link profiles, two or more")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    a = p.parse_args(argv)
    if len(a.profiles) < 2:
        raise UserError("give two link profiles or more: a spread needs two predictions")
    got = draws(a.out, a.profiles)
    if a.json:
        print(json.dumps(got, indent=1))
        return 0
    for x in got["rows"]:
        print(f"{x['configuration']:40s} {x['measured_s'] * 1e3:9.1f} ms measured, predicted "
              + " ".join(f"{p * 1e3:7.1f}" for p in x["predicted_s"])
              + f"  pairwise {x['pairwise']:6.1%}")
    print(f"mean pairwise difference: median {got['pairwise_median']:.1%} over rows, worst "
          f"{got['pairwise_worst']:.1%} ({got['pairwise_worst_row']})")
    for pr in got["profiles"]:
        print(f"  {pr['profile']}: median |error| {pr['median']:.1%}, worst {pr['worst']:.1%}")
    return 0


if __name__ == "__main__":
    run_main(main)
