"""GPU check (issue 16): what is worth measuring in the few minutes a lent GPU allows.

    bash benchmarks/gpu_check.sh [--dry-run] [--budget-s S]   # installs carried wheels first
    python3 benchmarks/gpu_check.py [--dry-run] [--out DIR] [--budget-s S]

Five stages, in order. Each prints one progress line and writes its results under ``--out``
as soon as it ends, so a run cut short keeps what it finished; a stage that fails is
reported and the next one still runs; a stage is skipped, with a line saying so, when the
time left of the budget is below what it needs.

1. env: nvidia-smi, torch / CUDA versions, the GPU's name and free memory -> ``env.json``.
2. profiles: ``python -m profiles.collect`` on CUDA, bf16, full-size pixart-alpha at 1024 and
   2048 px with PipeFusion's patch counts M = 1..8 -> ``profiles/<device>_<model>_bf16.csv``
   (the name ``profiles/data/`` uses). sd3-medium and flux-dev too (the profiler builds
   MM-DiT blocks since issue 12), each skipped with a line when the stage's budget is spent.
3. executor: the executor's loop on one GPU (the serial schedule ``executor.run`` runs on one
   process) against the diffusers pipeline's loop on the same weights, prompt embeddings
   and seed, pixart-alpha 1024 px, 20 steps, bf16: one warm-up run of each, then alternating
   timed runs (the functions of ``benchmarks/bench_executor_overhead.py``), medians, the
   overhead and the largest difference of the final latents -> ``executor.json``.
4. predict: ``sim.predict`` for the same configuration from the roofline and from the fresh
   profile, beside the measured loop -> ``predict.json``.
5. xfuser: the peer, where ``import xfuser`` works (the GPU machine has no package index, so
   it is skipped there unless its wheels were carried).

Then ``summary.json`` (rewritten after every stage) and a table. Everything printed also goes
to ``log.txt``, with the output of the child processes. Stages 2 and 3 run as child processes
with the time left of their budget as a hard limit.

``--dry-run``: every stage on CPU, fp32, with the tiny test configuration (pixart-tiny, 256
px, M = 1, 2, ``--quick`` profile, 4 steps), writing the same files; tested in
``tests/test_gpu_check.py``.

Exit status: 0 when every stage ran or was skipped for a stated reason, 1 when any failed,
2 on bad input (one ``error:`` line).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere, as a script or with -m

from sim.cli import parser, run_main  # noqa: E402 - needs the path above
from sim.errors import UserError  # noqa: E402

SEED = 0
STAGE_NAMES = ("env", "profiles", "executor", "predict", "xfuser")


@dataclass(frozen=True)
class Mode:
    """What one mode of the check measures; times in seconds, sizes in pixels."""

    name: str  # "gpu" or "dry-run"
    device: str  # torch device type: "cuda" or "cpu"
    dtype: str  # "bf16" or "fp32"
    # (model as named on the GPU, model profiled in this mode): the dry run profiles a tiny
    # stand-in, where the registry has one, for a model the profiler accepts.
    profile_models: tuple[tuple[str, str], ...]
    resolutions: tuple[int, ...]  # profiled resolutions
    patches: tuple[int, ...]  # profiled PipeFusion patch counts M
    quick: bool  # profiles.collect --quick
    exec_model: str
    exec_resolution: int
    steps: int
    repeats: int  # timed runs of each loop after one warm-up run of each
    threads: int | None  # torch threads in the executor stage (None: torch's default)
    predict_gpu: str  # sim.hardware registry name
    budget_s: float  # default of --budget-s: the whole check, install excluded
    stage_budget_s: dict[str, float]  # at most this long per stage
    stage_min_s: dict[str, float]  # a stage starts only with this much of the budget left
    latent_rtol: float  # largest latent difference, relative to the largest latent, that passes


GPU = Mode(
    name="gpu", device="cuda", dtype="bf16",
    profile_models=(("pixart-alpha", "pixart-alpha"), ("sd3-medium", "sd3-medium"),
                    ("flux-dev", "flux-dev")),
    resolutions=(1024, 2048), patches=tuple(range(1, 9)), quick=False,
    exec_model="pixart-alpha", exec_resolution=1024, steps=20, repeats=5, threads=None,
    predict_gpu="h200",
    # 450 s leave the rest of the session's 15 device minutes to the machine's start and the
    # install. The profile of pixart-alpha (124 shapes, 3 interleaved passes) is expected to
    # take 1-2 minutes and loses everything if stopped (the profiler writes at the end), so it
    # gets the most slack; the executor stage is expected to take about one (building 0.6 B
    # random weights on the CPU, then 12 loops of about a second).
    budget_s=450.0,
    stage_budget_s={"env": 45.0, "profiles": 240.0, "executor": 120.0, "predict": 30.0,
                    "xfuser": 15.0},
    stage_min_s={"env": 5.0, "profiles": 60.0, "executor": 45.0, "predict": 5.0,
                 "xfuser": 1.0},
    # bf16 kernels are deterministic for equal shapes, and the two loops call the same
    # modules on the same shapes, so equality is expected; a wrong executor misses by O(1).
    latent_rtol=1e-3,
)

DRY_RUN = Mode(
    name="dry-run", device="cpu", dtype="fp32",
    profile_models=(("pixart-alpha", "pixart-tiny"), ("sd3-medium", "sd3-tiny"),
                    ("flux-dev", "flux-tiny")),
    resolutions=(256,), patches=(1, 2), quick=True,
    exec_model="pixart-tiny", exec_resolution=256, steps=4, repeats=2,
    threads=1,  # as the profile (one thread), so the profile's prediction is comparable
    predict_gpu="cpu", budget_s=120.0,
    stage_budget_s={"env": 20.0, "profiles": 45.0, "executor": 45.0, "predict": 10.0,
                    "xfuser": 5.0},
    stage_min_s={"env": 1.0, "profiles": 5.0, "executor": 5.0, "predict": 1.0,
                 "xfuser": 0.5},
    latent_rtol=1e-6,  # one process, fp32, same ops: the README reports a difference of 0
)


class StageError(Exception):
    """A stage's failure: a one-line reason and whatever the stage had measured."""

    def __init__(self, message: str, data: dict | None = None) -> None:
        super().__init__(message)
        self.data = data or {}


