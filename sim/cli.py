"""Pieces shared by the command-line entry points: common flags, input parsing, and the rule
that user errors print one line and exit 2 with no traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from sim.config import DTYPE_BYTES, Workload
from sim.cost import CostSpec
from sim.cost.link_profile import apply_link_profile
from sim.errors import UserError
from sim.evaluate import calibration_scale
from sim.hardware import DEFAULT_GPU, GPU, get_gpu
from sim.models import get_model
from sim.topology import INTER_NODE, Topology, build_topology


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
    p.add_argument("--inter-node", default="ib-ndr", choices=list(INTER_NODE),
                   help="network between nodes")
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
                        "the analytic roofline")
    p.add_argument("--link-profile", default=None, metavar="FILE",
                   help="measured link profile (python -m profiles.links): its fitted "
                        "point-to-point latency and bandwidth replace the registry's")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def at_least(value: float, minimum: float, flag: str) -> None:
    """Raise a ``UserError`` naming ``flag`` unless ``value >= minimum``."""
    if value < minimum:
        raise UserError(f"{flag} must be at least {minimum:g}, got {value:g}")


def positive(value: float, flag: str) -> None:
    """Raise a ``UserError`` naming ``flag`` unless ``value > 0``."""
    if not value > 0:
        raise UserError(f"{flag} must be positive, got {value:g}")


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
    topo = build_topology(gpu, args.gpus, args.link, args.nodes, args.inter_node)
    if args.link_profile:
        _exists(args.link_profile, "--link-profile")
        topo = apply_link_profile(topo, args.link_profile)
    return gpu, topo


def cost_spec_from_args(args: argparse.Namespace) -> CostSpec:
    """How to cost compute ops: the profile given with --profile, else the roofline."""
    if args.profile:
        _exists(args.profile, "--profile")
    return CostSpec(args.profile)


def calibration_from_args(args: argparse.Namespace, wl: Workload, gpu: GPU,
                          spec: CostSpec) -> float:
    """The factor on compute costs that --single-gpu-latency asks for (1.0 without it)."""
    if args.single_gpu_latency is None:
        return 1.0
    positive(args.single_gpu_latency, "--single-gpu-latency")
    return calibration_scale(wl, gpu, args.single_gpu_latency, spec)


def _exists(path: str, flag: str) -> None:
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


def write_output(path: str, write: Callable[[Path], None]) -> None:
    """Write a file atomically (temp file, then rename) so nothing half-written is left."""
    target = Path(path)
    if not target.parent.exists():
        raise UserError(f"cannot write {path}: folder {target.parent} does not exist")
    tmp = target.with_name(target.name + ".tmp")
    try:
        write(tmp)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def print_json(obj: object) -> None:
    """Print ``obj`` as indented JSON on stdout."""
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run ``main``; a ``UserError`` becomes one line on stderr and exit status 2."""
    try:
        code = main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # The reader (head, less) went away: not an error of ours; keep Python quiet at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    sys.exit(code)
