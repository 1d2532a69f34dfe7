"""``python -m sim.predict``: simulate one configuration and report latency, memory, comms.

Example::

    python -m sim.predict --model pixart --gpu l40 --gpus 8 --link pcie --resolution 1024 \\
        --steps 20 --pipefusion 8 --patches 8 --warmup 1 --json

From Python, ``sim.predict(model=..., gpus=..., ...)`` (this module, called) or
``sim.api.predict``: the same flags as keyword arguments (``api_predict``).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from sim.cli import (
    add_quiet_arg,
    add_workload_args,
    argv_from_kwargs,
    calibration_from_args,
    callable_module,
    check_finite,
    checked_time_limit,
    cluster_from_args,
    cost_spec_from_args,
    parse_int_list,
    parser,
    print_json,
    progress_from_args,
    run_main,
    time_limit,
    time_limit_arg,
    workload_from_args,
)
from sim.config import ParallelConfig, Workload, check_patches_need_pipefusion, validate
from sim.cost import CostModel
from sim.errors import UserError
from sim.evaluate import Prediction, evaluate
from sim.hardware import GPU
from sim.outputs import check_outputs, write_outputs
from sim.progress import QUIET, Progress
from sim.topology import Topology


def build_parser() -> argparse.ArgumentParser:
    p = parser("python -m sim.predict",
               "Predict latency, memory and communication of one parallel configuration.")
    add_workload_args(p)
    add_quiet_arg(p)
    p.add_argument("--pipefusion", type=int, default=None,
                   help="PipeFusion degree (pipeline stages); default: the GPUs the other "
                        "degrees leave (all of them when none is given)")
    p.add_argument("--ulysses", type=int, default=1,
                   help="Ulysses sequence-parallel degree (must divide the head count)")
    p.add_argument("--ring", type=int, default=1, help="ring-attention degree")
    p.add_argument("--tensor", type=int, default=1, help="tensor-parallel degree (Megatron)")
    p.add_argument("--cfg", type=int, default=1, choices=[1, 2],
                   help="2 runs the two guidance halves on two GPU groups")
    p.add_argument("--distrifusion", type=int, default=1,
                   help="DistriFusion degree (patch parallel; combines only with --cfg)")
    p.add_argument("--patches", default="auto",
                   help="patches per image M, or 'auto' for the best M in 1..4N")
    p.add_argument("--warmup", type=int, default=1,
                   help="synchronous warmup steps (full image, no stale context)")
    p.add_argument("--stage-blocks", default=None,
                   help="blocks per pipeline stage, comma-separated (default: even split)")
    p.add_argument("--trace", default=None, metavar="FILE", help="write the trace as CSV")
    p.add_argument("--chrome-trace", default=None, metavar="FILE",
                   help="write a Chrome/Perfetto trace (open in ui.perfetto.dev)")
    time_limit_arg(p, DEFAULT_TIME_LIMIT_S, "the simulation")
    return p


# How long the command simulates before giving up, seconds (issue 18: every command answers
# or refuses within a documented bound). Flux on 64 GPUs at 8192 px with 64 patches took
# about 5 minutes here.
DEFAULT_TIME_LIMIT_S = 60.0


def best_patches(wl: Workload, cfg: ParallelConfig, gpu: GPU, topo: Topology,
                 cost: CostModel, scale: float) -> Prediction:
    """The prediction with the lowest latency over M in 1..4N (fewest patches on ties)."""
    n = cfg.pipefusion
    rows, _ = wl.model.token_grid(wl.height, wl.width)
    best = None
    for m in range(1, min(4 * n, rows) + 1):
        if n == 1 and m > 1:
            break
        trial = replace(cfg, patches=m)
        try:
            validate(wl, trial)
        except UserError:
            continue  # e.g. this M leaves patches that do not split over the SP ranks
        pred = evaluate(wl, trial, gpu, topo, cost, scale)
        if best is None or pred.latency_s < best.latency_s:
            best = pred
    if best is None:
        raise UserError("no patch count in 1..4N splits evenly over the sequence-parallel "
                        "ranks; give --patches explicitly")
    return best


def predict(args: argparse.Namespace, progress: Progress | None = None) -> Prediction:
    """Prediction for parsed command-line ``args``; a long simulation says so on stderr
    after 2 s (``progress``; default: unless ``--quiet``)."""
    if progress is None:
        progress = progress_from_args(args)
    wl = workload_from_args(args)
    gpu, topo = cluster_from_args(args)
    others = args.ulysses * args.ring * args.tensor * args.cfg * args.distrifusion
    degree = args.pipefusion
    if degree is None:
        degree = args.gpus // others if others > 0 and args.gpus % others == 0 else 1
    degrees = dict(cfg=args.cfg, ulysses=args.ulysses, ring=args.ring, tensor=args.tensor,
                   distrifusion=args.distrifusion)
    spec = cost_spec_from_args(args)
    scale = calibration_from_args(args, wl, gpu, spec)
    cost = spec.build(wl, gpu, scale)
    stage_blocks = parse_int_list(args.stage_blocks, "--stage-blocks")
    if args.patches == "auto":
        cfg = ParallelConfig(args.gpus, degree, 1, args.warmup, stage_blocks, **degrees)
        validate(wl, cfg)
        with progress.stage(f"simulating {cfg.label()} at every patch count M in 1..4N"):
            return best_patches(wl, cfg, gpu, topo, cost, scale)
    try:
        patches = int(args.patches)
    except ValueError:
        raise UserError(f"--patches must be a whole number or 'auto', "
                        f"got '{args.patches}'") from None
    check_patches_need_pipefusion(patches, args.gpus, "GPUs")
    cfg = ParallelConfig(args.gpus, degree, patches, args.warmup, stage_blocks, **degrees)
    with progress.stage(f"simulating {cfg.label()}"):
        return evaluate(wl, cfg, gpu, topo, cost, scale)


def api_predict(*, model: str, gpus: int, gpu: str | None = None, link: str = "pcie",
                nodes: int = 1, inter_node: str | None = None, nccl: str | None = None,
                host_cpu: str | None = None, ring_overlap: str = "auto",
                resolution: int | str = 1024, steps: int | None = None, dtype: str = "bf16",
                text_encoder: bool = True, vae: bool = True,
                single_gpu_latency: float | None = None,
                profile: str | None = None, link_profile: str | None = None,
                pipefusion: int | None = None, ulysses: int = 1, ring: int = 1, tensor: int = 1,
                cfg: int = 1, distrifusion: int = 1, patches: int | str = "auto",
                warmup: int = 1, stage_blocks: list[int] | None = None) -> Prediction:
    """Predict one configuration: ``sim.predict``'s flags as keyword arguments, with its
    defaults and checks (a ``UserError`` carries the message the command prints after
    ``error:``). Latencies in seconds; ``resolution`` is N, ``"WIDTHxHEIGHT"`` or (width,
    height) in pixels; ``stage_blocks`` a list of block counts.

    >>> import sim
    >>> p = sim.predict(model="pixart", gpus=4, pipefusion=4, patches=4, steps=8)
    >>> p.config.label(), p.latency_s > 0, len(p.memory)
    ('pipefusion4(M=4,W=1)', True, 4)
    >>> frame = p.trace.to_frame()  # needs pandas
    >>> sorted(set(frame["rank"])) == [0, 1, 2, 3], len(frame) == len(p.trace)
    (True, True)
    """
    args = build_parser().parse_args(argv_from_kwargs(dict(locals())))
    pred = predict(args, QUIET)
    check_finite(pred.as_dict(), "the prediction")
    return pred


def summary(pred: Prediction) -> str:
    """A human-readable report of one prediction."""
    d = pred.as_dict()
    c = d["config"]
    h, w = c["resolution"]
    nodes = f", {c['nodes']} nodes" if c["nodes"] > 1 else ""
    lines = [
        f"{c['model']} at {w}x{h}, {c['steps']} steps, {c['dtype']} on {c['gpus']} x "
        f"{c['gpu']} ({c['link']}{nodes})",
        f"strategy: {c['strategy']} ({c['label']})",
        f"latency: {d['latency_s']:.3f} s  (text encode {d['text_encode_s']:.3f} s, "
        f"denoising loop {d['loop_s']:.3f} s, VAE decode {d['vae_decode_s']:.3f} s)",
        f"bubble fraction: {d['bubble_fraction']:.1%}   exposed communication: "
        f"{d['exposed_comm_s']:.4f} s   busy: "
        + " ".join(f"{b:.0%}" for b in d["busy_fraction"]),
        f"communication per steady step (busiest rank): {d['comm_bytes_per_step'] / 1e6:.2f} MB",
        f"memory (fullest rank): {d['memory_gb']:.2f} GB of {d['gpu_memory_gb']:.0f} GB"
        + ("  ** OUT OF MEMORY **" if d["oom"] else ""),
    ]
    if pred.calibration_scale != 1.0:
        lines.append(f"compute costs scaled by {pred.calibration_scale:.3f} to match the "
                     f"measured single-GPU latency")
    if d["cost_model"]["kind"] == "roofline":
        lines.append("cost source: analytic roofline (--profile FILE uses measured profiles)")
    else:
        src = ", ".join(f"{k} " + "/".join(f"{n} {s}" for s, n in v.items())
                        for k, v in d["cost_source"].items())
        lines.append(f"cost source: profile {d['cost_model'].get('profile')} ({src})")
        for note in d["cost_model"].get("notes", []):
            lines.append(f"  note: {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Refused before the simulation, not after it (large ones take seconds).
    check_outputs([("--trace", args.trace), ("--chrome-trace", args.chrome_trace)])
    limit = checked_time_limit(args.time_limit)
    with time_limit(limit, "the simulation", "fewer patches, GPUs or steps, or a smaller "
                    "image, simulate faster"):
        pred = predict(args)
    result = pred.as_dict()
    check_finite(result, "the prediction")  # before any file or line is written
    write_outputs([("--trace", args.trace, pred.trace.write_csv),
                   ("--chrome-trace", args.chrome_trace, pred.trace.write_chrome)])
    if args.json:
        print_json(result)
    else:
        print(summary(pred))
    return 0


callable_module(__name__, api_predict)

if __name__ == "__main__":
    run_main(main)
