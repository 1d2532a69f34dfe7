"""Measure the compute ops of the schedules on this device: ``python -m profiles.collect``.

Builds the model's real diffusers transformer from its config with seeded random weights (one
block is enough: every block of a PixArt model has the same shapes), then times, over a
log-spaced grid (``profiles/grid.py``), each op the schedules use:

- ``block``: one transformer block on ``q`` query tokens against ``kv`` key/value tokens, for
  every profiled resolution (``kv`` = its image tokens) and ``q`` = the first of ``M`` row bands
  (M = 1, 2, 4, ... 32: ``q = kv/M``). A patch (q < kv) writes its fresh K,V into a
  full-sequence buffer and attends over the whole buffer, as PipeFusion's displaced-patch
  stages do (same memory layout as ``executor/kv_attention.py``); a full image (q = kv) is the
  plain diffusers block. Full-image blocks are also timed at every patch size ``n``, so that
  full images between the profiled resolutions interpolate along a dense curve.
- ``attention``: the self-attention core alone (``scaled_dot_product_attention``) at the same
  shapes, and with ``heads/N`` heads over the full sequence (Ulysses head shards, N dividing
  the head count).
- ``embed`` (patch embedding of a band of rows, positional rows, timestep and caption
  embeddings), ``final`` (final norm, modulation, projection, unpatchify, guidance combine) and
  ``scheduler_step`` (one multistep DPM-Solver++ update of a latent band, batch 1).

The ops are the executor's own (``executor/op_runner.py``, ``--runner executor``) or the
diffusers modules alone (``--runner block``). Each shape: warm-up calls, then timed calls
spread over interleaved passes in a shuffled order (slow drifts of a shared machine then touch
every shape alike); the median is kept with its spread (``profiles/timing.py``). CPU: a fixed
thread count (default 1, torchrun's default, so the profile describes the machine the
executor's processes see) and, with one thread, the calling thread's CPU time as the clock
(immune to other processes sharing the cores; ``--clock wall`` for perf_counter). CUDA: events
around each call after a synchronisation.

CPU default grid: real PixArt at 1024 px takes seconds per block call on one core, so on CPU
the default resolutions are 256, 384 and 512 px (256, 576 and 1,024 tokens) at the model's real
width; the small test models (``pixart-tiny``, ``pixart-small``) profile fully in seconds. On
CUDA the default is 1024, 2048 and 4096 px.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

from profiles.device import device_slug
from profiles.pooled import collect_in_processes, strip_flags
from profiles.settings import (
    DTYPES,
    OPS,
    PATCHES,
    QUICK_PATCHES,
    Settings,
    check_supported,
    default_settings,
)
from sim.cli import at_least, parse_int_list, parser, run_main
from sim.errors import UserError
from sim.models import get_model
from sim.outputs import check_folder, check_writable, output_errors
from sim.progress import Progress


def _positive_ints(text: str, flag: str) -> tuple[int, ...]:
    vals = parse_int_list(text, flag) or ()
    if not vals or min(vals) <= 0:
        raise UserError(f"{flag} must be positive integers, got '{text}'")
    return vals


def parse(argv: list[str] | None) -> tuple[Settings, Path | None, bool]:
    """Parse the command line into settings, the output path and the progress flag (raises
    ``UserError`` for bad input)."""
    ap = parser("python -m profiles.collect", __doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="registry model (pixart, pixart-small, ...)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu or cuda")
    ap.add_argument("--dtype", choices=DTYPES, help="weights and activations; unset: fp32 on "
                    "cpu, bf16 on cuda")
    ap.add_argument("--resolutions", help="pixels, comma-separated; unset: 256,384,512 on "
                    "cpu, 1024,2048,4096 on cuda (--quick: the first and last)")
    ap.add_argument("--patches", help="PipeFusion patch counts M of the q = kv/M grid; unset: "
                    f"{','.join(map(str, PATCHES))} (--quick "
                    f"{','.join(map(str, QUICK_PATCHES))})")
    ap.add_argument("--out", help="output CSV; unset: <device>_<model>_<dtype>.csv in the "
                    "current folder (the shipped profiles live in profiles/data/)")
    ap.add_argument("--quick", action="store_true", help="reduced grid, few repeats")
    ap.add_argument("--threads", type=int, help="CPU threads per process; unset: 1, as "
                    "torchrun and the executor")
    ap.add_argument("--repeats", type=int, help="timed calls per shape; unset: 7 (--quick 3)")
    ap.add_argument("--warmup", type=int, help="untimed calls first; unset: 2 (--quick 1)")
    ap.add_argument("--clock", default="auto", choices=("auto", "cpu", "wall"),
                    help="cpu: the thread's CPU time (immune to other processes on the cores; "
                    "one thread only), wall: perf_counter; auto: cpu for --device cpu "
                    "--threads 1, else wall (CUDA: events)")
    ap.add_argument("--runner", default="executor", choices=("executor", "block"),
                    help="executor: time the reference executor's own ops (what executor.run "
                         "performs); block: the diffusers modules alone")
    ap.add_argument("--co-run", type=int, default=0,
                    help="processes computing beside the measured one while it is timed (use "
                         "N-1 to profile for runs of N processes on one host, which share "
                         "caches and memory bandwidth)")
    ap.add_argument("--ops", help=f"op kinds to time, comma-separated; unset: all "
                    f"({','.join(OPS)})")
    ap.add_argument("--no-curve", action="store_true",
                    help="skip the full-image blocks between the grid's token counts (only "
                         "the grid's resolutions will then be predicted from measurements)")
    ap.add_argument("--passes", type=int,
                    help="interleaved passes over all shapes, sharing the repeats; unset: 3 "
                         "(--quick 1)")
    ap.add_argument("--processes", type=int, default=1,
                    help="collect in this many fresh processes one after another, the "
                         "repeats shared among them, and keep per shape the median process "
                         "(CPU: a process's memory placement sets its speed for its whole "
                         "life: processes differed by 7-47 %% on the 2-core Xeon VM)")
    ap.add_argument("--tensor-shards", metavar="T[,T...]",
                    help="also time the block as one rank of T-way tensor parallelism sees "
                         "it (1/T of the heads and MLP columns, all-reduces left out) on the "
                         "block grid, for each T given (dividing the head count; PixArt, "
                         "--runner executor)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    at_least(a.co_run, 0, "--co-run")
    at_least(a.processes, 1, "--processes")
    model = get_model(a.model)
    check_supported(model)
    res = _positive_ints(a.resolutions, "--resolutions") if a.resolutions else None
    grid = model.vae_factor * model.patch_size
    for r in res or ():
        if r % grid:
            raise UserError(f"resolution {r} is not a multiple of {grid} px for {model.name}")
    for flag, value, least in (("--threads", a.threads, 1), ("--repeats", a.repeats, 1),
                               ("--warmup", a.warmup, 0), ("--passes", a.passes, 1)):
        if value is not None:
            at_least(value, least, flag)
    if a.threads is not None and a.device == "cuda":
        raise UserError("--threads applies to --device cpu only")
    s = default_settings(model, a.device, a.dtype, res, a.quick, a.threads, a.repeats,
                         a.warmup, {"cpu": "thread"}.get(a.clock, a.clock))
    if a.patches:
        s = replace(s, patches=_positive_ints(a.patches, "--patches"))
    ops = OPS
    if a.ops:
        ops = tuple(o.strip() for o in a.ops.split(",") if o.strip())
        bad = [o for o in ops if o not in OPS]
        if bad or not ops:
            raise UserError(f"--ops: unknown op kind(s) {', '.join(bad) or '(none given)'}; "
                            f"choose from {', '.join(OPS)}")
    shards = _positive_ints(a.tensor_shards, "--tensor-shards") if a.tensor_shards else ()
    if shards:
        bad = [t for t in shards if t < 2 or model.heads % t]
        if bad:
            raise UserError(f"--tensor-shards {','.join(map(str, bad))}: a tensor-parallel "
                            f"degree must be at least 2 and divide {model.name}'s "
                            f"{model.heads} heads")
        if model.diffusers_class != "PixArtTransformer2DModel" or a.runner != "executor":
            raise UserError("--tensor-shards times the executor's tensor-parallel PixArt "
                            "blocks: use a PixArt model with --runner executor")
        if "block" not in ops:
            raise UserError("--tensor-shards times blocks: add block to --ops")
    s = replace(s, runner=a.runner, co_run=a.co_run, ops=ops, curve=not a.no_curve,
                processes=a.processes, passes=a.passes or s.passes,
                tensor_shards=tuple(sorted(set(shards))))
    return s, Path(a.out) if a.out else None, not a.no_progress


def default_out(s: Settings, name: str) -> Path:
    """``<device>_<model>_<dtype>.csv`` in the current folder (not the package's shipped
    ``profiles/data/``): collections keyed by device and model."""
    co = f"_co{s.co_run}" if s.co_run else ""
    return Path.cwd() / (f"{device_slug(s.device, name, s.threads)}_{s.model.name}_{s.dtype}"
                       f"{co}.csv")


def main(argv: list[str] | None = None) -> int:
    """Collect and write the profile; returns 0 (bad input raises ``UserError``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    s, out, progress = parse(argv)
    # Checked before minutes of timing, not after; missing folders are created at the end.
    if out is not None:
        check_writable(out, "--out", make_folders=True)
    else:
        check_folder(Path.cwd(), "--out (default: the current folder)")
    stages = Progress(quiet=not progress)
    if s.processes > 1:
        child = strip_flags(argv, ("--out", "--processes", "--repeats", "--passes",
                                   "--no-progress"))
        stages.line(f"timing {s.model.name}'s ops on {s.device} in {s.processes} processes")
        prof = collect_in_processes(child, s.processes, math.ceil(s.repeats / s.processes),
                                    stages.line)
        prof.meta["command"] = "python -m profiles.collect " + " ".join(argv)
    else:
        # Imported once the flags are good: loading torch and diffusers takes seconds, which
        # --help and a mistyped flag should not wait for.
        with stages.stage("loading torch and diffusers"):
            from profiles.compute import collect
        stages.line(f"building {s.model.name} and timing its ops on {s.device}")
        prof = collect(s, progress)
    path = out or default_out(s, prof.meta["device_name"])
    with output_errors("--out", path):
        prof.write(path)  # atomically: a full disk leaves no truncated profile
    blocks = prof.select("block")
    where = (f"{prof.meta['threads']} thread(s), {s.clock} clock" if s.device == "cpu"
             else "CUDA events")
    pooled = (f"; median of {s.processes} processes, which differed by "
              f"{prof.meta['process_spread']:.1%} (median over block shapes)"
              if "process_spread" in prof.meta else "")
    print(f"wrote {path}: {len(prof.samples)} shapes ({len(blocks)} block shapes) in "
          f"{prof.meta['collect_s']} s on {prof.meta['device_name']} ({s.dtype}, {where})"
          f"{pooled}")
    return 0


if __name__ == "__main__":
    run_main(main)
