"""Collectives costed from the link profile's medians against its means, on one validation run.

    python benchmarks/collective_means.py OUT

``OUT`` is the ``--out`` folder of a finished ``python -m validation`` run on CPU (its
``validation.csv`` and the profiles it collected in ``OUT/profiles``). Every row that runs
collectives (Ulysses, ring, tensor, CFG, DistriFusion) is predicted again from the same compute
profile and link profile twice: with the link profile as collected (collectives from the means
of their samples, ``mean_s``) and with the means left out (the medians, as before the column
existed); each against the row's measurement. The measurements and compute costs are the same
in both, so the difference is the collectives' statistic alone. Predictions use the default
pace (the expected slowest process); the run's own ``predicted_s`` is printed beside them.
Exit status 2 with one line when the folder does not hold such a run.
"""

from __future__ import annotations

import csv
import statistics
import sys
import tempfile
from pathlib import Path

# A sibling script's: the benchmarks folder is on the path when this runs as a script, and
# the tests put it there.
from repredict import case_and_profile, medians_of, run_files

from sim.cli import run_main
from sim.cost.profile_format import HOST_OPS, LinkProfile
from sim.errors import UserError
from validation.predict import predict_case

COLLECTIVE_FAMILIES = ("ulysses", "ring", "tensor", "cfg", "distrifusion")


def main(argv: list[str] | None = None) -> int:
    """Print the comparison for the run in ``argv[0]``; returns 0."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise UserError("usage: python benchmarks/collective_means.py OUT (a validation "
                        "--out folder)")
    table, profiles, link_path = run_files(Path(args[0]))
    link = LinkProfile.read(link_path)
    if not any(s.mean_s is not None for s in link.samples if s.op not in HOST_OPS):
        raise UserError(f"{link_path} has no mean_s column (collected before it existed): "
                        f"both predictions would be the same")
    tmp = tempfile.TemporaryDirectory()
    # The host time per message keeps its statistic (repredict.py --host-median compares
    # that one): the difference is the collectives' alone.
    medians = medians_of(link, host=False).write(Path(tmp.name) / link_path.name)
    with open(table, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["strategy"] in COLLECTIVE_FAMILIES]
    if not rows:
        raise UserError(f"{table} has no rows with collectives (ulysses, ring, tensor, cfg, "
                        f"distrifusion)")
    errs: dict[str, list[tuple[float, float]]] = {}
    print(f"{'configuration':36s} {'measured':>9s} {'run pred.':>9s} {'medians':>16s} "
          f"{'means':>16s}")
    for r in rows:
        c, compute = case_and_profile(r, profiles)
        meas = float(r["measured_s"])
        before = predict_case(c, compute, medians, "cpu").latency_s
        after = predict_case(c, compute, link_path, "cpu").latency_s
        errs.setdefault(c.family, []).append((before / meas - 1, after / meas - 1))
        print(f"{c.name:36s} {meas:8.3f}s {float(r['predicted_s']):8.3f}s "
              f"{before:7.3f}s {before / meas - 1:+7.1%} {after:7.3f}s {after / meas - 1:+7.1%}")
    print("median |error| per family, medians -> means:")
    for fam, pairs in errs.items():
        b = statistics.median(abs(x) for x, _ in pairs)
        a = statistics.median(abs(y) for _, y in pairs)
        print(f"  {fam:13s} {len(pairs)} rows: {b:.1%} -> {a:.1%}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    run_main(main)
