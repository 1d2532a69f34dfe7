"""Bad input on every command, as one table (issue 18): each row is (command module, argv,
fragments of the error line) and must exit 2 with exactly one ``error:`` line on stderr, no
traceback and nothing on stdout. Run in-process through each command's ``main`` and
``sim.cli.run_main``. Also: strict JSON output, profiles refused by line and column, the
warmup rule shared by every command and the planner's search, and a fuzz test of
``sim.predict``'s numeric flags."""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import search as search_module
from sim.cli import print_json
from sim.config import ParallelConfig, Workload
from sim.cost.link_profile import apply_link_profile
from sim.cost.profile import ProfileCost
from sim.cost.profile_format import ComputeProfile, LinkProfile, ProfileError
from sim.errors import UserError
from sim.hardware import GPUS
from sim.models import get_model
from sim.search import candidates
from sim.topology import build_topology
from tests.conftest import run_cli

DATA = Path(__file__).resolve().parents[1] / "profiles" / "data"
LINK = DATA / "links_gloo_loopback_w2_busy_cpu-amd-epyc-t1.csv"
COMPUTE = DATA / "cpu-amd-epyc-t1_pixart-small_fp32_co1.csv"

# Small, fast workloads: every row answers in well under a second once it is refused.
PREDICT = ["--model", "pixart", "--gpus", "8", "--patches", "8", "--steps", "4"]
PLAN = ["--model", "pixart", "--gpus", "2", "--steps", "4"]
CPU_PREDICT = ["--model", "pixart-small", "--gpu", "cpu", "--gpus", "2", "--resolution", "256",
               "--steps", "4", "--dtype", "fp32", "--patches", "2"]
CPU_COMPARE = ["--model", "pixart-small", "--gpu", "cpu", "--gpus", "2", "--resolutions",
               "256", "--steps", "4", "--dtype", "fp32"]
# The executor's rows end with a warmup above the step count: the code before these checks
# reported that instead (and never started a run), the checked code names the flag first.
EXECUTOR = ["--model", "pixart-tiny", "--resolution", "256", "--steps", "4", "--warmup", "9"]
WARMUP_MSG = "--warmup must be between 0 and the step count 4, got 5"


def _field(path: Path, out: Path, line: int, column: str, value: str) -> Path:
    """A copy of the profile ``path`` at ``out`` with ``column`` of file line ``line`` (1-based;
    line 1 is the metadata, line 2 the header) set to ``value``."""
    lines = path.read_text().splitlines()
    header = lines[1].split(",")
    cells = lines[line - 1].split(",")
    cells[header.index(column)] = value
    lines[line - 1] = ",".join(cells)
    out.write_text("\n".join(lines) + "\n")
    return out


def _fits(path: Path, out: Path, key: str, value) -> Path:
    """A copy of the link profile ``path`` at ``out`` whose fitted ``key`` (``latency_s``,
    ``bandwidth_Bps``) is ``value(old)`` in every regime of every op."""
    first, _, rest = path.read_text().partition("\n")
    first = re.sub(rf'"{key}": ([-0-9.e+]+)', lambda m: f'"{key}": {value(float(m[1]))}',
                   first)
    out.write_text(first + "\n" + rest)
    return out


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, str]:
    """Corrupted copies of the shipped profiles, by name."""
    d = tmp_path_factory.mktemp("bad_profiles")
    return {k: str(v) for k, v in {
        "link_nan_latency": _fits(LINK, d / "l1.csv", "latency_s", lambda v: "NaN"),
        "link_neg_bandwidth": _fits(LINK, d / "l2.csv", "bandwidth_Bps", lambda v: -v),
        "link_zero_bandwidth": _fits(LINK, d / "l3.csv", "bandwidth_Bps", lambda v: 0.0),
        "link_row_nan": _field(LINK, d / "l4.csv", 3, "median_s", "nan"),
        "link_row_zero_bytes": _field(LINK, d / "l5.csv", 4, "nbytes", "0"),
        "compute_inf": _field(COMPUTE, d / "c1.csv", 3, "median_s", "inf"),
        "compute_negative": _field(COMPUTE, d / "c2.csv", 5, "p25_s", "-0.001"),
        "compute_zero_heads": _field(COMPUTE, d / "c3.csv", 4, "heads", "0"),
        "compute_huge": _field(COMPUTE, d / "c4.csv", 6, "max_s", "1e300"),
    }.items()}


