"""Pieces shared by the command-line entry points: common flags, input parsing, and the rule
that user errors print one line and exit 2 with no traceback."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sim.config import DTYPE_BYTES, Workload
from sim.cost import CostSpec
from sim.cost.link_profile import apply_link_profile
from sim.cost.profile import speed_check
from sim.cost.profile_format import ComputeProfile
from sim.cost.shipped import SHIPPED, shipped_profile
from sim.errors import RunFailed, UserError
from sim.evaluate import calibration_scale
from sim.hardware import DEFAULT_GPU, GPU, HOST_CPUS, NCCL_VERSIONS, RING_OVERLAP_CHOICES, get_gpu
from sim.models import get_model
from sim.progress import Progress
from sim.topology import INTER_NODE, Topology, build_topology

DEFAULT_INTER_NODE = "ib-ndr"  # the network between nodes when --inter-node is not given


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags as a ``UserError`` (one line, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see --help)")


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser whose errors follow the one-line, exit-2 rule."""
    return _Parser(prog=prog, description=description,
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_workload_args(p: argparse.ArgumentParser) -> None:
    """Flags describing the model, image and cluster."""
    p.add_argument("--model", required=True, help="model name or alias (pixart, sd3, flux, ...)")
    p.add_argument("--gpu", default=None,
                   help="GPU kind (default: l40 with --link pcie, a100-sxm-80g with nvlink)")
    p.add_argument("--gpus", type=int, required=True, help="number of GPUs in all")
    p.add_argument("--link", default="pcie", choices=["pcie", "nvlink"],
                   help="GPU-to-GPU interconnect inside a node")
    p.add_argument("--nodes", type=int, default=1, help="machines the GPUs are spread over")
    # Default None (meaning ib-ndr) so that an explicit --inter-node with one node can be
    # told apart and warned about.
    p.add_argument("--inter-node", default=None, choices=list(INTER_NODE),
                   help=f"network between nodes (default {DEFAULT_INTER_NODE})")
    p.add_argument("--nccl", default=NCCL_VERSIONS[0], choices=list(NCCL_VERSIONS),
                   help="NCCL behaviour on PCIe hosts: 2.23 (2.23.4 and later: peer-to-peer "
                        "only behind a shared PCIe switch, else through host memory) or 2.22 "
                        "(earlier: also peer-to-peer across the CPU on AMD hosts)")
    p.add_argument("--host-cpu", default=None, choices=list(HOST_CPUS),
                   help="CPU vendor of PCIe hosts (default: amd for PCIe Gen4 hosts, intel "
                        "for Gen3 and Gen5); sets the socket-link rate NCCL assumes and "
                        "whether it goes peer-to-peer across the CPU")
    p.add_argument("--ring-overlap", default="auto", choices=list(RING_OVERLAP_CHOICES),
                   help="whether ring attention's K,V exchange runs under its attention: "
                        "auto (no over NVLink, where a runtime without "
                        "CUDA_DEVICE_MAX_CONNECTIONS set runs them one after the other; yes "
                        "over PCIe), yes, or no")
    p.add_argument("--resolution", default="1024",
                   help="image size in pixels: N for NxN, or WIDTHxHEIGHT")
    p.add_argument("--steps", type=int, default=None,
                   help="diffusion steps (default: the model's usual count)")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPE_BYTES))
    p.add_argument("--no-text-encoder", action="store_true",
                   help="leave text encoding out of latency and memory (it runs elsewhere)")
    p.add_argument("--no-vae", action="store_true",
                   help="leave the VAE decode out of latency and memory")
    p.add_argument("--single-gpu-latency", type=float, default=None, metavar="SECONDS",
                   help="your measured single-GPU end-to-end latency for this model, "
                        "resolution and steps; compute costs are scaled to match it")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="measured compute profile (python -m profiles.collect) instead of "
                        "the analytic roofline; 'shipped' takes the one in profiles/data/ "
                        "of this --gpu, model and --dtype (H200, bf16: pixart-alpha, "
                        "sd3-medium, flux-dev)")
    p.add_argument("--link-profile", default=None, metavar="FILE",
                   help="measured link profile (python -m profiles.links): its fitted "
                        "point-to-point latency and bandwidth replace the registry's")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def add_quiet_arg(p: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress lines on stderr (warnings, errors and the names of the files
    written still go there)."""
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def progress_from_args(args: argparse.Namespace, t0: float | None = None) -> Progress:
    """The command's progress on stderr, from ``t0`` (``time.perf_counter``; default now),
    silenced by ``--quiet``. Shown with ``--json`` too: it never touches stdout."""
    return Progress(quiet=bool(getattr(args, "quiet", False)), t0=t0)


def is_finite(value: float) -> bool:
    """Whether ``value`` is a finite number (ints always are, however large: converting a
    huge one to float would raise instead)."""
    return isinstance(value, int) or math.isfinite(value)


def show(value: float) -> str:
    """``value`` for an error line: ``nan``, ``inf``, ``1e+300`` for floats, every digit for
    ints (a huge int does not format as a float)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def finite(value: float, flag: str, low: float = -math.inf, high: float = math.inf,
           unit: str = "") -> None:
    """Raise a ``UserError`` naming ``flag`` unless ``value`` is a finite number with
    ``low <= value <= high`` (NaN and the infinities never are: they would slip through
    plain comparisons and come out as ``nan`` results). ``unit`` follows the bounds in the
    message, e.g. ``" s"``."""
    if is_finite(value) and low <= value <= high:
        return
    if math.isinf(low) and math.isinf(high):
        rule = "a finite number"
    elif math.isinf(high):
        rule = f"a finite number of at least {low:g}{unit}"
    elif math.isinf(low):
        rule = f"a finite number of at most {high:g}{unit}"
    else:
        rule = f"a finite number between {low:g} and {high:g}{unit}"
    raise UserError(f"{flag} must be {rule}, got {show(value)}")


def at_least(value: float, minimum: float, flag: str) -> None:
    """Raise a ``UserError`` naming ``flag`` unless ``value >= minimum`` and is finite (NaN
    fails every comparison, so ``value < minimum`` alone would let it through)."""
    if not (is_finite(value) and value >= minimum):
        raise UserError(f"{flag} must be at least {minimum:g}, got {show(value)}")


def positive(value: float, flag: str) -> None:
    """Raise a ``UserError`` naming ``flag`` unless ``value > 0`` and is finite (an infinite
    timeout or latency is no number a run can use)."""
    if not (is_finite(value) and value > 0):
        raise UserError(f"{flag} must be positive and finite, got {show(value)}")


def moved_report_flag(p: argparse.ArgumentParser, command: str) -> None:
    """Point ``--report`` at ``python -m {command}``, which writes HTML reports now (reports
    sit in a layer above ``sim``): a hidden flag, so that old command lines say where to go
    (see ``reject_moved_report``), and a help epilog."""
    p.epilog = f"HTML report: python -m {command}, same flags plus --report FILE."
    p.add_argument("--report", default=None, help=argparse.SUPPRESS)


def reject_moved_report(args: argparse.Namespace, command: str) -> None:
    """Raise a ``UserError`` naming ``command`` when the moved ``--report`` flag was given."""
    if args.report is not None:
        raise UserError(f"HTML reports are written by python -m {command} (same flags plus "
                        f"--report FILE)")


def parse_resolution(text: str) -> tuple[int, int]:
    """``"1024"`` -> (1024, 1024); ``"2048x1024"`` (width x height) -> (1024, 2048) as
    (height, width)."""
    try:
        if "x" in text.lower():
            w, h = (int(v) for v in text.lower().split("x"))
            return h, w
        v = int(text)
        return v, v
    except ValueError:
        raise UserError(f"--resolution must be N or WIDTHxHEIGHT in pixels, got '{text}'") from None


def workload_from_args(args: argparse.Namespace) -> Workload:
    """The ``Workload`` the flags describe."""
    model = get_model(args.model)
    h, w = parse_resolution(args.resolution)
    steps = args.steps if args.steps is not None else model.default_steps
    return Workload(model, h, w, steps, args.dtype, text_encoder=not args.no_text_encoder,
                    vae=not args.no_vae)


def cluster_from_args(args: argparse.Namespace) -> tuple[GPU, Topology]:
    """The GPU kind (default per link) and the cluster graph the flags describe, with the
    link profile applied when one is given."""
    gpu = get_gpu(args.gpu or DEFAULT_GPU[args.link])
    if args.inter_node is not None and args.nodes == 1:
        # Not an error: the answer is right, the flag just has nothing to act on.
        print(f"warning: --inter-node {args.inter_node} is ignored with one node (--nodes 1)",
              file=sys.stderr)
    if args.inter_node is None:
        args.inter_node = DEFAULT_INTER_NODE  # later users (reports.plan) read it too
    if args.link == "nvlink" and args.host_cpu is not None:
        print(f"warning: --host-cpu {args.host_cpu} is ignored with --link nvlink (it decides "
              f"PCIe transports only)", file=sys.stderr)
    topo = build_topology(gpu, args.gpus, args.link, args.nodes, args.inter_node,
                          args.nccl, args.host_cpu, args.ring_overlap)
    if args.link_profile:
        _exists(args.link_profile, "--link-profile")
        topo = apply_link_profile(topo, args.link_profile)
    return gpu, topo


# Warnings already printed by this process: a command that builds its costs once per
# resolution (sim.compare), or a notebook calling the API in a loop, sees each once.
_WARNED: set[str] = set()


def cost_spec_from_args(args: argparse.Namespace) -> CostSpec:
    """How to cost compute ops: the profile given with --profile, else the roofline. A CPU
    profile from another CPU model, or one whose reference op runs more than 10 % faster or
    slower here now (``speed_check``), prints a ``warning:`` line on stderr (once per
    process); the check's notes travel with the spec into the prediction's JSON."""
    if not args.profile:
        return CostSpec()
    if args.profile == SHIPPED:
        gpu = get_gpu(args.gpu or DEFAULT_GPU[args.link])
        # Later readers (the plan's text, the reports) see the file it stands for.
        args.profile = str(shipped_profile(get_model(args.model).name, gpu, args.dtype))
    _exists(args.profile, "--profile")
    warning, note = speed_check(ComputeProfile.read(args.profile).meta)
    if warning and warning not in _WARNED:
        _WARNED.add(warning)
        print(f"warning: --profile {args.profile}: {warning}", file=sys.stderr)
    return CostSpec(args.profile, tuple(n for n in (warning, note) if n))


def calibration_from_args(args: argparse.Namespace, wl: Workload, gpu: GPU,
                          spec: CostSpec) -> float:
    """The factor on compute costs that --single-gpu-latency asks for (1.0 without it)."""
    if args.single_gpu_latency is None:
        return 1.0
    positive(args.single_gpu_latency, "--single-gpu-latency")
    # calibration_scale also bounds the resulting factor (1e300 is finite but no latency).
    return calibration_scale(wl, gpu, args.single_gpu_latency, spec,
                             name="--single-gpu-latency")


def _exists(path: str, flag: str) -> None:
    if Path(path).is_dir():
        raise UserError(f"{flag} {path} is a folder; give the profile's CSV file")
    if not Path(path).is_file():
        raise UserError(f"{flag} {path}: no such file; collect one with python -m "
                        f"profiles.{'links' if 'link' in flag else 'collect'}")


def parse_int_list(text: str | None, flag: str) -> tuple[int, ...] | None:
    """``"7,7,7,7"`` -> (7, 7, 7, 7); ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{flag} must be comma-separated integers, got '{text}'") from None


def non_finite(obj: object, path: str = "") -> tuple[str, float] | None:
    """The first NaN or infinity in ``obj`` (nested dicts, lists, tuples of numbers) as
    (where, value), e.g. ``("[3].busy_fraction[1]", nan)``; ``None`` when every number is
    finite."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (path or "the value", obj)
    if isinstance(obj, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for where, v in items:
        found = non_finite(v, where)
        if found is not None:
            return found
    return None


def time_limit_arg(p: argparse.ArgumentParser, default: float, what: str) -> None:
    """Add ``--time-limit SECONDS`` to a command whose work ``what`` may run for minutes."""
    p.add_argument("--time-limit", type=float, default=default, metavar="SECONDS",
                   help=f"give up on {what} after this many seconds (default {default:g}) "
                        f"with one line saying so; 0 waits for it")


def checked_time_limit(seconds: float) -> float | None:
    """``--time-limit`` in seconds, None for no limit (0); ``UserError`` unless finite and
    >= 0."""
    if not (is_finite(seconds) and seconds >= 0):
        raise UserError(f"--time-limit must be a finite number of seconds >= 0 (0: no "
                        f"limit), got {show(seconds)}")
    return seconds or None


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str, advice: str) -> Iterator[None]:
    """Run the block for at most ``seconds`` (None: no limit): past it, ``UserError`` ("``what``
    did not finish within --time-limit N s; ``advice``") is raised in the block. A timer
    signal, so only in the main thread of a process on a system that has one; elsewhere (a
    library call in a worker thread) the block runs unbounded."""
    usable = (seconds is not None and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise UserError(f"{what} did not finish within --time-limit {seconds:g} s; {advice}, "
                        f"or --time-limit 0 to wait for it")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_finite(obj: object, what: str) -> None:
    """Raise a ``UserError`` when ``obj`` (a result about to be printed or written) holds a
    NaN or infinity: every input is checked where it enters, so one here means a result no
    one should act on; it is refused rather than shown as ``nan``."""
    found = non_finite(obj)
    if found is not None:
        where, value = found
        raise UserError(f"{what} holds a non-finite number ({where} = {value}); refusing to "
                        f"print it. Check the inputs it rests on (--profile, --link-profile, "
                        f"--single-gpu-latency)")


def print_json(obj: object) -> None:
    """Print ``obj`` as indented, strict JSON on stdout: a NaN or infinity (which ``json``
    would write as the non-standard ``NaN``/``Infinity``) raises a ``UserError`` naming where
    it is, before anything is printed."""
    check_finite(obj, "the JSON output")
    sys.stdout.write(json.dumps(obj, indent=2, allow_nan=False) + "\n")


# Keyword arguments of the Python API whose flag says the opposite (``vae=False``).
NEGATED_FLAGS = {"text_encoder": "--no-text-encoder", "vae": "--no-vae"}


def argv_from_kwargs(kwargs: dict[str, Any]) -> list[str]:
    """The command-line flags that say what the Python API's keyword arguments say, so that
    both go through the same parser, defaults and checks: ``None`` leaves a flag out (its
    default), ``True`` sets a switch, lists and tuples join with commas, a (width, height)
    ``resolution`` reads ``WIDTHxHEIGHT``, ``text_encoder=False`` is ``--no-text-encoder``."""
    argv: list[str] = []
    for key, value in kwargs.items():
        if value is None:
            continue
        if key in NEGATED_FLAGS:
            if value is not True and value is not False:
                raise UserError(f"{key} must be True or False, got {value!r}")
            if value is False:
                argv.append(NEGATED_FLAGS[key])
            continue
        flag = "--" + key.replace("_", "-")
        if value is True or value is False:
            if value:
                argv.append(flag)
            continue
        if key == "resolution" and isinstance(value, (list, tuple)):
            value = "x".join(str(v) for v in value)
        elif isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        argv += [flag, str(value)]
    return argv


def callable_module(name: str, fn: Callable[..., Any]) -> None:
    """Make module ``name`` callable as ``fn``: ``sim.predict`` is both the module of
    ``python -m sim.predict`` and, called, the Python API's ``predict`` (the package exports
    the API under the commands' names, and a submodule's import would otherwise replace the
    function by the module)."""

    class CommandModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

    sys.modules[name].__class__ = CommandModule


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run ``main``; a ``UserError`` becomes one line on stderr and exit status 2, a
    ``RunFailed`` one line and exit status 1."""
    try:
        code = main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # The reader (head, less) went away: not an error of ours; keep Python quiet at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    sys.exit(code)
