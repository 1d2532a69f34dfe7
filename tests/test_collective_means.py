"""benchmarks/collective_means.py: a validation run's collective rows predicted from the link
profile's medians and from its means, and its input checks."""

from __future__ import annotations

import csv
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sim.cost.profile_format import LinkProfile
from sim.errors import UserError
from validation.grid import Case
from validation.predict import predict_case

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "profiles" / "data"
sys.path.insert(0, str(ROOT / "benchmarks"))

import collective_means  # noqa: E402

COLUMNS = ("model", "resolution", "steps", "nproc", "strategy", "patches", "warmup",
           "measured_s", "predicted_s")


def run_folder(tmp_path: Path, tail: float = 3.0) -> Path:
    """A validation --out folder with one pixart-tiny ulysses2 row (measured 0.2 s), the
    shipped co-run compute profile and the shipped busy link profile whose collectives got a
    mean ``tail`` times their median."""
    out = tmp_path / "val"
    (out / "profiles").mkdir(parents=True)
    shutil.copy(DATA / "cpu-amd-epyc-t1_pixart-tiny_fp32_co1.csv", out / "profiles")
    link = LinkProfile.read(DATA / "links_gloo_loopback_w2_busy_cpu-amd-epyc-t1.csv")
    link.samples = [dataclasses.replace(s, mean_s=s.median_s * tail) if s.op != "host_msg"
                    else s for s in link.samples]
    link.write(out / "profiles" / "links_gloo_loopback_w2_busy_cpu-amd-epyc-t1.csv")
    with open(out / "validation.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        w.writerow(["pixart-tiny", 256, 6, 2, "ulysses", 1, 1, 0.2, 0.1])
        w.writerow(["pixart-tiny", 256, 6, 2, "pipefusion", 2, 1, 0.2, 0.1])  # no collectives
    return out


def test_means_and_medians_are_predicted_from_the_same_profiles(tmp_path: Path,
                                                                capsys) -> None:
    out = run_folder(tmp_path)
    assert collective_means.main([str(out)]) == 0
    text = capsys.readouterr().out
    lines = [ln for ln in text.splitlines() if ln.startswith("pixart-tiny")]
    assert len(lines) == 1 and "ulysses2" in lines[0]  # the PipeFusion row is left out
    c = Case("pixart-tiny", 256, 6, 2, 1, 1, "ulysses")
    compute = {("pixart-tiny", 2): out / "profiles" / "cpu-amd-epyc-t1_pixart-tiny_fp32_co1.csv"}
    link = out / "profiles" / "links_gloo_loopback_w2_busy_cpu-amd-epyc-t1.csv"
    means = predict_case(c, compute, link, "cpu").latency_s
    shipped = predict_case(c, compute, DATA / link.name, "cpu").latency_s  # medians only
    assert means > shipped  # three times the median per all-to-all
    assert f"{shipped:7.3f}s {shipped / 0.2 - 1:+7.1%}" in lines[0]
    assert f"{means:7.3f}s {means / 0.2 - 1:+7.1%}" in lines[0]
    assert "ulysses       1 rows:" in text


@pytest.mark.parametrize("edit,match", [
    (lambda out: (out / "validation.csv").unlink(), "does not exist"),
    (lambda out: [p.unlink() for p in (out / "profiles").glob("links_*")], "busy link profile"),
    (lambda out: shutil.copy(DATA / "links_gloo_loopback_w2_busy_cpu-amd-epyc-t1.csv",
                             out / "profiles"), "no mean_s column"),
])
def test_bad_folders_are_one_error_line(tmp_path: Path, edit, match: str) -> None:
    out = run_folder(tmp_path)
    edit(out)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "collective_means.py"),
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert match in done.stderr and not done.stdout