def row(module: str, argv: list[str], *fragments: str, id: str):
    return pytest.param(module, argv, fragments, id=id)


ROWS = [
    # Issue 17: flags a launch cannot honour are refused, not dropped (one GPU has no
    # PipeFusion, so no patches).
    row("sim.predict", ["--model", "pixart", "--gpus", "1", "--patches", "4"],
        "--patches applies to PipeFusion, which needs 2 or more GPUs",
        id="predict-patches-one-gpu"),
    # 1. Non-finite and absurd numbers on the command line.
    row("sim.predict", PREDICT + ["--single-gpu-latency", "nan"],
        "--single-gpu-latency must be positive and finite, got nan", id="predict-sgl-nan"),
    row("sim.predict", PREDICT + ["--single-gpu-latency", "inf"],
        "--single-gpu-latency must be positive and finite, got inf", id="predict-sgl-inf"),
    row("sim.predict", PREDICT + ["--single-gpu-latency=-inf"],
        "must be positive and finite, got -inf", id="predict-sgl-neg-inf"),
    row("sim.predict", PREDICT + ["--single-gpu-latency", "0"],
        "must be positive and finite, got 0", id="predict-sgl-0"),
    row("sim.predict", PREDICT + ["--single-gpu-latency", "1e300"],
        "--single-gpu-latency 1e+300 s is", "calibration accepts factors from 0.001 to 1000",
        id="predict-sgl-1e300"),
    row("sim.predict", PREDICT + ["--single-gpu-latency", "1e-300"],
        "calibration accepts factors", id="predict-sgl-tiny"),
    row("sim.plan", PLAN + ["--single-gpu-latency", "nan"],
        "--single-gpu-latency must be positive and finite, got nan", id="plan-sgl-nan"),
    row("sim.plan", PLAN + ["--single-gpu-latency", "1e300"], "calibration accepts factors",
        id="plan-sgl-1e300"),
    row("reports.plan", PLAN + ["--single-gpu-latency", "inf", "--report", "{tmp}/r.html"],
        "--single-gpu-latency must be positive and finite, got inf", id="reports-plan-sgl"),
    row("executor.run", EXECUTOR + ["--timeout", "inf"],
        "--timeout must be a finite number between 0 and 604800 s, got inf",
        id="executor-timeout-inf"),
    row("executor.run", EXECUTOR + ["--timeout", "nan"], "--timeout must be a finite number",
        id="executor-timeout-nan"),
    row("executor.run", EXECUTOR + ["--timeout", "1e300"], "got 1e+300",
        id="executor-timeout-huge"),
    row("executor.run", EXECUTOR + ["--guidance-scale", "nan"],
        "--guidance-scale must be a finite number, got nan", id="executor-guidance-nan"),
    row("executor.run", EXECUTOR + ["--guidance-scale=-inf"],
        "--guidance-scale must be a finite number, got -inf", id="executor-guidance-inf"),
    row("profiles.links", ["--backend", "gloo", "--min-time", "nan"],
        "--min-time must be a finite number between 0 and 3600 s, got nan",
        id="links-min-time-nan"),
    row("profiles.links", ["--backend", "gloo", "--min-time", "inf"], "got inf",
        id="links-min-time-inf"),
    row("profiles.links", ["--backend", "gloo", "--max-bytes", "nan"],
        "message size must be between 4 bytes and 64 GiB, got 'nan'", id="links-bytes-nan"),
    row("profiles.links", ["--backend", "gloo", "--max-bytes", "infGiB"],
        "message size must be between", id="links-bytes-inf"),
    row("profiles.links", ["--backend", "gloo", "--max-bytes", "1e30"],
        "message size must be between", id="links-bytes-huge"),
    # 2. Corrupted profiles: refused whole, naming the file, the line and the column.
    row("sim.predict", CPU_PREDICT + ["--link-profile", "{link_nan_latency}"],
        "l1.csv line 1 (metadata), fit of 'all_gather', regime 'small', latency_s: nan is not "
        "a finite number", id="predict-link-nan-latency"),
    # (the code before these checks hung on a negative bandwidth, with no output)
    row("sim.predict", CPU_PREDICT + ["--link-profile", "{link_neg_bandwidth}"],
        "l2.csv line 1 (metadata), fit of 'all_gather', regime 'small', bandwidth_Bps: -",
        "is non-positive (must be > 0 B/s)", id="predict-link-negative-bandwidth"),
    row("sim.predict", CPU_PREDICT + ["--link-profile", "{link_zero_bandwidth}"],
        "l3.csv line 1 (metadata)", "bandwidth_Bps: 0.0 is non-positive (must be > 0 B/s)",
        id="predict-link-zero-bandwidth"),
    row("sim.predict", CPU_PREDICT + ["--link-profile", "{link_row_nan}"],
        "l4.csv line 3, column 'median_s': nan is not a finite number",
        id="predict-link-row-nan"),
    row("sim.predict", CPU_PREDICT + ["--link-profile", "{link_row_zero_bytes}"],
        "l5.csv line 4, column 'nbytes': 0 is too small (must be at least 1 B)",
        id="predict-link-zero-bytes"),
    row("sim.predict", CPU_PREDICT + ["--profile", "{compute_inf}"],
        "c1.csv line 3, column 'median_s': inf is not a finite number", id="predict-profile-inf"),
    row("sim.predict", CPU_PREDICT + ["--profile", "{compute_negative}"],
        "c2.csv line 5, column 'p25_s': -0.001 is non-positive (must be > 0 s)",
        id="predict-profile-negative"),
    row("sim.predict", CPU_PREDICT + ["--profile", "{compute_zero_heads}"],
        "c3.csv line 4, column 'heads': 0 is too small (must be at least 1)",
        id="predict-profile-zero-heads"),
    row("sim.predict", CPU_PREDICT + ["--profile", "{compute_huge}"],
        "c4.csv line 6, column 'max_s': 1e300 is over 86400 s", id="predict-profile-huge"),
    row("sim.plan", CPU_PREDICT[:-2] + ["--link-profile", "{link_zero_bandwidth}"],
        "bandwidth_Bps: 0.0 is non-positive", id="plan-link-zero-bandwidth"),
    row("sim.compare", CPU_COMPARE + ["--link-profile", "{link_zero_bandwidth}"],
        "bandwidth_Bps: 0.0 is non-positive", id="compare-link-zero-bandwidth"),
    row("sim.compare", CPU_COMPARE + ["--profile", "{compute_inf}"],
        "column 'median_s': inf is not a finite number", id="compare-profile-inf"),
    row("reports.compare", CPU_COMPARE + ["--link-profile", "{link_zero_bandwidth}",
                                          "--report", "{tmp}/c.html"],
        "bandwidth_Bps: 0.0 is non-positive", id="reports-compare-link-zero-bandwidth"),
    # 3. Warmup counts: the rule sim.predict applies, in every command.
    row("sim.plan", PLAN + ["--warmup", "5"], WARMUP_MSG, id="plan-warmup-above-steps"),
    row("sim.plan", PLAN[:-1] + ["20", "--warmup", "0,50"],
        "--warmup must be between 0 and the step count 20, got 50", id="plan-warmup-list"),
    row("sim.plan", PLAN + ["--warmup", "1,-1"],
        "--warmup must be between 0 and the step count 4, got -1", id="plan-warmup-negative"),
    row("reports.plan", PLAN + ["--warmup", "1,5", "--report", "{tmp}/r.html"], WARMUP_MSG,
        id="reports-plan-warmup"),
    # (compare refused this before; kept as the same rule's row.)
    row("sim.compare", PLAN + ["--warmup", "5"], WARMUP_MSG, id="compare-warmup"),
    # 11. The executor has no --gpus: its message names the launch's processes.
    row("executor.run", ["--model", "pixart-tiny", "--resolution", "256", "--ulysses", "2"],
        "parallel degrees multiply to 2 but the launch has 1 process; launch 2 (torchrun "
        "--nproc_per_node 2) or change the degrees", id="executor-degrees-vs-processes"),
    row("executor.run", EXECUTOR + ["--check", "0"], "--check must be at least 1, got 0",
        id="executor-check-0"),
    row("executor.run", ["--model", "pixart-tiny", "--resolution", "250", "--check", "2"],
        "resolution 250x250 is not a multiple of 16 px", id="executor-check-bad-resolution"),
    # 6. Bounded time: the limit itself must be a usable number.
    row("sim.plan", PLAN + ["--time-limit", "nan"],
        "--time-limit must be a finite number of seconds >= 0 (0: no limit), got nan",
        id="plan-time-limit-nan"),
    row("sim.plan", PLAN + ["--time-limit=-5"], "got -5", id="plan-time-limit-negative"),
    row("sim.compare", PLAN + ["--time-limit", "nan"], "--time-limit must be a finite number",
        id="compare-time-limit-nan"),
    row("sim.predict", PREDICT + ["--time-limit", "inf"],
        "--time-limit must be a finite number of seconds >= 0 (0: no limit), got inf",
        id="predict-time-limit-inf"),
]


