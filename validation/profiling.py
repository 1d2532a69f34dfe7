"""The profiles a validation predicts from, measured on this machine right before the runs: a
compute profile per model and process count, and a link profile timed while every rank
computes."""

from __future__ import annotations

import tempfile
from pathlib import Path

from profiles import collect
from profiles.device import device_name, device_slug
from profiles.pooled_links import pool_links
from sim.cost.profile_format import LinkProfile
from sim.errors import UserError
from validation.grid import Case
from validation.launch import say, torchrun

# Fresh processes each compute profile is pooled over (profiles.pooled): a CPU process keeps
# the speed its memory placement gave it, as each launch of a run does, and the runs are
# compared by their median launch.
PROCESSES = 3
# Launches the link profile is pooled over (profiles.pooled_links), each timing a third of the
# calls one launch timed before: which of a gloo call's two speeds a launch mostly sees is a
# state of that launch, so one launch's profile moved a tiny row's prediction by up to 48
# points from one collection to the next (profiles/pooled_links.py).
LINK_LAUNCHES = 3
# Seconds of timed calls per size, over the launches together (each takes its share).
LINK_MIN_TIME_S = 0.2
# Rounds of the host-time loop per size in each launch: 12 over the three, against the 10 one
# launch timed (the loop takes about 30 s per launch at 10 rounds on the 2-core EPYC VM).
LINK_HOST_ROUNDS = 4


def ensure_profiles(cases: list[Case], device: str, profile_dir: Path, fresh: bool,
                    progress: bool, co_run_clock: str = "wall", link_order: str = "shuffled"
                    ) -> tuple[dict[tuple[str, int], Path], Path | None]:
    """The compute profile of each model for runs of each process count (a run of N
    processes is profiled with N-1 processes computing beside it: on one host they share
    caches and memory bandwidth) and the link profile of the largest count, collected into
    ``profile_dir`` first when missing (or always, with ``fresh``). Compute profiles cover the
    grid's resolutions and patch counts and the ops the executor runs: a machine's speed drifts
    by several percent within an hour (other tenants of a VM, clocks), so validation measures
    what it needs right before the runs instead of trusting a profile from earlier. Each is
    the median of ``PROCESSES`` collections in fresh processes (``profiles.pooled``).

    Clocks on CPU: a one-process run leaves the other cores free, so whatever else wants a
    core (the launcher, the kernel, another tenant of the VM) takes a free one, and the
    profile times its op on the compute thread's CPU clock, immune to that. A run of N
    processes on N cores leaves none free: each such thread takes a core from a rank's compute
    thread, and the run's trace charges the op its wall time. The profile with N-1 processes
    beside it keeps every core busy in the same way, so it times on the wall clock
    (``co_run_clock="wall"``, which then holds the same waits; ``"cpu"``: the thread clock, as
    before issue 11). ``link_order`` is the link profile's ``profiles.links --order``."""
    name = device_name(device)
    dev = device_slug(device, name, 1)
    dtype = "fp32"
    models = sorted({c.model for c in cases})
    nprocs = sorted({c.nproc for c in cases})
    profile_dir.mkdir(parents=True, exist_ok=True)
    compute = {}
    for model in models:
        # Each model's own shapes: a grid part may run a larger model at fewer resolutions.
        mine = [c for c in cases if c.model == model]
        resolutions = ",".join(str(r) for r in sorted({c.resolution for c in mine}))
        patches = ",".join(str(m) for m in sorted({c.patches for c in mine} | {1}))
        for n in sorted({c.nproc for c in mine}):
            # Tensor-parallel runs execute sharded blocks: those shards are timed as such.
            tensor = n > 1 and any(c.nproc == n and c.strategy == "tensor" for c in mine)
            co = n - 1 if device == "cpu" else 0  # GPUs share no caches between ranks
            path = profile_dir / f"{dev}_{model}_{dtype}{f'_co{co}' if co else ''}.csv"
            if fresh or not path.exists():
                say(f"profiling {model} on this {device}"
                    f"{f' with {co} process(es) computing beside it' if co else ''} "
                    f"-> {path}", progress)
                clock = co_run_clock if co and device == "cpu" else "auto"
                argv = ["--model", model, "--device", device, "--dtype", dtype, "--threads",
                        "1", "--co-run", str(co), "--clock", clock, "--resolutions",
                        resolutions, "--patches",
                        patches, "--ops", "block,embed,final,scheduler_step,condition",
                        "--no-curve", "--processes", str(PROCESSES), "--out", str(path)] + \
                    (["--tensor-shards", str(n)] if tensor else []) + \
                    ([] if progress else ["--no-progress"])
                if collect.main(argv) != 0:
                    raise UserError(f"profile collection for {model} failed")
            compute[(model, n)] = path
    nproc = max(nprocs)
    link = None
    if nproc > 1:
        # Messages are timed while every rank computes, as in a run (--busy).
        kind = "loopback" if device == "cpu" else "nvlink4"
        backend = "gloo" if device == "cpu" else "nccl"
        link = profile_dir / f"links_{backend}_{kind}_w{nproc}_busy_{dev}.csv"
        if fresh or not link.exists():
            say(f"timing messages between {nproc} processes in {LINK_LAUNCHES} launches "
                f"-> {link}", progress)
            # Not --quick: with 3 samples per size its busy rows moved from one collection
            # to the next by enough to move a family's median error by up to 50 points (the
            # same measured quick grid re-predicted from 2 quick collections, 2026-11-30).
            argv = ["-m", "profiles.links", "--backend", backend, "--busy", "--factor", "4",
                    "--max-bytes", "16MiB", "--repeats", "15", "--passes", "3", "--min-time",
                    f"{LINK_MIN_TIME_S / LINK_LAUNCHES:.4g}", "--warmup", "1", "--order",
                    link_order, "--host-rounds", str(LINK_HOST_ROUNDS)] + \
                ([] if device == "cpu" else ["--link-kind", kind])
            with tempfile.TemporaryDirectory(prefix="ditsim-links-") as tmp:
                parts = []
                for i in range(LINK_LAUNCHES):
                    part = Path(tmp) / f"launch{i}.csv"
                    torchrun(nproc, [*argv, "--no-progress", "--out", str(part)])
                    parts.append(LinkProfile.read(part))
                prof = pool_links(parts)
            prof.meta["command"] = (f"{LINK_LAUNCHES} launches of torchrun ... -m profiles.links "
                                    + " ".join(argv[2:]) + ", pooled by profiles.pooled_links")
            prof.write(link)
    return compute, link