def test_repredict_scores_a_shipped_run_again() -> None:
    """benchmarks/repredict.py predicts the shipped validation run's rows again; with the
    code of the run's day the unpaced predictions would come back as recorded, so the
    pipefusion rows (no term has changed for them since) do."""
    root = Path(__file__).resolve().parents[1]
    run = root / "docs" / "validation-2026-11-30-quick-xeon-means-1512"
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "repredict.py"), str(run),
                          "--family", "pipefusion"], capture_output=True, text=True, check=True,
                         cwd=root).stdout
    rows = [line.split() for line in out.splitlines() if "px " in line and line.endswith("%")]
    assert len(rows) == 24
    for cols in rows:
        then, now = (float(c.rstrip("s")) for c in (cols[-4], cols[-2]))
        assert now == pytest.approx(then, rel=1e-9)
    bad = subprocess.run([sys.executable, str(root / "benchmarks" / "repredict.py"),
                          str(root / "no-such-run")], capture_output=True, text=True, cwd=root)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("error: ")


def test_repredict_charges_host_means_unless_told_medians(tmp_path: Path) -> None:
    """With host_msg rows holding a mean three times their median, a ring row comes out
    longer than with ``--host-median``, which gives what the medians alone give."""
    root = Path(__file__).resolve().parents[1]
    shipped = root / "docs" / "validation-2026-11-30-quick-xeon-means-1512"
    run = tmp_path / "run"
    shutil.copytree(shipped, run)
    link = next((run / "profiles").glob("links_*_busy_*.csv"))
    prof = LinkProfile.read(link)
    prof.samples = [dataclasses.replace(s, mean_s=3 * s.median_s) if s.op == "host_msg" else s
                    for s in prof.samples]
    prof.write(link)

    def ring_rows(folder: Path, *flags: str) -> list[float]:
        out = subprocess.run([sys.executable, str(root / "benchmarks" / "repredict.py"),
                              str(folder), "--family", "ring", *flags], capture_output=True,
                             text=True, check=True, cwd=root).stdout
        return [float(ln.split()[-2].rstrip("s")) for ln in out.splitlines()
                if "ring2" in ln and ln.endswith("%")]

    means, medians = ring_rows(run), ring_rows(run, "--host-median")
    assert len(means) == 4 and all(m > d for m, d in zip(means, medians, strict=True))
    assert medians == pytest.approx(ring_rows(shipped), rel=1e-9)


def test_medians_of_drops_the_means_of_one_kind_of_row_only() -> None:
    """collective_means.py compares the collectives' statistic alone (the host time per
    message keeps its mean), repredict.py --host-median the host time's alone."""
    from repredict import medians_of

    link = LinkProfile.read(DATA / "links_gloo_loopback_w2_busy_cpu-amd-epyc-t1.csv")
    link.samples = [dataclasses.replace(s, mean_s=2 * s.median_s) for s in link.samples]
    host = [s.op == "host_msg" for s in link.samples]
    assert any(host) and not all(host)
    for which in (True, False):
        kept = medians_of(link, host=which).samples
        assert [s.mean_s is None for s in kept] == [h == which for h in host]


def test_one_group_charges_point_to_point_messages_the_shared_group_rows() -> None:
    """repredict.py --host-one-group scores a run as profiles before the two layouts would
    have: PipeFusion's messages take the ``host_coll`` rows; a profile without them is
    refused with one line."""
    from repredict import one_group

    link = LinkProfile.read(DATA / "links_gloo_loopback_w2_busy_cpu-amd-epyc-t1.csv")
    assert link.host_table() and not link.host_table("host_coll")
    with pytest.raises(UserError, match="host_coll"):
        one_group(link)
    link.samples += [dataclasses.replace(s, op="host_coll", mean_s=(s.mean_s or 0) + 1e-3)
                     for s in link.select("host_msg")]
    shared = one_group(link)
    assert shared.host_table() == link.host_table("host_coll") != link.host_table()
    assert shared.host_table("host_coll") == link.host_table("host_coll")