@dataclass
class Outcome:
    """What a stage returns: ``ok`` or ``skipped`` (with the reason as ``message``), a
    one-line result, its data (also in ``summary.json``) and extra lines to print."""

    status: str = "ok"
    message: str = ""
    data: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class StageResult:
    """One stage as it ended; ``seconds`` of wall time."""

    name: str
    status: str  # "ok", "skipped" or "failed"
    seconds: float
    message: str
    data: dict = field(default_factory=dict)


@dataclass
class Stage:
    """A stage: ``fn(ctx, timeout_s)`` measures within ``timeout_s`` seconds."""

    name: str
    what: str  # what the progress line says it does
    fn: Callable[[Context, float], Outcome]


class Context:
    """The run's output folder, mode, clock, log and the results of the stages so far."""

    def __init__(self, out: Path, mode: Mode, budget_s: float, python: str = sys.executable,
                 echo: bool = True) -> None:
        self.out = out
        self.mode = mode
        self.budget_s = budget_s
        self.python = python
        self.echo = echo
        self.started = time.perf_counter()
        self.started_utc = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.results: dict[str, StageResult] = {}
        self.log_path = out / "log.txt"
        self._partial = ""  # the printed start of a line not yet ended

    def elapsed(self) -> float:
        """Seconds since the check started."""
        return time.perf_counter() - self.started

    def left(self) -> float:
        """Seconds of the budget left."""
        return self.budget_s - self.elapsed()

    def log(self, text: str) -> None:
        """Append ``text`` to ``log.txt`` only."""
        with open(self.log_path, "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def say(self, text: str, end: str = "\n") -> None:
        """Print ``text`` (flushed at once: the output may be all that comes back) and log
        it; a line printed in parts reaches the log when its end is printed."""
        if self.echo:
            print(text, end=end, flush=True)
        self._partial += text
        if end == "\n":
            self.log(self._partial)
            self._partial = ""

    def run_child(self, argv: list[str], timeout_s: float, label: str) -> str:
        """Run ``argv`` (a Python module or script of this repository) with at most
        ``timeout_s`` seconds; returns its output (also logged). Raises ``StageError`` when it
        times out (the child is killed) or exits non-zero, with its last output line."""
        cmd = [self.python, "-u", *argv]
        self.log(f"--- {label}: {' '.join(cmd)} (limit {timeout_s:.0f} s)")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                 timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired as e:
            self.log(_text(e.stdout) + _text(e.stderr))
            raise StageError(f"{label}: stopped after {timeout_s:.0f} s, the time left of "
                             f"its budget") from None
        out = res.stdout + res.stderr
        self.log(out)
        if res.returncode != 0:
            lines = [ln for ln in out.splitlines() if ln.strip()]
            raise StageError(f"{label} exited with status {res.returncode}: "
                             f"{lines[-1] if lines else '(no output)'}")
        return out


def _text(b: bytes | str | None) -> str:
    if b is None:
        return ""
    return b.decode(errors="replace") if isinstance(b, bytes) else b


def write_json(path: Path, obj: object) -> None:
    """Write ``obj`` as JSON through a temporary file, so a run killed while writing leaves
    the previous file or none, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


def rel(a: float | None, b: float | None) -> float | None:
    """``a / b - 1`` (None when either is missing or ``b`` is not positive)."""
    if a is None or b is None or not b > 0:
        return None
    return a / b - 1.0


# ---- stage 1: environment ------------------------------------------------------------------
def stage_env(ctx: Context, timeout_s: float) -> Outcome:
    """Versions, the GPU and its free memory (``env.json``)."""
    info: dict = {"mode": ctx.mode.name, "date_utc": ctx.started_utc,
                  "python": platform.python_version(), "platform": platform.platform(),
                  "cpu_count": os.cpu_count(), "git_commit": _git_commit()}
    smi = shutil.which("nvidia-smi")
    info["nvidia_smi"] = None
    if smi:
        q = ("name,driver_version,memory.total,memory.used,memory.free,clocks.sm,"
             "clocks.max.sm,clocks.mem,power.limit,temperature.gpu")
        try:
            info["nvidia_smi"] = {
                "query": q,
                "csv": subprocess.run([smi, f"--query-gpu={q}", "--format=csv,noheader"],
                                      capture_output=True, text=True,
                                      timeout=min(20.0, timeout_s)).stdout.strip(),
                "full": subprocess.run([smi], capture_output=True, text=True,
                                       timeout=min(20.0, timeout_s)).stdout}
        except (OSError, subprocess.TimeoutExpired) as e:
            info["nvidia_smi"] = {"error": f"{type(e).__name__}: {e}"}
    for pkg in ("diffusers", "transformers", "simpy", "networkx", "numpy"):
        try:
            from importlib.metadata import version

            info[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a missing package is a fact to record
            info[pkg] = None
    import torch

    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
                else None, cuda_available=torch.cuda.is_available(),
                torch_threads=torch.get_num_threads())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info(0)
        info.update(gpu_name=props.name, gpu_count=torch.cuda.device_count(),
                    capability=f"{props.major}.{props.minor}",
                    multiprocessors=props.multi_processor_count,
                    memory_total_bytes=total, memory_free_bytes=free)
    write_json(ctx.out / "env.json", info)
    if ctx.mode.device == "cuda" and not info["cuda_available"]:
        raise StageError("torch sees no CUDA device (nvidia-smi: "
                         f"{'found' if smi else 'not found'})", info)
    if info["cuda_available"]:
        where = (f"{info['gpu_name']}, {info['memory_free_bytes'] / 2**30:.1f} GiB of "
                 f"{info['memory_total_bytes'] / 2**30:.1f} GiB free")
    else:
        where = f"no CUDA device; {info['cpu_count']} CPU cores"
    return Outcome(message=f"{where}; torch {info['torch']} (CUDA {info['torch_cuda']}), "
                           f"diffusers {info['diffusers']}", data=info)


def _git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None  # the GPU machine's copy of the tree may have no git or no .git
    return res.stdout.strip() or None


def _needs_device(ctx: Context) -> str | None:
    """Why a stage that needs the mode's device cannot run (None if it can)."""
    env = ctx.results.get("env")
    if ctx.mode.device == "cuda" and (env is None or not env.data.get("cuda_available")):
        return "no CUDA device (see stage 1)"
    return None


# ---- stage 2: profiles -----------------------------------------------------------------------
def profile_argv(mode: Mode, model: str) -> list[str]:
    """``profiles.collect`` flags of ``model`` in ``mode`` (``--out`` and progress aside)."""
    argv = ["--model", model, "--device", mode.device, "--dtype", mode.dtype,
            "--resolutions", ",".join(map(str, mode.resolutions)),
            "--patches", ",".join(map(str, mode.patches))]
    return argv + (["--quick"] if mode.quick else [])


def stage_profiles(ctx: Context, timeout_s: float) -> Outcome:
    """Fresh compute profiles of the mode's models (``profiles/*.csv``)."""
    why = _needs_device(ctx)
    if why:
        return Outcome("skipped", why)
    from profiles.collect import default_out, parse
    from profiles.device import device_name
    from profiles.settings import check_supported
    from sim.cost.profile_format import ComputeProfile
    from sim.models import get_model

    mode = ctx.mode
    end = time.perf_counter() + timeout_s
    written: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    errors: list[str] = []
    name = device_name(mode.device)
    for gpu_model, model in mode.profile_models:
        try:  # the profiler's own check: a model it does not build yet is skipped, not failed
            check_supported(get_model(gpu_model))
        except UserError as e:
            skipped[gpu_model] = str(e)
            continue
        try:
            get_model(model)
        except UserError:
            skipped[gpu_model] = f"no tiny configuration '{model}' in sim.models for the dry run"
            continue
        left = end - time.perf_counter()
        if left < mode.stage_min_s["profiles"] / 2:
            skipped[gpu_model] = f"{max(0.0, left):.0f} s of the stage's budget left"
            continue
        argv = profile_argv(mode, model)
        try:
            settings, _, _ = parse(argv)  # bad flags fail here, before a child starts
            out = ctx.out / "profiles" / default_out(settings, name).name
            ctx.run_child(["-m", "profiles.collect", *argv, "--out", str(out),
                           "--no-progress"], left, f"profiles.collect {model}")
            prof = ComputeProfile.read(out)
        except (StageError, UserError) as e:
            errors.append(f"{model}: {e}")
            continue
        written[gpu_model] = {"model": model, "path": str(out.relative_to(ctx.out)),
                              "shapes": len(prof.samples),
                              "block_shapes": len(prof.select("block")),
                              "collect_s": prof.meta.get("collect_s"),
                              "device_name": prof.meta.get("device_name")}
    data = {"profiles": written, "skipped": skipped, "errors": errors}
    notes = [f"{m}: skipped: {why}" for m, why in skipped.items()]
    if errors:
        raise StageError("; ".join(errors), data)
    if not written:
        return Outcome("skipped", "no model could be profiled", data, notes)
    done = ", ".join(f"{w['model']}{'' if w['model'] == m else f' (for {m})'} "
                     f"{w['shapes']} shapes -> {w['path']}" for m, w in written.items())
    more = f"; skipped {', '.join(skipped)}" if skipped else ""
    return Outcome(message=done + more, data=data, notes=notes)


# ---- stage 3: executor against the pipeline --------------------------------------------------
def stage_executor(ctx: Context, timeout_s: float) -> Outcome:
    """The executor's and the pipeline's loop on one device (``executor.json``), measured in a
    child process (``--run-stage executor``) so that the budget can stop it."""
    why = _needs_device(ctx)
    if why:
        return Outcome("skipped", why)
    path = ctx.out / "executor.json"
    path.unlink(missing_ok=True)
    argv = [str(Path(__file__).resolve()), "--run-stage", "executor", "--out", str(ctx.out)]
    ctx.run_child(argv + (["--dry-run"] if ctx.mode.name == "dry-run" else []), timeout_s,
                  "executor measurement")
    d = json.loads(path.read_text())
    if not d["latents_finite"]:
        raise StageError("the executor's final latents are not finite", d)
    if not d["max_rel_latent_diff"] <= ctx.mode.latent_rtol:
        raise StageError(f"final latents differ from the pipeline's by "
                         f"{d['max_rel_latent_diff']:.2e} of the largest latent (at most "
                         f"{ctx.mode.latent_rtol:g} expected)", d)
    return Outcome(message=f"executor {d['executor_median_s']:.3f} s, pipeline "
                           f"{d['pipeline_median_s']:.3f} s ({d['overhead_pct']:+.1f} %), "
                           f"latents max |diff| {d['max_abs_latent_diff']:.1e}", data=d)


def measure_executor(mode: Mode, out: Path) -> int:
    """The executor stage's measurement (in its child process): writes ``executor.json``."""
    import torch
    from diffusers.utils import logging as dlogging

    from benchmarks.bench_executor_overhead import executor_loop
    from executor.diffusers_models import build_transformer
    from executor.inputs import random_prompts
    from executor.interpreter import PromptInputs
    from executor.reference import reference_pipeline, timed_pipeline_loop
    from executor.request import TORCH_DTYPES
    from sim.models import get_model

    dlogging.set_verbosity_error()
    if mode.threads:
        torch.set_num_threads(mode.threads)
    model = get_model(mode.exec_model)
    device = torch.device(mode.device)
    t0 = time.perf_counter()
    # As executor.runtime: built in fp32 on the CPU from the seed, then cast and moved, so the
    # weights are those every executor run of this model and seed uses.
    net = build_transformer(model, mode.exec_resolution, seed=SEED, dtype=torch.float32,
                            device="cpu").to(device=device, dtype=TORCH_DTYPES[mode.dtype])
    build_s = time.perf_counter() - t0
    # The pipeline moves prompt embeddings it is given to its device but not their masks:
    # both loops get the inputs on the device already (the executor moves them itself).
    prompts = PromptInputs(**{k: v.to(device)
                              for k, v in random_prompts(model, SEED).as_dict().items()})
    # Every component on the one device, the (unused) VAE too, as a deployed pipeline is.
    pipe = reference_pipeline(net).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    res = mode.exec_resolution
    args = (prompts, SEED, mode.steps, res, res, model.guidance_scale)

    def pipeline_run() -> tuple[torch.Tensor, float]:
        return timed_pipeline_loop(pipe, *args, sync=sync)

    def executor_run() -> tuple[torch.Tensor, float]:
        return executor_loop(net, model, *args, sync=sync, dtype=mode.dtype)

    # One untimed run of each: first calls allocate and pick kernels.
    pipeline_run()
    executor_run()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    pipe_s, exec_s = [], []
    for _ in range(mode.repeats):  # alternating: slow drifts touch both loops alike
        ref, t = pipeline_run()
        pipe_s.append(t)
        lat, t = executor_run()
        exec_s.append(t)
    ref, lat = ref.float().cpu(), lat.float().cpu()
    diff = float((lat - ref).abs().max())
    top = float(ref.abs().max())
    mp, me = statistics.median(pipe_s), statistics.median(exec_s)
    d = {
        "model": model.name, "resolution": res, "steps": mode.steps, "dtype": mode.dtype,
        "device": mode.device, "threads": torch.get_num_threads(), "seed": SEED,
        "guidance_scale": model.guidance_scale, "warmup_runs": 1, "repeats": mode.repeats,
        "schedule": "serial: what executor.run runs on one process",
        "build_s": build_s,
        "pipeline_loop_s": pipe_s, "executor_loop_s": exec_s,
        "pipeline_median_s": mp, "executor_median_s": me,
        "overhead_pct": 100.0 * (me / mp - 1.0),
        "overhead_min_pct": 100.0 * (min(exec_s) / min(pipe_s) - 1.0),
        "max_abs_latent_diff": diff,
        "max_rel_latent_diff": diff / top if top > 0 else math.inf,
        "latents_abs_max": top,
        "latents_finite": bool(torch.isfinite(lat).all()),
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda"
        else None,
    }
    write_json(out / "executor.json", d)
    return 0


# ---- stage 4: predictions ---------------------------------------------------------------------
def predict_argv(mode: Mode) -> list[str]:
    """``sim.predict`` flags of the executor stage's configuration."""
    return ["--model", mode.exec_model, "--gpu", mode.predict_gpu, "--gpus", "1",
            "--resolution", str(mode.exec_resolution), "--steps", str(mode.steps),
            "--dtype", mode.dtype, "--no-text-encoder", "--no-vae", "--json"]


def stage_predict(ctx: Context, timeout_s: float) -> Outcome:
    """The simulator's predictions beside the measurement (``predict.json``)."""
    from sim.hardware import get_gpu
    from sim.models import get_model
    from sim.predict import build_parser, predict

    mode = ctx.mode
    base = predict_argv(mode)

    def run(argv: list[str]) -> dict:
        d = predict(build_parser().parse_args(argv)).as_dict()
        if not (d["latency_s"] > 0 and math.isfinite(d["latency_s"])):
            raise StageError(f"sim.predict {' '.join(argv)}: latency {d['latency_s']}")
        return d

    ex = ctx.results.get("executor")
    measured = ex.data.get("executor_median_s") if ex and ex.status == "ok" else None
    pipeline = ex.data.get("pipeline_median_s") if ex and ex.status == "ok" else None
    gpu = get_gpu(mode.predict_gpu)
    roof = run(base)
    out: dict = {
        "command": "python -m sim.predict " + " ".join(base),
        "measured": {"executor_loop_s": measured, "pipeline_loop_s": pipeline,
                     "source": "executor.json (median)" if measured else
                     "none: stage 3 did not measure"},
        "roofline": {"loop_s": roof["loop_s"], "latency_s": roof["latency_s"],
                     "rel_err": rel(roof["loop_s"], measured), "prediction": roof},
        "registry": {"gpu": gpu.name, "efficiency": gpu.efficiency,
                     "peak_flops": gpu.peak_flops, "mem_bandwidth": gpu.mem_bandwidth},
    }
    if measured:
        # Where every op is compute-bound the roofline's time scales as 1/efficiency, so this
        # is the efficiency that would have matched; memory-bound ops and the launch floor
        # make it approximate. A pointer for checking sim/hardware.py, not a fit.
        out["implied_efficiency_if_compute_bound"] = \
            gpu.efficiency * roof["loop_s"] / measured
    prof_stage = ctx.results.get("profiles")
    gpu_model = next((g for g, m in mode.profile_models if m == mode.exec_model), None)
    written = (prof_stage.data.get("profiles", {}) if prof_stage else {}).get(gpu_model)
    if written:
        path = ctx.out / written["path"]
        d = run(base + ["--profile", str(path)])
        out["profile"] = {"file": written["path"], "loop_s": d["loop_s"],
                          "latency_s": d["latency_s"], "rel_err": rel(d["loop_s"], measured),
                          "cost_source": d["cost_source"], "prediction": d}
    else:
        out["profile"] = {"skipped": f"no fresh profile of {get_model(mode.exec_model).name} "
                                     "(stage 2)"}
    write_json(ctx.out / "predict.json", out)

    def show(kind: str) -> str:
        p = out[kind]
        if "loop_s" not in p:
            return f"{kind}: {p['skipped']}"
        err = f" ({100 * p['rel_err']:+.1f} %)" if p["rel_err"] is not None else ""
        return f"{kind} {p['loop_s']:.3f} s{err}"

    against = f"measured {measured:.3f} s" if measured else "no measurement to compare"
    return Outcome(message=f"{show('roofline')}, {show('profile')}; {against}", data=out)


# ---- stage 5: xfuser --------------------------------------------------------------------------
def stage_xfuser(ctx: Context, timeout_s: float) -> Outcome:
    """xfuser as a peer, where it is installed."""
    if importlib.util.find_spec("xfuser") is None:
        return Outcome("skipped", "xfuser not installed (no package index on the GPU machine)")
    # Its PixArt pipeline loads a full checkpoint (text encoder included) by name; the random
    # weights and embeddings of stages 3-4 need an adapter nobody has written or run yet.
    return Outcome("skipped", "xfuser is installed, but its peer run is not implemented yet")


STAGES = (
    Stage("env", "nvidia-smi, torch, GPU, free memory", stage_env),
    Stage("profiles", "profiles.collect", stage_profiles),
    Stage("executor", "executor loop against the diffusers pipeline", stage_executor),
    Stage("predict", "sim.predict (roofline, fresh profile) against the measurement",
          stage_predict),
    Stage("xfuser", "xfuser as a peer", stage_xfuser),
)


def describe(stage: Stage, mode: Mode) -> str:
    """What the progress line says the stage does in ``mode``."""
    if stage.name == "profiles":
        ms = f"M={mode.patches[0]}..{mode.patches[-1]}"
        tiny = "tiny stand-ins, " if any(g != m for g, m in mode.profile_models) else ""
        return (f"{', '.join(g for g, _ in mode.profile_models)} ({tiny}{mode.device} "
                f"{mode.dtype}, {','.join(map(str, mode.resolutions))} px, {ms}"
                f"{', quick' if mode.quick else ''})")
    if stage.name == "executor":
        return (f"{mode.exec_model} {mode.exec_resolution} px, {mode.steps} steps, "
                f"{mode.dtype}, 1 {mode.device}: {stage.what}")
    return stage.what


# ---- the run ------------------------------------------------------------------------------------
def run_stages(ctx: Context, stages: tuple[Stage, ...] = STAGES) -> list[StageResult]:
    """Run ``stages`` in order within the budget; each stage's result is printed, logged and
    saved in ``summary.json`` as soon as it ends."""
    n = len(stages)
    write_summary(ctx)  # from the start: a run killed in its first stage still says so
    for i, stage in enumerate(stages, 1):
        head = f"[stage {i}/{n}] {stage.name}: {describe(stage, ctx.mode)} ..."
        left = ctx.left()
        need = ctx.mode.stage_min_s.get(stage.name, 0.0)
        t0 = time.perf_counter()
        notes: list[str] = []
        if left < need:
            result = StageResult(stage.name, "skipped", 0.0,
                                 f"{max(0.0, left):.0f} s of the {ctx.budget_s:.0f} s budget "
                                 f"left; the stage needs at least {need:.0f} s")
            ctx.say(head, end="")
        else:
            ctx.say(head, end="")
            timeout = min(ctx.mode.stage_budget_s.get(stage.name, left), left)
            try:
                o = stage.fn(ctx, timeout)
                notes = o.notes
                result = StageResult(stage.name, o.status, time.perf_counter() - t0,
                                     o.message, o.data)
            except StageError as e:
                result = StageResult(stage.name, "failed", time.perf_counter() - t0, str(e),
                                     e.data)
            except Exception as e:  # noqa: BLE001 - one stage's bug must not stop the others
                ctx.log(traceback.format_exc())
                first = str(e).splitlines()[0] if str(e) else ""
                result = StageResult(stage.name, "failed", time.perf_counter() - t0,
                                     f"{type(e).__name__}: {first} (traceback in log.txt)")
        ctx.results[stage.name] = result
        ctx.say(f" {result.status}, {result.seconds:.0f} s: {result.message}")
        for note in notes:
            ctx.say(f"    {note}")
        write_summary(ctx)
    return list(ctx.results.values())


def exit_status(results: list[StageResult]) -> int:
    """0 when every stage ran or was skipped for a stated reason, else 1."""
    return 1 if any(r.status == "failed" or (r.status == "skipped" and not r.message)
                    for r in results) else 0


def write_summary(ctx: Context) -> None:
    """``summary.json``: every stage so far, the main numbers and the exit status."""
    results = list(ctx.results.values())
    numbers: dict = {}
    ex = ctx.results.get("executor")
    if ex and ex.status == "ok":
        numbers.update({k: ex.data.get(k) for k in ("executor_median_s", "pipeline_median_s",
                                                    "overhead_pct", "max_abs_latent_diff")})
    pr = ctx.results.get("predict")
    if pr and pr.status == "ok":
        numbers["roofline_loop_s"] = pr.data.get("roofline", {}).get("loop_s")
        numbers["profile_loop_s"] = pr.data.get("profile", {}).get("loop_s")
        numbers["implied_efficiency_if_compute_bound"] = \
            pr.data.get("implied_efficiency_if_compute_bound")
    write_json(ctx.out / "summary.json", {
        "mode": ctx.mode.name, "started_utc": ctx.started_utc, "budget_s": ctx.budget_s,
        "elapsed_s": round(ctx.elapsed(), 1),
        "stages": [{"name": r.name, "status": r.status, "seconds": round(r.seconds, 1),
                    "message": r.message} for r in results],
        "stages_not_reached": [n for n in STAGE_NAMES if n not in ctx.results],
        "numbers": numbers, "exit_status": exit_status(results)})


def table(results: list[StageResult]) -> str:
    """The closing table: one row per stage."""
    rows = [("stage", "status", "s", "result")] + [
        (r.name, r.status, f"{r.seconds:.0f}", r.message) for r in results]
    w = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{w[0]}}  {b:<{w[1]}}  {c:>{w[2]}}  {d}" for a, b, c, d in rows)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = parser("benchmarks/gpu_check.py", __doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out",
                   help="folder for the results (default: $OUT, else ./gpu_check_out)")
    p.add_argument("--dry-run", action="store_true",
                   help="every stage on CPU, fp32, with the tiny configuration")
    p.add_argument("--budget-s", type=float,
                   help=f"seconds for the whole check (default {GPU.budget_s:.0f}, dry run "
                        f"{DRY_RUN.budget_s:.0f}); a stage starts only with enough left")
    p.add_argument("--run-stage", choices=("executor",), help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns the exit status (bad input raises ``UserError``)."""
    a = build_parser().parse_args(argv)
    mode = DRY_RUN if a.dry_run else GPU
    budget = mode.budget_s if a.budget_s is None else a.budget_s
    if not (budget > 0 and math.isfinite(budget)):
        raise UserError(f"--budget-s must be a positive number of seconds, got {a.budget_s:g}")
    out = Path(a.out).resolve()  # the child processes run from the repository's root
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the folder ({e.strerror})") from None
    if a.run_stage == "executor":
        return measure_executor(mode, out)
    ctx = Context(out, mode, budget)
    ctx.say(f"GPU check (issue 16), {mode.name}: budget {budget:.0f} s, results in {out}")
    results = run_stages(ctx)
    ctx.say("\n" + table(results))
    code = exit_status(results)
    ctx.say(f"exit status {code}: " + ("every stage ran or was skipped for a stated reason"
                                       if code == 0 else "a stage failed (see above)"))
    return code


if __name__ == "__main__":
    run_main(main)
