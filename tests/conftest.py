"""Shared fixtures: small workloads and a link-free topology for closed-form checks, and a
command's ``main`` run in this process."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import pytest

from sim.cli import run_main
from sim.config import Workload
from sim.hardware import get_gpu
from sim.models import get_model
from sim.topology import Topology, build_topology


def free_links(topo: Topology) -> Topology:
    """``topo`` with (practically) infinite bandwidth and no latency on every edge."""
    topo.capacity = [1e30] * len(topo.capacity)
    topo.latency = [0.0] * len(topo.latency)
    return topo


def run_cli(main: Callable[[list[str] | None], int], argv: list[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of a command's ``main`` run on ``argv`` as its
    ``python -m`` entry runs it (``sim.cli.run_main``, which always exits), in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            pytest.raises(SystemExit) as exc:
        run_main(main, argv)
    code = exc.value.code
    return code if isinstance(code, int) else 1, out.getvalue(), err.getvalue()


@pytest.fixture
def pixart_1024() -> Workload:
    return Workload(get_model("pixart"), 1024, 1024, 20)


@pytest.fixture
def l40_pcie8() -> Topology:
    return build_topology(get_gpu("l40"), 8, "pcie")
