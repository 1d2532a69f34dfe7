"""A finished validation run predicted again by the code as it is now, row by row.

    python benchmarks/repredict.py OUT [--family ring,distrifusion] [--host-median]
                                       [--host-one-group] [--link PROFILE]

``OUT`` is the ``--out`` folder of a ``python -m validation`` run on CPU (its
``validation.csv`` and the profiles it collected in ``OUT/profiles``; one such run ships in
``docs/validation-2026-11-30-quick-xeon-means-1512/``). Each row is predicted from the same
compute and link profiles with the default pace (the expected slowest process), so a change
of the cost model is scored against the same measurements without new runs: the run's own
prediction (``predicted_unpaced_s``, from the code of its day) is printed beside the new one.
Prints per row and per family the error against the measurement; exit status 2 with one line
when the folder does not hold such a run. ``--host-median`` charges each message's host time
at the host rows' (``host_msg``, ``host_coll``) difference of medians (as before those rows
held a mean), so the two statistics are compared on the same measurements.
``--host-one-group`` charges PipeFusion's messages the ``host_coll`` rows (both directions on
one process group), as every profile before the two layouts (2026-12-01) timed its
``host_msg`` rows, so a run collected since is scored with and without the split on the same
measurements. ``--link PROFILE`` predicts from that link profile instead of the run's own
(another launch's collection, or several pooled by ``profiles.pooled_links``), so the
prediction's dependence on one collection of the link profile is seen on fixed measurements.
``--no-stretch`` costs every blocking collective from the rows timed after the profile's
reference op, as before profiles had ``<op>_short`` rows (``validation.predict.STRETCH``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import statistics
import tempfile
from pathlib import Path

from sim.cli import run_main
from sim.cost.profile_format import HOST_OPS, LinkProfile
from sim.errors import UserError
from validation.grid import Case
from validation.predict import predict_case


def _one(folder: Path, pattern: str, what: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise UserError(f"{folder}: expected one {what} ({pattern}), found {len(found)}; give "
                        f"the --out folder of a validation run that collected its own profiles")
    return found[0]


def run_files(out: Path) -> tuple[Path, Path, Path]:
    """(``validation.csv``, the profiles folder, the busy link profile) of the validation run
    in ``out``, or a ``UserError`` saying what is missing."""
    table = out / "validation.csv"
    if not table.is_file():
        raise UserError(f"{table} does not exist; give the --out folder of a finished "
                        f"python -m validation run")
    profiles = out / "profiles"
    return table, profiles, _one(profiles, "links_*_busy_*.csv", "busy link profile")


def case_and_profile(row: dict[str, str], profiles: Path) -> tuple[Case, dict]:
    """The validation case of a ``validation.csv`` row and the compute profile it was
    predicted from (as ``predict_case`` takes it)."""
    # The table names one process's rows by their family; the case runs them as PipeFusion
    # over one process, as validation builds them.
    strategy = "pipefusion" if row["strategy"] == "serial" else row["strategy"]
    c = Case(row["model"], int(row["resolution"]), int(row["steps"]), int(row["nproc"]),
             int(row["patches"]), int(row["warmup"]), strategy)
    # As validation names them: one co-running process per other rank, none alone.
    co = f"_co{c.nproc - 1}" if c.nproc > 1 else ""
    return c, {(c.model, c.nproc): _one(profiles, f"*_{c.model}_fp32{co}.csv",
                                        f"compute profile of {c.model}")}


def medians_of(prof: LinkProfile, host: bool) -> LinkProfile:
    """``prof`` with ``mean_s`` dropped from its host rows (``host``) or from all its
    other rows (not ``host``): those are then costed from their medians, as in profiles
    older than the column."""
    return LinkProfile(prof.meta, [dataclasses.replace(s, mean_s=None)
                                   if (s.op in HOST_OPS) == host else s
                                   for s in prof.samples], prof.path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="a validation --out folder")
    p.add_argument("--family", default=None,
                   help="only these families, comma-separated (default: every row)")
    p.add_argument("--host-median", action="store_true",
                   help="charge host time per message at the host rows' medians")
    p.add_argument("--host-one-group", action="store_true",
                   help="charge point-to-point messages the host_coll rows (both directions "
                        "on one process group), as profiles before the host_msg/host_coll "
                        "split timed host_msg")
    p.add_argument("--link", type=Path, default=None,
                   help="predict from this link profile instead of the run's own")
    p.add_argument("--no-stretch", action="store_true",
                   help="cost blocking collectives from the rows timed after the reference "
                        "op alone, not at the run's compute between calls")
    a = p.parse_args(argv)
    table, profiles, link = run_files(Path(a.out))
    if a.link is not None:
        if not a.link.is_file():
            raise UserError(f"--link {a.link} does not exist; give a link profile written by "
                            f"python -m profiles.links or profiles.pooled_links")
        link = a.link
    with tempfile.TemporaryDirectory() as tmp:
        prof = LinkProfile.read(link)
        if a.host_one_group:
            prof = one_group(prof)
        if a.host_median:
            prof = medians_of(prof, host=True)
        if a.host_one_group or a.host_median:
            link = prof.write(Path(tmp) / link.name)
        return _score(a, table, profiles, link)


def one_group(prof: LinkProfile) -> LinkProfile:
    """``prof`` with its ``host_msg`` rows replaced by its ``host_coll`` rows (renamed), so
    point-to-point messages are charged the host time of one shared process group, as every
    profile before the two layouts measured it; a ``UserError`` when it has no such rows."""
    coll = prof.select("host_coll")
    if not coll:
        raise UserError(f"{prof.path}: no host_coll rows (collected before 2026-12-01, when "
                        f"host_msg was timed on one group already); drop --host-one-group")
    return LinkProfile(prof.meta, [s for s in prof.samples if s.op != "host_msg"]
                       + [dataclasses.replace(s, op="host_msg") for s in coll], prof.path)


def _score(a: argparse.Namespace, table: Path, profiles: Path, link: Path) -> int:
    """Print every row of ``table`` (filtered by ``a.family``) predicted again with ``link``,
    and the per-family summary; returns 0."""
    families = set(a.family.split(",")) if a.family else None
    with open(table, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if families is None or r["strategy"] in families]
    # (``strategy`` holds the family: ``serial`` for one-process rows.)
    if not rows:
        raise UserError(f"{table} has no rows of {a.family}")
    errs: dict[str, list[tuple[float, float]]] = {}
    print(f"{'configuration':40s} {'measured':>9s} {'run (unpaced)':>17s} {'now':>17s}")
    for r in rows:
        c, compute = case_and_profile(r, profiles)
        meas = float(r["measured_s"])
        then = float(r.get("predicted_unpaced_s") or r["predicted_s"])
        now = predict_case(c, compute, link, "cpu", stretch=not a.no_stretch).latency_s
        errs.setdefault(c.family, []).append((then / meas - 1, now / meas - 1))
        print(f"{c.name:40s} {meas:8.3f}s {then:8.3f}s {then / meas - 1:+7.1%} "
              f"{now:8.3f}s {now / meas - 1:+7.1%}")
    print("per family, median |error| and worst, the run's prediction -> now:")
    everything = [pair for pairs in errs.values() for pair in pairs]
    for fam, pairs in [("all", everything), *errs.items()]:
        b = [abs(x) for x, _ in pairs]
        n = [abs(y) for _, y in pairs]
        print(f"  {fam:13s} {len(pairs):2d} rows: {statistics.median(b):5.1%} / {max(b):5.1%}"
              f" -> {statistics.median(n):5.1%} / {max(n):5.1%}")
    return 0


if __name__ == "__main__":
    run_main(main)
