"""Run a parallel schedule for real: ``torchrun --nproc_per_node N -m executor.run [options]``
(or ``python -m executor.run`` for one process). This module is the command line; the request
is checked in ``executor.request``, run in ``executor.runtime`` and summarised in
``executor.summary``.

Every rank builds the same schedule with ``sim.strategies.build_schedule`` (so a configuration
the simulator rejects fails here with the same message, before any process group starts),
keeps its stage's share of the transformer, and interprets its ops (``executor.interpreter``).
Rank 0 gathers the per-rank traces, latencies and peak memory and writes the outputs.

Exit status: 0 on success, 2 on bad input (one line on stderr, no traceback; output paths are
checked before the process group starts, and a full disk when rank 0 writes the outputs is one
line too, leaving none of them), 1 when a run fails (a rank died, hung past ``--timeout`` or
raised), with a line naming the rank.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from executor.launch import abort_rank, env_int
from executor.request import TORCH_DTYPES, plan_run
from executor.runtime import execute
from executor.summary import memory_line
from sim.cli import at_least, parser, run_main
from sim.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``executor.run``."""
    p = parser(
        "executor.run",
        "Run a parallel schedule sim builds (PipeFusion, Ulysses, ring, tensor, CFG, "
        "DistriFusion and their hybrids) on torch.distributed with a diffusers PixArt, SD3 "
        "or Flux transformer, and record a measured trace. Launch with torchrun "
        "--nproc_per_node N -m executor.run ...; the degrees multiply to N.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="registry model built from its config with seeded random "
                     "weights (pixart-alpha, pixart-sigma, pixart-tiny, pixart-small; "
                     "sd3-medium, sd35-large, sd3-tiny, sd3-small; flux-dev, flux-tiny, "
                     "flux-small)")
    src.add_argument("--model-dir", help="local diffusers checkpoint: a save_pretrained folder "
                     "of PixArtTransformer2DModel, SD3Transformer2DModel or "
                     "FluxTransformer2DModel, or a pipeline folder with transformer/")
    p.add_argument("--resolution", default="1024",
                   help="image size in pixels: N for NxN, or WIDTHxHEIGHT")
    p.add_argument("--steps", type=int, help="diffusion steps (default: the model's)")
    p.add_argument("--patches", type=int, help="PipeFusion patches M (default: the "
                   "PipeFusion degree)")
    p.add_argument("--warmup", type=int, default=1,
                   help="synchronous full-image warmup steps W")
    p.add_argument("--pipefusion", type=int,
                   help="PipeFusion degree (pipeline stages); default: the processes the "
                   "other degrees leave, as sim.predict")
    p.add_argument("--ulysses", type=int, default=1,
                   help="Ulysses sequence-parallel degree (must divide the head count)")
    p.add_argument("--ring", type=int, default=1, help="ring-attention degree")
    p.add_argument("--tensor", type=int, default=1, help="tensor-parallel degree (Megatron)")
    p.add_argument("--cfg", type=int, default=1, choices=[1, 2],
                   help="2 runs the two guidance halves on two groups of processes")
    p.add_argument("--distrifusion", type=int, default=1,
                   help="DistriFusion degree (patch parallel; combines only with --cfg)")
    p.add_argument("--stage-blocks", help="blocks per stage, comma separated (default: "
                   "ceil(L/N) per stage)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random weights, the initial noise (as the pipeline's "
                   "generator) and, seed+1, the random prompt embeddings")
    p.add_argument("--guidance-scale", type=float,
                   help="classifier-free guidance scale (default: the model's pipeline "
                   "default: 4.5 PixArt, 7.0 SD3; Flux's 3.5 is an input of the model, "
                   "with no guidance batch)")
    p.add_argument("--prompt-embeds", help="torch.save'd dict with prompt_embeds, "
                   "prompt_attention_mask, negative_prompt_embeds, "
                   "negative_prompt_attention_mask (PixArt) or prompt_embeds, "
                   "pooled_prompt_embeds, negative_prompt_embeds, "
                   "negative_pooled_prompt_embeds (SD3, Flux); default: seeded random "
                   "embeddings")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu (gloo) or cuda (NCCL)")
    p.add_argument("--dtype", choices=tuple(TORCH_DTYPES),
                   help="weights and activations (default fp32 on cpu, bf16 on cuda)")
    p.add_argument("--threads", type=int, help="torch threads per process (default: as "
                   "launched; torchrun sets 1)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds any rank waits for a peer before failing")
    p.add_argument("--save-latents", help="write the final latents (before the VAE) here "
                   "with torch.save")
    p.add_argument("--trace", help="write the measured trace as CSV (sim.trace columns)")
    p.add_argument("--chrome-trace", help="write the measured trace as Chrome/Perfetto JSON "
                   "(pid = rank, tid = compute / comm)")
    p.add_argument("--warmup-runs", type=int, default=0,
                   help="untimed whole runs before the measured one: the first "
                   "run of a process pays one-off costs (allocator growth, first-call kernel "
                   "selection, cold caches) that a serving process pays once")
    p.add_argument("--runs", type=int, default=1,
                   help="measured runs after the warm-up runs: the latency is "
                   "their median, the trace that of the last, the peak memory over all")
    p.add_argument("--pace-probe", type=int, default=0, metavar="CALLS",
                   help="time CALLS calls of the compute profile's whole-image block (every "
                   "rank at once) before the warm-up runs and again after the measured runs, "
                   "and report them as pace_probe: how fast these processes computed, for a "
                   "prediction to compare against its profile's row (default 0: no probe)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (rank 0)")
    p.add_argument("--check", type=int, metavar="NPROC",
                   help="only check the flags for a launch of NPROC processes, starting "
                   "nothing: exit 0 with one line, or 2 with the error (under torchrun, bad "
                   "input makes torchrun itself exit 1 after its own report)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the request ``argv`` (default: the command line) as this process's rank of the launch
    (torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; one process without them). Returns 0,
    or 2 on bad input (one ``error:`` line from rank 0); a failed run exits the process with
    status 1 and a line naming the rank."""
    rank = 0
    try:
        rank = env_int("RANK", 0)
        world = env_int("WORLD_SIZE", 1)
        local_rank = env_int("LOCAL_RANK", 0)
        args = build_parser().parse_args(argv)
        if args.check is not None:
            at_least(args.check, 1, "--check")
            world = args.check
        plan = plan_run(args, world)
    except UserError as e:
        if rank == 0:  # every rank checks; one line per launch
            print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check is not None:
        s = "es" if world != 1 else ""
        if rank == 0:
            print(f"ok: {plan.config.label()} on {world} process{s}; start it with torchrun "
                  f"--nproc_per_node {world} -m executor.run and the same flags (without "
                  f"--check)")
        return 0
    try:
        summary = execute(plan, args, rank, world, local_rank)
    except UserError as e:  # inputs only checkable after loading (prompt embeddings)
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(2)
    except BaseException as e:  # noqa: BLE001 - one line naming the rank, then a hard exit
        abort_rank(rank, e)
    if summary is not None:
        if args.json:
            print(json.dumps(summary))
        else:
            c = summary["config"]
            print(f"{c['model']} {c['resolution'][0]}x{c['resolution'][1]} {c['steps']} steps, "
                  f"{c['world_size']} rank(s), {c['label']}: loop "
                  f"{summary['latency_s']:.3f} s")
            print(memory_line(summary))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    run_main(main)