def _run(module: str, argv: list[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``python -m module *argv``, run in this process."""
    return run_cli(importlib.import_module(module).main, argv)


def _assert_one_error_line(code: int, out: str, err: str) -> None:
    assert code == 2, (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("module,argv,fragments", ROWS)
def test_bad_input_exits_2_with_one_line(module: str, argv: list[str],
                                         fragments: tuple[str, ...], bad: dict[str, str],
                                         tmp_path: Path) -> None:
    argv = [a.format(tmp=tmp_path, **bad) for a in argv]
    code, out, err = _run(module, argv)
    _assert_one_error_line(code, out, err)
    for f in fragments:
        assert f in err, err
    assert list(tmp_path.iterdir()) == []  # refused before any report was written


def test_warmup_message_is_the_same_in_every_command() -> None:
    """One rule in one place (sim.config.check_warmup): the same line from each command."""
    argv = ["--model", "pixart", "--gpus", "8", "--steps", "4", "--warmup", "5"]
    errors = {m: _run(m, argv)[2] for m in ("sim.predict", "sim.plan", "sim.compare")}
    assert set(errors.values()) == {f"error: {WARMUP_MSG}\n"}, errors


def test_json_output_is_strict(capsys) -> None:
    with pytest.raises(UserError, match=r"non-finite number \(rows\[1\]\.busy\[0\] = nan\)"):
        print_json({"rows": [{"busy": [0.5]}, {"busy": [float("nan")]}]})
    assert capsys.readouterr().out == ""  # nothing half-printed
    with pytest.raises(UserError, match="inf"):
        print_json([1.0, float("inf")])
    print_json({"a": [1.0, 2], "b": None})
    assert json.loads(capsys.readouterr().out) == {"a": [1.0, 2], "b": None}


def test_profiles_built_in_memory_are_checked_where_they_are_used() -> None:
    """The loaders check files; a profile built in code is checked where it is applied, so a
    zero or negative bandwidth never reaches the engine (a hang, or ZeroDivisionError)."""
    link = LinkProfile.read(LINK)
    topo = build_topology(GPUS["cpu"], 2, "pcie")
    for bw in (0.0, -3e9, float("nan")):
        fits = {op: [dict(f, bandwidth_Bps=bw) for f in fs] for op, fs in link.meta["fits"]
                .items()}
        broken = LinkProfile(dict(link.meta, fits=fits), link.samples, "")
        with pytest.raises(ProfileError, match="bandwidth_Bps"):
            apply_link_profile(topo, broken)
    prof = ComputeProfile.read(COMPUTE)
    wl = Workload(get_model("pixart-small"), 256, 256, 4, "fp32")
    samples = [replace(prof.samples[0], median_s=math.inf)] + prof.samples[1:]
    with pytest.raises(ProfileError, match="sample 0, column 'median_s': inf is not a finite"):
        ProfileCost(wl, GPUS["cpu"], ComputeProfile(prof.meta, samples))


def test_link_profile_host_rows_may_dip_below_zero(tmp_path: Path) -> None:
    """``host_msg`` rows hold a difference of medians: slightly negative is noise (counted as
    zero), not corruption; the loader accepts it while refusing it in any timed row."""
    lines = LINK.read_text().splitlines()
    host = next(i for i, line in enumerate(lines, 1) if line.startswith("host_msg,"))
    path = _field(LINK, tmp_path / "h.csv", host, "median_s", "-1e-05")
    assert LinkProfile.read(path).host_table()[0][1] == 0.0
    with pytest.raises(ProfileError, match="line 3, column 'median_s': -1e-05 is non-positive"):
        LinkProfile.read(_field(LINK, tmp_path / "p.csv", 3, "median_s", "-1e-05"))


def _key(cfg) -> tuple:
    """A configuration without its warmup count."""
    return replace(cfg, warmup=0)


@pytest.mark.parametrize("warmups", [[0, 1, 2], [2, 1, 1], [3]])
def test_search_lists_stale_configs_per_warmup_and_the_others_once(warmups: list[int]) -> None:
    wl = Workload(get_model("pixart"), 1024, 1024, 4)
    cands = candidates(wl, 8, warmups)
    per = Counter(_key(c) for c in cands)
    asked = sorted(set(warmups))
    for cfg in cands:
        if cfg.stale:
            assert per[_key(cfg)] == len(asked)
            assert cfg.warmup in asked
        else:
            # Serial, Ulysses, ring, tensor, CFG, PipeFusion with M = 1 and their hybrids.
            assert per[_key(cfg)] == 1, cfg
            assert cfg.warmup == (0 if cfg.gpus == 1 else asked[0])
    strategies = {c.strategy for c in cands if not c.stale}
    assert {"serial", "ulysses", "ring", "tensor", "cfg", "hybrid"} <= strategies


@pytest.mark.parametrize("warmups,bad_count", [([5], 5), ([1, 5], 5), ([-1, 0], -1)])
def test_search_refuses_warmup_counts_outside_the_steps(warmups: list[int],
                                                        bad_count: int) -> None:
    """The search API applies the same rule: a count above the steps is refused, not
    dropped along with every configuration it would have applied to."""
    wl = Workload(get_model("pixart"), 1024, 1024, 4)
    with pytest.raises(UserError, match=f"step count 4, got {bad_count}$"):
        candidates(wl, 8, warmups)


# --- fuzz: sim.predict's numeric flags ---------------------------------------------------

# Each example starts from values that make a valid, fast run (pixart-tiny, small images, few
# steps) and replaces up to two flags by wild ones, so that both outcomes are explored: a
# prediction with finite output, and a refusal in one line.
_GOOD = {
    "gpus": st.sampled_from([1, 2, 4]),
    "patches": st.one_of(st.just("auto"), st.integers(1, 8)),
    "warmup": st.integers(0, 2),
    "steps": st.integers(2, 5),
    "resolution": st.sampled_from([64, 128, 256, 320]),
    "single-gpu-latency": st.one_of(st.none(), st.floats(1e-3, 1.0)),
}
_WILD = {
    "gpus": st.integers(-1, 9),
    "patches": st.integers(-1, 40),
    "warmup": st.integers(-2, 8),
    "steps": st.integers(-1, 6),
    "resolution": st.integers(-32, 400),
    "single-gpu-latency": st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(["nan", "inf", "-inf", "1e300", "5e-324", "0", "-0.0", "1e308"])),
}


@st.composite
def _predict_flags(draw) -> dict[str, object]:
    wild = draw(st.sets(st.sampled_from(sorted(_GOOD)), max_size=2))
    return {k: draw((_WILD if k in wild else _GOOD)[k]) for k in sorted(_GOOD)}


def _finite_json(text: str) -> object:
    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@settings(max_examples=40, deadline=None)
@given(flags=_predict_flags())
def test_fuzz_predict_numeric_flags(flags: dict[str, object]) -> None:
    """Exit 0 with finite, strict JSON, or exit 2 with one ``error:`` line: never a
    traceback (an exception escaping ``run_main`` fails the test with its traceback)."""
    # FLAG=VALUE: argparse would take a value such as -1e-05 for a flag of its own.
    argv = ["--model", "pixart-tiny", "--gpu", "cpu", "--dtype", "fp32", "--json"]
    argv += [f"--{k}={v}" for k, v in flags.items() if v is not None]
    code, out, err = _run("sim.predict", argv)
    if code == 0:
        d = _finite_json(out)
        assert math.isfinite(d["latency_s"]) and d["latency_s"] > 0
        assert d["config"]["gpus"] == flags["gpus"] and err == ""
    else:
        _assert_one_error_line(code, out, err)


# --- values built in code: the API's dataclasses ---------------------------------------

_PIXART = get_model("pixart")


@pytest.mark.parametrize("kwargs,message", [
    (dict(height=math.nan), "resolution (height) must be a whole number, got nan"),
    (dict(width=1024.0), "resolution (width) must be a whole number, got 1024.0"),
    (dict(steps=math.inf), "--steps must be a whole number, got inf"),
    (dict(steps=0), "--steps must be at least 1, got 0"),
    (dict(height=-16), "resolution must be positive, got 1024x-16"),
    (dict(dtype="fp8"), "--dtype must be one of bf16, fp16, fp32, got 'fp8'"),
    (dict(vae="no"), "vae must be True or False, got 'no'"),
    (dict(model="pixart"), "model must be a registry model"),
], ids=["height-nan", "width-float", "steps-inf", "steps-0", "height-negative", "dtype",
        "vae-str", "model-str"])
def test_workload_refuses_bad_values_when_built(kwargs: dict, message: str) -> None:
    """Built directly, a NaN height or an infinite step count passed ``validate`` (every
    comparison with NaN is false) or never ended; now refused with the command's message."""
    args = dict(model=_PIXART, height=1024, width=1024, steps=20)
    args.update(kwargs)
    with pytest.raises(UserError) as e:
        Workload(**args)
    assert str(e.value).startswith(message), e.value


@pytest.mark.parametrize("kwargs,message", [
    (dict(patches=math.nan), "--patches must be a whole number, got nan"),
    (dict(warmup=math.inf), "--warmup must be a whole number, got inf"),
    (dict(ring=True), "--ring must be a whole number, got True"),
    (dict(gpus=0), "--gpus must be at least 1, got 0"),
    (dict(ulysses=-2), "--ulysses must be at least 1, got -2"),
    (dict(cfg=3), "--cfg must be 1 or 2 (the guidance batch has two halves), got 3"),
    (dict(stage_blocks=[4, 3.5]), "--stage-blocks must be whole numbers"),
], ids=["patches-nan", "warmup-inf", "ring-bool", "gpus-0", "ulysses-negative", "cfg-3",
        "stage-blocks-float"])
def test_parallel_config_refuses_bad_values_when_built(kwargs: dict, message: str) -> None:
    args = dict(gpus=8, pipefusion=8, patches=8, warmup=1)
    args.update(kwargs)
    with pytest.raises(UserError) as e:
        ParallelConfig(**args)
    assert str(e.value) == message or str(e.value).startswith(message), e.value


def test_cli_and_constructor_give_the_same_message() -> None:
    """What the command prints after ``error:`` is what the constructor raises."""
    code, _, err = _run("sim.predict", ["--model", "pixart", "--gpus", "8", "--ulysses", "0"])
    assert code == 2
    with pytest.raises(UserError) as e:
        ParallelConfig(8, ulysses=0)
    assert err == f"error: {e.value}\n"


class _Index:
    """An integer of another kind (as numpy's): usable wherever Python wants an index."""

    def __index__(self) -> int:
        return 8


def test_built_values_are_plain_and_hashable() -> None:
    """Integers of other kinds become ints; stage block lists become tuples (the search keys
    dictionaries on configurations)."""
    cfg = ParallelConfig(_Index(), pipefusion=2, ulysses=4, stage_blocks=[14, 14])
    assert type(cfg.gpus) is int and cfg.gpus == 8
    assert cfg.stage_blocks == (14, 14) and hash(cfg) == hash(replace(cfg))


# --- trace CSVs read back (sim.trace.Trace.read_csv: validation's join) -------------------

def _trace_csv(tmp_path: Path) -> Path:
    from sim.api import predict

    path = tmp_path / "t.csv"
    predict(model="pixart-tiny", gpus=2, patches=2, steps=3).trace.write_csv(path)
    return path


@pytest.mark.parametrize("row,column,value,message", [
    (2, "start_s", "nan", "row 2 (line 3), column 'start_s': nan is not a finite time >= 0 s"),
    (3, "end_s", "inf", "row 3 (line 4), column 'end_s': inf is not a finite time >= 0 s"),
    (1, "start_s", "-0.5", "row 1 (line 2), column 'start_s': -0.5 is not a finite time"),
    (4, "end_s", "0", "row 4 (line 5): end_s 0 s is before start_s"),
    (5, "nbytes", "-8", "row 5 (line 6), column 'nbytes': -8 is below 0"),
    (5, "rank", "x", "row 5 (line 6), column 'rank': 'x' is not a whole number"),
    (6, "start_s", "", "row 6 (line 7), column 'start_s': '' is not a number"),
])
def test_trace_csv_refused_by_row_and_column(tmp_path: Path, row: int, column: str,
                                             value: str, message: str) -> None:
    from sim.trace import Trace

    good = _trace_csv(tmp_path)
    lines = good.read_text().splitlines()
    header = lines[0].split(",")
    if column == "end_s":  # make sure the row has a positive start, so end 0 is before it
        cells = lines[row].split(",")
        cells[header.index("start_s")] = "0.25"
        cells[header.index("end_s")] = "0.5"
        lines[row] = ",".join(cells)
    cells = lines[row].split(",")
    cells[header.index(column)] = value
    lines[row] = ",".join(cells)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as e:
        Trace.read_csv(bad)
    assert str(e.value) == f"{bad}, {message}" or str(e.value).startswith(f"{bad}, {message}")
    assert "\n" not in str(e.value)
    assert len(Trace.read_csv(good).rows) == len(lines) - 1


def test_trace_csv_that_is_not_a_trace(tmp_path: Path) -> None:
    from sim.trace import Trace

    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match=r"not a trace CSV \(no column rank, op"):
        Trace.read_csv(other)


# --- bounded time (item 3) ------------------------------------------------------------------

HANG_GUARD_S = 120  # a search that ignored its limit would run for minutes; not a timing target


def _slow_evaluate(job):
    time.sleep(3600)  # a simulation that would never end in the test's time


_REAL_BOUND_CHUNK = search_module._bound_chunk


def _slow_bounds_above_two_gpus(job):
    if any(c.gpus > 2 for c in job):
        time.sleep(3600)
    return _REAL_BOUND_CHUNK(job)


def _forked() -> None:
    if "fork" not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip("needs fork: the workers must inherit the patched function")


def test_search_stops_at_its_time_limit_and_says_what_it_left_out(monkeypatch) -> None:
    """Simulations that never end: the search kills them at the limit, recommends nothing
    simulated, and its note says so (the code before the limit waited forever)."""
    search_mod = search_module
    _forked()
    monkeypatch.setattr(search_mod, "_evaluate_chunk", _slow_evaluate)
    wl = Workload(get_model("pixart"), 1024, 1024, 4)
    gpu = GPUS["l40"]
    t0 = time.monotonic()
    res = search_mod.search(wl, gpu, build_topology(gpu, 4, "pcie"), [1], workers=2,
                            time_limit_s=3.0)
    assert time.monotonic() - t0 < HANG_GUARD_S
    assert res.ranked == [] and res.stopped_at_s == 3.0
    assert res.unsimulated == res.candidates and res.unbounded == 0
    note = res.stop_note()
    assert note.startswith("stopped by the time limit (--time-limit 3 s): ")
    assert f"{res.candidates} were bounded but not simulated" in note
    assert "nothing that fits was simulated" in note


def test_search_bounds_fewest_gpus_first_and_drops_cut_counts_whole(monkeypatch) -> None:
    """Bounds that take too long on 4 and 8 GPUs: the search answers from 1 and 2 GPUs, names
    the counts it did not search, and compares the recommendation with the lowest bound of
    what it did not simulate."""
    search_mod = search_module
    _forked()
    monkeypatch.setattr(search_mod, "_bound_chunk", _slow_bounds_above_two_gpus)
    wl = Workload(get_model("pixart"), 1024, 1024, 4)
    gpu = GPUS["l40"]
    res = search_mod.search(wl, gpu, build_topology(gpu, 8, "pcie"), [1], workers=2,
                            time_limit_s=20.0)
    assert res.stopped_at_s == 20.0 and res.unbounded_gpus == (4, 8)
    assert {p.config.gpus for p in res.ranked} <= {1, 2} and res.ranked
    full = candidates(wl, 8, [1])
    assert res.unbounded == sum(c.gpus in (4, 8) for c in full)
    assert res.candidates == len(full)
    note = res.stop_note()
    assert f"{res.unbounded} configurations on 4-8 GPUs were not searched" in note
    # Every bounded candidate on 1-2 GPUs was simulated or pruned: nothing left but the cut.
    assert res.unsimulated == 0 and "none of those bounded can beat" in note


def test_plan_with_nothing_simulated_in_time_is_one_line(monkeypatch) -> None:
    _forked()
    monkeypatch.setattr(search_module, "_evaluate_chunk", _slow_evaluate)
    code, out, err = _run("sim.plan", PLAN + ["--time-limit", "4", "--quiet"])
    _assert_one_error_line(code, out, err)
    assert "no configuration was simulated within --time-limit 4 s" in err


def test_plan_json_stopped_by_the_limit_warns_on_stderr(monkeypatch) -> None:
    """The ranking of what was searched on stdout (strict JSON), and one warning line on
    stderr saying what the limit left out."""
    _forked()
    monkeypatch.setattr(search_module, "_bound_chunk", _slow_bounds_above_two_gpus)
    argv = ["--model", "pixart", "--gpus", "8", "--steps", "4", "--warmup", "1",
            "--time-limit", "25", "--json", "--quiet"]  # progress lines would join the warning
    code, out, err = _run("sim.plan", argv)
    assert code == 0, err
    rows = _finite_json(out)
    assert rows and {r["config"]["gpus"] for r in rows} <= {1, 2}
    assert err.startswith("warning: stopped by the time limit (--time-limit 25 s): ")
    assert "configurations on 4-8 GPUs were not searched" in err and err.count("\n") == 1


def test_predict_gives_up_at_its_time_limit(monkeypatch) -> None:
    from sim import predict as predict_mod

    def slow(*args, **kwargs):
        time.sleep(3600)

    monkeypatch.setattr(predict_mod, "evaluate", slow)
    t0 = time.monotonic()
    code, out, err = _run("sim.predict", PREDICT + ["--time-limit", "0.5"])
    assert time.monotonic() - t0 < HANG_GUARD_S
    _assert_one_error_line(code, out, err)
    assert "the simulation did not finish within --time-limit 0.5 s" in err
    assert "--time-limit 0 to wait for it" in err


def test_compare_gives_up_at_its_time_limit_leaving_no_worker(monkeypatch) -> None:
    """The limit interrupts the search's wait; its workers are killed, not waited for."""
    _forked()
    monkeypatch.setattr(search_module, "_evaluate_chunk", _slow_evaluate)
    monkeypatch.setattr(search_module.os, "cpu_count", lambda: 2)
    import multiprocessing

    before = {p.pid for p in multiprocessing.active_children()}  # other tests' leftovers
    t0 = time.monotonic()
    code, out, err = _run("sim.compare", ["--model", "pixart", "--gpus", "8", "--steps", "4",
                                          "--resolutions", "1024", "--time-limit", "3",
                                          "--quiet"])
    assert time.monotonic() - t0 < HANG_GUARD_S
    _assert_one_error_line(code, out, err)
    assert "the comparison did not finish within --time-limit 3 s" in err
    # Asked of the operating system: the pool's own thread may have reaped a killed worker,
    # and then the Process object, unable to wait for it, still says it is alive.
    assert [p.pid for p in multiprocessing.active_children()
            if p.pid not in before and _running(p.pid)] == []


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


@pytest.mark.parametrize("stages,sp", [(8, 1), (8, 2), (4, 8), (2, 16)])
def test_patch_counts_capped_as_xdit_caps_them(stages: int, sp: int) -> None:
    """xDiT rounds a patch up to a whole token row per sequence-parallel rank, so a patch
    count above rows // sp is not one it runs; the search does not list it either."""
    from sim.search import patch_candidates

    rows = 64  # 1024 px PixArt: 64 rows of 2-row patches in the latent
    ms = patch_candidates(stages, rows, sp)
    assert ms and max(ms) <= rows // sp
    assert set(ms) == {m for m in patch_candidates(stages, rows) if m <= rows // sp}
    wl = Workload(get_model("pixart"), 1024, 1024, 4)
    for cfg in candidates(wl, 16, [1]):
        assert cfg.patches <= rows // (cfg.ulysses * cfg.ring), cfg


def test_executor_check_starts_nothing_and_says_how_to_launch(monkeypatch) -> None:
    """Issue 18 (11): under torchrun bad input ends as torchrun's exit 1 and its report;
    ``--check NPROC`` checks the flags for that launch first, in one process."""
    import executor.run as run_mod

    def no_run(*args, **kwargs):
        raise AssertionError("--check must not start a run")

    monkeypatch.setattr(run_mod, "execute", no_run)
    code, out, err = _run("executor.run", ["--model", "pixart-tiny", "--resolution", "256",
                                           "--ulysses", "2", "--check", "2"])
    assert code == 0 and err == ""
    assert out == ("ok: ulysses2 on 2 processes; start it with torchrun --nproc_per_node 2 "
                   "-m executor.run and the same flags (without --check)\n")
