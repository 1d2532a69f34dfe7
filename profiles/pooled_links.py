"""A link profile pooled over several launches of ``profiles.links``.

    python -m profiles.pooled_links OUT PART PART [PART ...]

Why: on CPU processes sharing cores (gloo, the 2-core EPYC VM) a blocking collective's time
has two modes a millisecond or more apart (its transport threads waiting for a core or not),
and which one dominates is a state of the launch that lasts for seconds: a 64-256 KiB
all_reduce's median was 0.4-0.55 ms in one launch's link profile and 1.7 ms in another's
(2026-12-01). The engine costs a collective at its mean call, so one launch's profile carries
its launch's mode into every prediction: the same measured quick grid (03:20 UTC), scored with
the link profiles of four launches collected within 1.5 hours by the same code, put pixart-tiny
256 px tensor2 at -20.6, -12.1, +2.0 and +27.4 % (``python benchmarks/repredict.py RUN --link
PROFILE``). Launches are independent draws of that state; their pooled mean is the
expectation over launches, as the validation's runs (several launches each) pay it.

Pooled per row (op, group size, bytes): the calls summed, ``mean_s`` the calls-weighted mean of
the launches' means (the pooled mean of every call), ``median_s``, ``p25_s`` and ``p75_s`` the
median of the launches' values (the raw calls are not kept), the smallest minimum and the
largest maximum, the bandwidths recomputed from the pooled median; host-time rows
(``host_msg``, ``host_coll``) alike. The fits are refitted to the pooled medians, as
``profiles.links`` fits its own. Torch-free.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from sim.cli import run_main
from sim.cost.interp import fit_regimes
from sim.cost.profile_format import HOST_OPS, LinkProfile, LinkSample
from sim.errors import UserError
from sim.outputs import check_writable, output_errors

# Metadata the launches must share to be pooled: they measured the same thing.
SAME = ("backend", "link_kind", "world_size", "device", "device_name", "threads", "busy",
        "sizes")


def _key(s: LinkSample) -> tuple[str, int, int]:
    return (s.op, s.world, s.nbytes)


def pool_links(parts: list[LinkProfile]) -> LinkProfile:
    """One link profile from several launches of the same collection (module docstring).
    Raises ``UserError`` when the launches measured different things."""
    if len(parts) < 2:
        raise UserError("pool two link profiles or more")
    first = parts[0]
    for i, p in enumerate(parts[1:], 2):
        for k in SAME:
            if p.meta.get(k) != first.meta.get(k):
                raise UserError(f"link profile {i} ({p.path or 'in memory'}) has {k} "
                                f"{p.meta.get(k)!r} against {first.meta.get(k)!r} in the first; "
                                f"pool launches of the same collection on the same machine")
    keys = [_key(s) for s in first.samples]
    by_part = [{_key(s): s for s in p.samples} for p in parts]
    for i, p in enumerate(by_part[1:], 2):
        if set(p) != set(keys):
            raise UserError(f"link profile {i} timed other rows (op, size) than the first; "
                            f"pool launches of the same collection")
    samples = []
    for k in keys:
        ss = [p[k] for p in by_part]
        calls = sum(s.repeats for s in ss)
        med = statistics.median(s.median_s for s in ss)
        means = [s.mean_s for s in ss]
        mean = (sum(m * s.repeats for m, s in zip(means, ss)) / calls
                if all(m is not None for m in means) and calls else None)
        host = k[0] in HOST_OPS
        # Host rows carry no bandwidth (a difference of loop times is no transfer).
        algbw = 0.0 if host or med <= 0 else k[2] / med
        bus = 0.0 if ss[0].algbw_Bps <= 0 else ss[0].busbw_Bps / ss[0].algbw_Bps
        samples.append(LinkSample(k[0], k[1], k[2], calls, med, min(s.min_s for s in ss),
                                  statistics.median(s.p25_s for s in ss),
                                  statistics.median(s.p75_s for s in ss),
                                  max(s.max_s for s in ss), algbw, algbw * bus, mean))
    fits = {}
    for op in dict.fromkeys(s.op for s in samples if s.op not in HOST_OPS):
        pts = [s for s in samples if s.op == op]
        fits[op] = fit_regimes([s.nbytes for s in pts], [s.median_s for s in pts], robust=True)
    meta = dict(first.meta)
    meta["fits"] = fits
    meta["launches"] = len(parts)
    meta["collect_s"] = round(sum(float(p.meta.get("collect_s", 0.0)) for p in parts), 2)
    meta["repeats"] = sum(int(p.meta.get("repeats", 0)) for p in parts)
    meta["date"] = max(str(p.meta.get("date", "")) for p in parts)
    stretches = [p.meta["stretch_s"] for p in parts if isinstance(p.meta.get("stretch_s"), dict)]
    if len(stretches) == len(parts):  # the compute the blocking rows were timed after
        meta["stretch_s"] = {k: statistics.median(float(x[k]) for x in stretches)
                             for k in stretches[0]}
    meta["pooled"] = ("per row the launches' calls summed, mean_s their calls-weighted mean, "
                      "median/p25/p75 the median of the launches' values, min and max over "
                      "them (profiles.pooled_links)")
    return LinkProfile(meta, samples)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m profiles.pooled_links",
                                description="Pool link profiles of several launches of "
                                            "profiles.links into one.")
    p.add_argument("out", type=Path, help="the pooled profile to write (CSV)")
    p.add_argument("parts", type=Path, nargs="+", help="link profiles, two or more")
    a = p.parse_args(argv)
    check_writable(a.out, "OUT", make_folders=True)
    parts = []
    for path in a.parts:
        if not path.is_file():
            raise UserError(f"{path} does not exist; give link profiles written by "
                            f"python -m profiles.links")
        parts.append(LinkProfile.read(path))
    prof = pool_links(parts)
    with output_errors("OUT", a.out):
        prof.write(a.out)
    print(f"wrote {a.out}: {len(prof.samples)} rows pooled over {len(parts)} launches")
    return 0


if __name__ == "__main__":
    run_main(main)
