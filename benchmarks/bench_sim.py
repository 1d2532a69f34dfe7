"""Speed of the simulator, every row of issue 14's table, beside the previous release.

Each row runs in its own process for both revisions: the code now (this checkout) and the
previous release (``--baseline``, default ``b6488ac``, the commit before issue 14), extracted
with ``git archive`` into a temporary folder, so both are measured in the same run on the
same machine. Whole commands are timed wall-clock (median of ``--repeats``); in-process
predictions (``sim.predict``'s own ``predict(args)``: flags, topology, costs, simulation) as
the median of ``--repeats`` calls after one warm-up call, in one process.

Run: ``python benchmarks/bench_sim.py [--repeats 3] [--quick] [--baseline REV]``;
``--quick`` leaves out the 64-GPU plan (over two minutes with the previous release).
Targets are those of issue 14; none is asserted anywhere.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, command-line arguments after python -m, target seconds)
COMMANDS = [
    ("sim.plan pixart 8 GPUs pcie", ["sim.plan", "--model", "pixart", "--gpus", "8", "--link",
                                     "pcie"], 1.0),
    ("the same with --json", ["sim.plan", "--model", "pixart", "--gpus", "8", "--link", "pcie",
                              "--json"], 1.0),
    ("sim.plan flux 16 GPUs 2 nodes nvlink h100-sxm",
     ["sim.plan", "--model", "flux", "--gpus", "16", "--nodes", "2", "--link", "nvlink",
      "--gpu", "h100-sxm"], 2.0),
    ("sim.plan flux 64 GPUs 8 nodes nvlink h100-sxm ib-ndr",
     ["sim.plan", "--model", "flux", "--gpus", "64", "--nodes", "8", "--link", "nvlink",
      "--gpu", "h100-sxm", "--inter-node", "ib-ndr"], 10.0),
]
# (name, sim.predict flags, target seconds): timed in-process.
PREDICTIONS = [
    ("predict pixart 8 GPUs PipeFusion M=16", ["--model", "pixart", "--gpus", "8", "--link",
                                               "pcie", "--pipefusion", "8", "--patches",
                                               "16"], 0.020),
    ("predict pixart Ulysses 8", ["--model", "pixart", "--gpus", "8", "--link", "pcie",
                                  "--ulysses", "8", "--patches", "1"], 0.020),
    ("predict flux 16 GPUs 2 nodes ring2 x tensor2 x pipefusion4",
     ["--model", "flux", "--gpus", "16", "--nodes", "2", "--link", "nvlink", "--gpu",
      "h100-sxm", "--ring", "2", "--tensor", "2", "--pipefusion", "4", "--patches", "4"], 0.100),
]
IMPORT_TARGET = 0.15

_PREDICT_SNIPPET = """
import statistics, sys, time
from sim.predict import build_parser, predict
args = build_parser().parse_args(sys.argv[2:])
predict(args)  # warm-up: lazy imports, caches
times = []
for _ in range(int(sys.argv[1])):
    t0 = time.perf_counter()
    predict(build_parser().parse_args(sys.argv[2:]))
    times.append(time.perf_counter() - t0)
print(statistics.median(times))
"""


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root)}


def compile_bytecode(root: Path) -> None:
    """Compile the packages under ``root`` to bytecode first, as ``pip install`` leaves an
    installed package. Without it a shell that sets PYTHONDONTWRITEBYTECODE (this sandbox
    does) recompiles every imported module in every timed process: about 0.15-0.2 s of the
    import and of each plan command, which no installed user pays."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0",
                    *[str(root / pkg) for pkg in ("sim", "reports") if (root / pkg).is_dir()]],
                   check=True, stdout=subprocess.DEVNULL)


def time_command(root: Path, argv: list[str], repeats: int) -> tuple[float, str]:
    """Median wall seconds of ``python -m argv`` run with ``root`` first on the path, and
    the last run's summary line (what was searched and simulated)."""
    times, out = [], ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", *argv], cwd=root, env=_env(root),
                             capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - t0)
        out = res.stdout
    lines = [ln for ln in out.splitlines() if "configurations searched" in ln]
    if not lines and "--json" in argv:
        import json

        rows = json.loads(out)
        simulated = sum(1 for d in rows if d.get("simulated", True))
        lines = [f"{len(rows)} candidates listed, {simulated} simulated"]
    return statistics.median(times), lines[0] if lines else ""


def time_predict(root: Path, flags: list[str], repeats: int) -> float:
    """Median seconds of one in-process ``sim.predict`` (after a warm-up call)."""
    res = subprocess.run([sys.executable, "-c", _PREDICT_SNIPPET, str(repeats), *flags],
                         cwd=root, env=_env(root), capture_output=True, text=True, check=True)
    return float(res.stdout.strip())


def time_import(root: Path, repeats: int) -> float:
    """Median wall seconds of a process that only imports sim.predict."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import sim.predict"], cwd=root, env=_env(root),
                       check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def extract(rev: str, into: Path) -> Path:
    """The files of revision ``rev`` under ``into`` (git archive: no worktree is added)."""
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def has_time_limit(root: Path) -> bool:
    """Whether the checkout at ``root`` has ``sim.plan --time-limit`` (issue 18)."""
    return "--time-limit" in (root / "sim" / "plan.py").read_text()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="b6488ac", help="previous release (git revision)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="leave out the 64-GPU plan")
    p.add_argument("--no-bytecode", action="store_true",
                   help="time without compiling to bytecode first (every process then "
                        "recompiles what it imports where PYTHONDONTWRITEBYTECODE is set)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = extract(args.baseline, Path(tmp))
        roots = [("previous", base), ("now", ROOT)]
        if not args.no_bytecode:
            for _label, root in roots:
                compile_bytecode(root)
        rows = []
        for _name, argv, target in COMMANDS:
            if args.quick and "64" in argv:
                continue
            reps = 1 if "64" in argv else args.repeats
            # The whole search on both sides: no time limit (issue 18's default of 60 s would
            # stop the 64-GPU plan early), passed to whichever revision has the flag.
            got = {label: time_command(root, argv + (["--time-limit", "0"]
                                                     if has_time_limit(root) else []), reps)
                   for label, root in roots}
            rows.append((f"`python -m {' '.join(argv)}`", target, got["previous"][0],
                         got["now"][0], f"{got['previous'][1]} -> {got['now'][1]}"))
        for name, flags, target in PREDICTIONS:
            got = {label: time_predict(root, flags, max(5, args.repeats)) for label, root
                   in roots}
            rows.append((name + " (in-process)", target, got["previous"], got["now"], ""))
        got = {label: time_import(root, max(5, args.repeats)) for label, root in roots}
        rows.append(("`import sim.predict` (whole process)", IMPORT_TARGET, got["previous"],
                     got["now"], ""))
    print(f"| what | target | {args.baseline} | now | speed-up | |")
    print("|---|---|---|---|---|---|")
    for what, target, before, now, note in rows:
        print(f"| {what} | < {target:g} s | {before:.3f} s | {now:.3f} s | "
              f"{before / now:.1f}x | {note} |")


if __name__ == "__main__":
    main()
