"""profiles.pooled_links: link profiles of several launches pooled into one; and the two
benchmarks that look at one collection's weight in a prediction (repredict.py --link) and at
the spread of a configuration's measurement between validation runs (grid_spread.py)."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from profiles.pooled_links import main as pool_main
from profiles.pooled_links import pool_links
from sim.cost.profile_format import LinkProfile
from sim.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
# A busy gloo profile with means and both host layouts (a validation run's own).
SHIPPED = (ROOT / "docs" / "validation-2026-12-01-quick-epyc-0320" / "profiles"
           / "links_gloo_loopback_w2_busy_cpu-amd-epyc-t1.csv")
sys.path.insert(0, str(ROOT / "benchmarks"))

import grid_spread  # noqa: E402


def scaled(prof: LinkProfile, factor: float, repeats: int | None = None) -> LinkProfile:
    """``prof`` with every time ``factor`` times longer (and ``repeats`` calls per row)."""
    rows = []
    for s in prof.samples:
        rows.append(dataclasses.replace(
            s, median_s=s.median_s * factor, min_s=s.min_s * factor, p25_s=s.p25_s * factor,
            p75_s=s.p75_s * factor, max_s=s.max_s * factor,
            mean_s=None if s.mean_s is None else s.mean_s * factor,
            repeats=s.repeats if repeats is None else repeats))
    return LinkProfile(dict(prof.meta), rows)


def test_pooled_rows_take_the_weighted_mean_and_the_median_launch() -> None:
    base = LinkProfile.read(SHIPPED)
    assert all(s.mean_s is not None for s in base.samples) and base.host_table("host_coll")
    parts = [scaled(base, 1.0, 10), scaled(base, 2.0, 10), scaled(base, 4.0, 20)]
    pooled = pool_links(parts)
    assert pooled.meta["launches"] == 3
    for s, a in zip(pooled.samples, base.samples, strict=True):
        assert (s.op, s.world, s.nbytes) == (a.op, a.world, a.nbytes)
        assert s.repeats == 40
        assert s.median_s == pytest.approx(2.0 * a.median_s)  # the middle launch
        assert s.min_s == pytest.approx(a.min_s) and s.max_s == pytest.approx(4 * a.max_s)
        if a.mean_s is not None:
            # (10 x 1 + 10 x 2 + 20 x 4) / 40 = 2.75 times the one launch's mean
            assert s.mean_s == pytest.approx(2.75 * a.mean_s)
    # The collective curves the engine reads come from the pooled means.
    table = pooled.collective_table("all_reduce")
    assert table is not None
    for (n, t), a in zip(table[1], base.select("all_reduce"), strict=True):
        assert n == a.nbytes and t == pytest.approx(2.75 * (a.mean_s or a.median_s))
    # The fits are refitted to the pooled medians: twice the first launch's time.
    fit = pooled.fit("p2p", 1024)
    one = base.fit("p2p", 1024)
    t = fit.latency_s + 1024 / fit.bandwidth_Bps
    assert t == pytest.approx(2 * (one.latency_s + 1024 / one.bandwidth_Bps), rel=0.05)


def test_launches_of_different_collections_are_refused() -> None:
    base = LinkProfile.read(SHIPPED)
    other = LinkProfile(dict(base.meta, world_size=4), list(base.samples))
    with pytest.raises(UserError, match="world_size"):
        pool_links([base, other])
    fewer = LinkProfile(dict(base.meta), base.samples[1:])
    with pytest.raises(UserError, match="other rows"):
        pool_links([base, fewer])
    with pytest.raises(UserError, match="two link profiles"):
        pool_links([base])


def test_pooling_command_writes_a_readable_profile(tmp_path: Path, capsys) -> None:
    base = LinkProfile.read(SHIPPED)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    scaled(base, 1.0).write(a)
    scaled(base, 3.0).write(b)
    out = tmp_path / "sub" / "pooled.csv"
    assert pool_main([str(out), str(a), str(b)]) == 0
    assert "pooled over 2 launches" in capsys.readouterr().out
    back = LinkProfile.read(out)
    assert back.meta["launches"] == 2 and len(back.samples) == len(base.samples)
    bad = subprocess.run([sys.executable, "-m", "profiles.pooled_links", str(tmp_path / "x.csv"),
                          str(a), str(tmp_path / "missing.csv")], capture_output=True,
                         text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert not (tmp_path / "x.csv").exists()


def test_repredict_takes_another_link_profile() -> None:
    """The shipped run scored from a link profile three times slower comes out slower on
    every row with collectives, and a missing --link is one error line."""
    run = ROOT / "docs" / "validation-2026-11-30-quick-xeon-means-1512"

    def rows(*flags: str) -> list[float]:
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "repredict.py"),
                              str(run), "--family", "tensor", *flags], capture_output=True,
                             text=True, check=True, cwd=ROOT).stdout
        return [float(ln.split()[-2].rstrip("s")) for ln in out.splitlines()
                if "tensor2" in ln and ln.endswith("%")]

    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        own = next((run / "profiles").glob("links_*_busy_*.csv"))
        slow = Path(tmp) / own.name
        scaled(LinkProfile.read(own), 3.0).write(slow)
        base, slower = rows(), rows("--link", str(slow))
    assert len(base) == 4 and all(s > b for s, b in zip(slower, base, strict=True))
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "repredict.py"), str(run),
                          "--link", "/no/such.csv"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def write_run(folder: Path, rows: list[tuple[str, float, float]]) -> Path:
    """A validation table in ``folder``: (strategy, measured s, predicted s) rows of
    pixart-tiny 256 px on two processes."""
    folder.mkdir(parents=True)
    with open(folder / "validation.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(grid_spread.NEEDED)
        for strategy, meas, pred in rows:
            w.writerow(["pixart-tiny", 256, 2, strategy, 1, 1, meas, pred])
    return folder


def test_grid_spread_floor_and_median_oracle(tmp_path: Path, capsys) -> None:
    a = write_run(tmp_path / "a", [("tensor", 1.0, 1.0), ("cfg", 2.0, 2.2)])
    b = write_run(tmp_path / "b", [("tensor", 1.5, 1.0), ("cfg", 2.0, 2.2)])
    c = write_run(tmp_path / "c", [("tensor", 1.2, 1.0), ("ring", 9.0, 9.0)])
    assert grid_spread.main([str(a), str(b / "validation.csv"), str(c), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    by = {x["configuration"]: x for x in got["configurations"]}
    assert set(by) == {"pixart-tiny 256px n=2 tensor M=1 W=1",
                       "pixart-tiny 256px n=2 cfg M=1 W=1"}  # ring: one run only
    t = by["pixart-tiny 256px n=2 tensor M=1 W=1"]
    assert t["spread"] == pytest.approx(0.5) and t["floor"] == pytest.approx(0.2)
    # The oracle answers 1.2 s: +20 % in run a, -20 % in run b, exact in run c.
    ra = got["runs"]["a"]
    assert ra["median_oracle"]["tensor"]["worst"] == pytest.approx(0.2)
    assert got["runs"]["b"]["median_oracle"]["tensor"]["worst"] == pytest.approx(0.2)
    assert got["runs"]["c"]["median_oracle"]["tensor"]["worst"] == pytest.approx(0.0)
    assert ra["own_prediction"]["cfg"]["worst"] == pytest.approx(0.1)
    assert ra["median_oracle"]["all"]["rows"] == 2
    assert grid_spread.main([str(a), str(b)]) == 0
    assert "floor over 2 configurations" in capsys.readouterr().out


@pytest.mark.parametrize("make, match", [
    (lambda p: p, "no validation.csv"),
    (lambda p: (p.mkdir(), (p / "validation.csv").write_text("a,b\n1,2\n"))[0], "not a "
     "validation table"),
])
def test_grid_spread_refuses_what_is_not_a_run(tmp_path: Path, make, match: str) -> None:
    good = write_run(tmp_path / "good", [("cfg", 1.0, 1.0)])
    bad = tmp_path / "bad"
    make(bad)
    with pytest.raises(UserError, match=match):
        grid_spread.main([str(good), str(bad)])
    with pytest.raises(UserError, match="two validation runs"):
        grid_spread.main([str(good)])
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "grid_spread.py"),
                          str(good), str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and out.stderr.count("\n") == 1


def test_link_draws_compares_predictions_from_several_profiles(tmp_path: Path) -> None:
    """Two rows of a shipped run scored from its own link profile and a copy three times
    slower: the pairwise spread is the rows' predicted difference, and each profile is
    scored against the measurements."""
    import shutil

    import link_draws

    run = ROOT / "docs" / "validation-2026-12-01-quick-epyc-0320"
    out = tmp_path / "run"
    shutil.copytree(run / "profiles", out / "profiles")
    with open(run / "validation.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh)
                if r["model"] == "pixart-tiny" and r["resolution"] == "256"
                and r["strategy"] in ("tensor", "cfg", "serial")]
    with open(out / "validation.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    slow = tmp_path / "slow.csv"
    scaled(LinkProfile.read(SHIPPED), 3.0).write(slow)
    got = link_draws.draws(out, [SHIPPED, slow])
    names = [x["configuration"] for x in got["rows"]]
    assert len(names) == 2 and all("px" in n for n in names)  # the one-process row left out
    for x in got["rows"]:
        a, b = x["predicted_s"]
        assert b > a and x["pairwise"] == pytest.approx(abs(a / b - 1))
    assert got["pairwise_worst"] == max(x["pairwise"] for x in got["rows"])
    own = got["profiles"][0]
    errs = [abs(x["predicted_s"][0] / x["measured_s"] - 1) for x in got["rows"]]
    assert own["worst"] == pytest.approx(max(errs))
    with pytest.raises(UserError, match="does not exist"):
        link_draws.draws(out, [SHIPPED, tmp_path / "none.csv"])
    with pytest.raises(UserError, match="two link profiles"):
        link_draws.main([str(out), str(SHIPPED)])
