"""The Python API (sim.api): the commands' parsers, defaults and messages, objects and pandas
tables, the docstring examples and docs/api_example.py."""

from __future__ import annotations

import doctest
import importlib
import inspect
import math
import subprocess
import sys
from pathlib import Path

import pytest

import sim
from sim import api
from sim.cli import argv_from_kwargs, run_main

ROOT = Path(__file__).resolve().parents[1]
pd = pytest.importorskip("pandas")


def _cli_error(main, argv: list[str], capsys) -> str:
    """What the command prints after ``error:`` (and that it exits 2)."""
    with pytest.raises(SystemExit) as exc:
        run_main(main, argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith("error: ")
    return err.removeprefix("error: ")


# (API function, command, keyword arguments): each is bad input the command refuses.
BAD = [
    ("predict", dict(model="nope", gpus=2)),
    ("predict", dict(model="pixart", gpus=2, gpu="gtx480")),
    ("predict", dict(model="pixart", gpus=2, link="smoke")),
    ("predict", dict(model="pixart", gpus=8, pipefusion=4)),
    ("predict", dict(model="pixart", gpus=8, patches=65)),
    ("predict", dict(model="pixart", gpus=8, patches="many")),
    ("predict", dict(model="pixart", gpus=8, resolution=1000)),
    ("predict", dict(model="pixart", gpus=8, resolution=(1000, 512))),
    ("predict", dict(model="pixart", gpus=8, stage_blocks=[4, 4], patches=8)),
    ("predict", dict(model="pixart", gpus=8, cfg=3)),
    ("predict", dict(model="pixart", gpus=2, single_gpu_latency=-1.0)),
    ("predict", dict(model="pixart", gpus=2, dtype="int4")),
    ("predict", dict(model="pixart", gpus="two")),
    ("plan", dict(model="pixart", gpus=4, warmup=[0, 99])),
    ("plan", dict(model="pixart", gpus=4, top=0)),
    ("plan", dict(model="pixart", gpus=4, nodes=3)),
    ("compare", dict(model="pixart", gpus=4, resolutions=[])),
    ("compare", dict(model="pixart", gpus=4, resolutions="big")),
]


@pytest.mark.parametrize("name,kwargs", BAD)
def test_api_raises_the_message_the_command_prints(name: str, kwargs: dict, capsys) -> None:
    module = importlib.import_module(f"sim.{name}")
    expected = _cli_error(module.main, argv_from_kwargs(kwargs), capsys)
    with pytest.raises(api.UserError) as exc:
        getattr(api, name)(**kwargs)
    assert str(exc.value) == expected


def test_a_flag_the_command_lacks_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        api.predict(model="pixart", gpus=2, patchez=4)


@pytest.mark.parametrize("name", ["predict", "plan", "compare"])
def test_api_defaults_are_the_commands_defaults(name: str) -> None:
    module = importlib.import_module(f"sim.{name}")
    defaults = vars(module.build_parser().parse_args(["--model", "m", "--gpus", "1"]))
    for param in inspect.signature(getattr(api, name)).parameters.values():
        if param.name in ("model", "gpus"):
            assert param.default is inspect.Parameter.empty  # required, as the flags are
        elif param.name in ("text_encoder", "vae"):
            assert param.default is True and defaults[f"no_{param.name}"] is False
        else:
            # The API's default, given as the flag, reads as the command's default.
            given = module.build_parser().parse_args(
                ["--model", "m", "--gpus", "1"] + argv_from_kwargs({param.name: param.default}))
            assert getattr(given, param.name) == defaults[param.name], param.name


def test_predict_equals_the_command(capsys) -> None:
    kw = dict(model="pixart", gpus=4, ulysses=2, patches=4, steps=6, warmup=1,
              resolution="1024x512", vae=False)
    pred = api.predict(**kw)
    import json

    with pytest.raises(SystemExit):
        run_main(importlib.import_module("sim.predict").main, argv_from_kwargs(kw) + ["--json"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(pred.as_dict()))
    assert pred.config.label() == "pipefusion2(M=4,W=1) x ulysses2"
    assert pred.workload.vae is False and (pred.workload.width, pred.workload.height) == \
        (1024, 512)


def test_plan_object_and_frame(capsys) -> None:
    plan = api.plan(model="pixart", gpus=4, steps=6, warmup=[0, 1])
    frame = plan.to_frame()
    assert list(frame.columns) == list(sim.plan.PLAN_COLUMNS)
    assert len(frame) == len(plan.candidates) == plan.run.result.candidates
    simulated = frame[frame["simulated"]]
    assert list(simulated["label"]) == [p.config.label() for p in plan.ranked]
    assert frame.loc[~frame["simulated"], "latency_s"].isna().all()
    assert (simulated["lower_bound_s"] <= simulated["latency_s"] * (1 + 1e-9)).all()
    serial = simulated[simulated["strategy"] == "serial"]
    assert serial["speedup"].tolist() == [1.0]
    # The fastest is recommended, or shown beside the recommendation as its riskier (W=0)
    # alternative.
    assert plan.ranked[0] in (plan.recommended, plan.riskier_alternative) and plan.why
    # The object holds what the command prints.
    with pytest.raises(SystemExit):
        run_main(sim.plan.main, ["--model", "pixart", "--gpus", "4", "--steps", "6",
                                 "--warmup", "0,1"])
    out = capsys.readouterr().out
    assert plan.table() in out and f"why: {plan.why}" in out


def test_compare_object_and_frame() -> None:
    cmp = api.compare(model="pixart", gpus=2, steps=4, resolutions=[512, 1024])
    frame = cmp.to_frame()
    assert set(frame["resolution"]) == {512, 1024}
    for row in frame.itertuples():
        p = cmp.cells[row.strategy][row.resolution]
        assert (row.label, row.latency_s, row.oom) == (p.config.label(), p.latency_s, p.oom)
        serial = cmp.cells["serial"][row.resolution].latency_s
        assert math.isclose(row.speedup, serial / p.latency_s)


def test_trace_frame_has_every_row_and_column() -> None:
    pred = api.predict(model="pixart", gpus=2, steps=10, patches=2)
    frame = pred.trace.to_frame()
    assert list(frame.columns) == list(pred.trace.rows[0]._fields)
    assert len(frame) == len(pred.trace.rows)
    assert frame["end_s"].max() == pytest.approx(pred.latency_s)


def test_the_package_exports_the_api_whatever_was_imported_first() -> None:
    # sim.predict is the command's module and the API function at once: importing the module
    # (as the commands and reports do) must not turn sim.predict into something uncallable.
    code = ("import sim.predict, sim.plan, sim.compare, sim\n"
            "p = sim.predict(model='pixart', gpus=2, steps=3)\n"
            "assert callable(sim.plan) and callable(sim.compare) and sim.api.predict\n"
            "assert sim.Prediction is type(p) and issubclass(sim.UserError, ValueError)\n"
            "import sys\n"
            "assert 'pandas' not in sys.modules, 'pandas loaded without a table asked for'\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr


def test_python_m_runs_the_commands_without_warnings() -> None:
    res = subprocess.run([sys.executable, "-W", "error", "-m", "sim.predict", "--model",
                          "pixart", "--gpus", "2", "--steps", "3", "--json"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr


@pytest.mark.parametrize("module", ["sim.api", "sim.predict", "sim.plan", "sim.compare",
                                    "sim.trace"])
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_the_example_script_runs() -> None:
    res = subprocess.run([sys.executable, "docs/api_example.py"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "recommended:" in res.stdout and "refused: parallel degrees multiply" in res.stdout
