"""A compute profile pooled over several processes (``profiles.collect --processes K``).

On a CPU, how fast one op runs depends on the process as well as on the shape: where its
tensors and weights landed in memory sets cache-set conflicts and page placement for the
process's whole life. On the 2-core Xeon VM six fresh processes timing the same pixart-small
block (1,024 tokens, quiet machine) gave medians from 0.120 to 0.155 s, while the fastest call
of each was 0.117-0.121 s, and the executor's launches of one configuration differ the same
way. A profile from one process carries that process's luck into every prediction; the
validation compares against the median launch, so the profile takes the median process.

Torch-free: the collections run in child processes (``python -m profiles.collect``), and this
module only merges what they wrote.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from sim.cost.profile_format import ComputeProfile, Sample
from sim.errors import UserError


def strip_flags(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """``argv`` without each of ``flags`` and its value (``--flag V`` or ``--flag=V``)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in flags:
            skip = True
            continue
        if any(a.startswith(f + "=") for f in flags):
            continue
        out.append(a)
    return out


def collect_in_processes(argv: list[str], processes: int, repeats: int,
                         say: Callable[[str], None]) -> ComputeProfile:
    """Run ``profiles.collect`` with ``argv`` (no ``--out``, ``--processes``, ``--repeats``
    or ``--passes``) in ``processes`` fresh child processes one after another, each timing
    ``repeats`` calls per shape in one pass, and pool them with ``pool``. A child that fails
    is a ``UserError`` carrying its last line."""
    with tempfile.TemporaryDirectory(prefix="ditsim-profile-") as tmp:
        parts = []
        for i in range(processes):
            say(f"process {i + 1} of {processes}")
            out = Path(tmp) / f"part{i}.csv"
            # One pass each: the processes, run one after another, already spread the calls
            # over time as interleaved passes do, and one pass pays the warm-up calls once
            # (three passes of a third of the repeats would pay them three times).
            cmd = [sys.executable, "-m", "profiles.collect", *argv, "--repeats", str(repeats),
                   "--passes", "1", "--no-progress", "--out", str(out)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                lines = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
                raise UserError(f"profile collection in process {i + 1} of {processes} "
                                f"failed: {lines[-1]}")
            parts.append(ComputeProfile.read(out))
    return pool(parts)


def pool(parts: list[ComputeProfile]) -> ComputeProfile:
    """One profile from the same collection run in several processes: per shape the median
    of the processes' medians (seconds), the smallest minimum and largest maximum, the median
    of their quartiles, the calls summed. The metadata is the first part's, with the
    processes' count, their summed collection time, the median reference-op time,
    ``process_spread``: over the block shapes, the median of (slowest - fastest process
    median) / pooled median, and ``process_factors``: each process's pace, the median over
    block shapes of its median over the pooled one, sorted (dimensionless)."""
    if not parts:
        raise ValueError("no profiles to pool")
    keys = [_key(s) for s in parts[0].samples]
    by_part = [{_key(s): s for s in p.samples} for p in parts]
    for i, p in enumerate(by_part[1:], 2):
        if set(p) != set(keys):
            raise UserError(f"process {i}'s profile measured other shapes than process 1's; "
                            f"the collections must run the same grid")
    samples = []
    spreads = []
    med: dict[tuple, float] = {}
    for k in keys:
        ss = [p[k] for p in by_part]
        med[k] = statistics.median(s.median_s for s in ss)
        samples.append(Sample(*k, sum(s.repeats for s in ss), med[k], min(s.min_s for s in ss),
                              statistics.median(s.p25_s for s in ss),
                              statistics.median(s.p75_s for s in ss),
                              max(s.max_s for s in ss)))
        if k[0] == "block":
            meds = [s.median_s for s in ss]
            spreads.append((max(meds) - min(meds)) / med[k])
    meta = dict(parts[0].meta)
    meta["processes"] = len(parts)
    meta["collect_s"] = round(sum(float(p.meta.get("collect_s", 0.0)) for p in parts), 2)
    refs = [p.meta["reference_op_s"] for p in parts
            if isinstance(p.meta.get("reference_op_s"), (int, float))]
    if refs:
        meta["reference_op_s"] = statistics.median(refs)
    if spreads:
        meta["process_spread"] = round(statistics.median(spreads), 4)
        # Each process's pace: the median over block shapes of its time over the pooled one.
        blocks = [k for k in keys if k[0] == "block"]
        meta["process_factors"] = sorted(
            round(statistics.median(p[k].median_s / med[k] for k in blocks), 4)
            for p in by_part)
    meta["repeats"] = sum(int(p.meta.get("repeats", 0)) for p in parts)
    return ComputeProfile(meta, samples)


def _key(s: Sample) -> tuple[str, str, int, int, int, int]:
    return (s.op, s.variant, s.batch, s.q_tokens, s.kv_tokens, s.heads)


def expected_slowest(factors: list[float], n: int) -> float:
    """Expected pace of the slowest of ``n`` processes drawn from those whose paces
    ``factors`` were measured: the mean over every ``n``-subset of its largest factor (the
    U-statistic of the maximum; the largest factor when ``n`` exceeds the count, 1.0 without
    factors). A run of ``n`` processes that synchronise goes at its slowest one's pace."""
    if not factors or n < 1:
        return 1.0
    f = sorted(factors)
    k = len(f)
    if n >= k:
        return f[-1]
    total = math.comb(k, n)
    # f[i] is the largest of the subsets drawn from f[0..i] that contain it: C(i, n-1).
    return sum(f[i] * math.comb(i, n - 1) for i in range(n - 1, k)) / total
