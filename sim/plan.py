"""``python -m sim.plan``: search every valid configuration, rank by latency, recommend one.

Example::

    python -m sim.plan --model pixart --gpus 8 --link pcie

The search itself (what is searched, how it prunes) is ``sim.search``; this command turns the
flags into a search and prints the recommendation, why it wins and the ranking. From Python,
``sim.plan(model=..., gpus=..., ...)`` (this module, called) or ``sim.api.plan`` returns a
``Plan`` (``api_plan``). Warmup counts
default to 0..2. HTML reports: ``python -m reports.plan``, same flags plus ``--report FILE``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

from sim.cli import (
    add_quiet_arg,
    add_workload_args,
    argv_from_kwargs,
    at_least,
    calibration_from_args,
    callable_module,
    check_finite,
    checked_time_limit,
    cluster_from_args,
    cost_spec_from_args,
    moved_report_flag,
    parse_int_list,
    parser,
    print_json,
    progress_from_args,
    reject_moved_report,
    run_main,
    workload_from_args,
)
from sim.config import ParallelConfig, Workload, check_warmup, validate
from sim.cost import CostSpec
from sim.errors import UserError
from sim.evaluate import Prediction, evaluate
from sim.hardware import GPU
from sim.outputs import check_outputs, write_output
from sim.progress import QUIET, Progress
from sim.search import Candidate, SearchResult, best_per_family, search
from sim.topology import Topology


def build_parser(prog: str = "python -m sim.plan") -> argparse.ArgumentParser:
    """The planner's flags (``reports.plan`` adds ``--report`` to them)."""
    p = parser(prog, "Rank every valid parallel configuration by predicted latency.")
    add_workload_args(p)
    add_quiet_arg(p)
    p.add_argument("--top", type=int, default=10, help="rows of the ranking to print")
    p.add_argument("--per-family", type=int, default=2,
                   help="best configurations shown for each strategy family")
    p.add_argument("--warmup", default="0,1,2",
                   help="warmup step counts to consider, comma-separated")
    p.add_argument("--exhaustive", action="store_true",
                   help="simulate every candidate (otherwise --json lists those a lower bound "
                        "ruled out with 'simulated': false and their bound)")
    p.add_argument("--chrome-trace", default=None, metavar="FILE",
                   help="write the recommended configuration's Chrome/Perfetto trace")
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S, metavar="SECONDS",
                   help=f"answer within about this many seconds (default "
                   f"{DEFAULT_TIME_LIMIT_S:g}): the search then stops and says what it left "
                   f"out and how far the answer can be from the best; 0 searches everything")
    return p


# The planner's answer time by default, seconds (issue 18: every command answers within a
# documented bound). Small searches finish far sooner; 1,024 GPUs take minutes in full.
DEFAULT_TIME_LIMIT_S = 60.0
# Of the time limit, what the search leaves for everything after it (ranking, printing).
_AFTER_SEARCH_S = 3.0


@dataclass
class PlanRun:
    """One planner command's search: what the flags asked for and what it found."""

    args: argparse.Namespace
    workload: Workload
    gpu: GPU
    topo: Topology
    warmups: list[int]  # step counts
    scale: float  # factor on compute costs (--single-gpu-latency)
    spec: CostSpec
    result: SearchResult
    elapsed_s: float  # from parsed flags to the ranking
    rows: list[dict] | None = None  # ``plan_json(result)``, built once


def run_search(args: argparse.Namespace, progress: Progress | None = None) -> PlanRun:
    """Check the planner's flags and run the search they describe, telling ``progress``
    how far it is (default: lines on stderr after 2 s unless ``--quiet``)."""
    t0 = time.perf_counter()
    if progress is None:
        progress = progress_from_args(args, t0)
    wl = workload_from_args(args)
    gpu, topo = cluster_from_args(args)
    at_least(args.top, 1, "--top")
    at_least(args.per_family, 1, "--per-family")
    warmups = sorted(set(parse_int_list(args.warmup, "--warmup") or ()))
    validate(wl, ParallelConfig(1))
    for w in warmups:  # the rule sim.predict applies, to every count (none dropped)
        check_warmup(w, wl.steps)
    limit = checked_time_limit(args.time_limit)
    spec = cost_spec_from_args(args)
    scale = calibration_from_args(args, wl, gpu, spec)
    # The limit counts from the parsed flags (topology and calibration included).
    left = None if limit is None else max(limit - _AFTER_SEARCH_S - (time.perf_counter() - t0),
                                          0.1)
    with progress.stage(f"searching the configurations of {wl.model.name} on "
                        f"{topo.num_gpus} x {gpu.name}"):
        result = search(wl, gpu, topo, warmups, scale, spec=spec, top=args.top,
                        per_family=args.per_family, exhaustive=args.exhaustive,
                        progress=progress, time_limit_s=left)
    progress.end()
    if result.stopped_at_s is not None:
        result.stopped_at_s = limit  # the user's figure, not the search's share of it
        if not result.ranked:
            raise UserError(f"no configuration was simulated within --time-limit {limit:g} s "
                            f"({result.candidates} searched); allow more time, or fewer GPUs "
                            f"or warmup counts")
    # A NaN would rank arbitrarily and print as "nan": refused before anything is written.
    rows = plan_json(result)
    check_finite(rows, "the ranking")
    return PlanRun(args, wl, gpu, topo, warmups, scale, spec, result,
                   time.perf_counter() - t0, rows)


def plan_json(result: SearchResult) -> list[dict]:
    """``sim.plan --json``: every candidate, the simulated ones ranked first (``simulated``:
    true, with their lower bound), then those the lower bound ruled out (``simulated``:
    false, ``latency_s``: null), by bound. ``recommended`` marks the recommendation
    (``recommend``), ``riskier_alternative`` the faster cold-start one shown beside it."""
    out = []
    best, fast = recommend(result.ranked) if result.ranked else (None, None)
    for p in result.ranked:
        d = p.as_dict()
        d["simulated"] = True
        d["lower_bound_s"] = result.lower_bound(p.config)
        d["recommended"] = p is best
        d["riskier_alternative"] = p is fast
        out.append(d)
    return out + [c.as_dict() for c in result.skipped()]


def recommended_in_full(run: PlanRun) -> Prediction:
    """The recommendation simulated again in full (per-block schedule, not the search's
    coarse one), for its timeline."""
    return evaluate(run.workload, recommend(run.result.ranked)[0].config, run.gpu, run.topo,
                    scale=run.scale, spec=run.spec)


def cost_note(run: PlanRun) -> str:
    """Where compute costs came from, and the calibration factor if any."""
    spec, scale = run.spec, run.scale
    return (f"{'profile ' + spec.profile if spec.profile else 'analytic roofline'}"
            f"{f' scaled by {scale:.3f}' if scale != 1.0 else ''}")


def describe(p: Prediction) -> str:
    """A configuration in words: its label and GPU count."""
    c = p.config
    if c.strategy == "serial":
        return "serial, 1 GPU"
    return f"{c.label()} on {c.gpus} GPUs"


# Latencies closer than this (relative) are called equal: "by 0%" read as a win.
EQUAL_WITHIN = 0.005


def margin(slower: float, faster: float) -> str | None:
    """How much ``faster`` (seconds) beats ``slower`` as a percentage, or None when the two
    are equal within ``EQUAL_WITHIN``."""
    gap = slower / faster - 1
    return None if gap < EQUAL_WITHIN else f"{gap:.0%}"


def recommend(ranked: list[Prediction]) -> tuple[Prediction, Prediction | None]:
    """The recommendation among ``ranked`` (fitting first, fastest first) and, when one is
    faster, the riskier alternative: the fastest configuration that fits and does not start
    cold (W=0 with PipeFusion or DistriFusion attends to empty K,V buffers in its first steps,
    which can hurt image quality), and the fastest cold-start one if it beats it. When every
    fitting configuration starts cold the fastest is recommended, with no alternative."""
    fitting = [p for p in ranked if not p.oom]
    if not fitting:
        return ranked[0], None
    warm = next((p for p in fitting if not p.config.cold_start), None)
    if warm is None or warm is fitting[0]:
        return fitting[0], None
    return warm, fitting[0]


def duration(seconds: float) -> str:
    """``0.541`` -> ``541 ms``, ``3.812`` -> ``3.81 s``: three significant digits."""
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def why(ranked: list[Prediction]) -> str:
    """One line on why the recommendation (``recommend``) wins, compared only with the
    configurations it was chosen among (warmed-up ones when it is warmed up)."""
    best, _ = recommend(ranked)
    if best.oom:
        return "nothing fits in memory: use GPUs with more memory or drop the text encoder " \
               "(--no-text-encoder) if it runs elsewhere"
    pool = [p for p in ranked if best.config.cold_start or not p.config.cold_start]
    serial = next((p for p in pool if p.config.strategy == "serial"), None)
    parts = []
    if serial is not None and serial is not best:
        parts.append(f"{serial.latency_s / best.latency_s:.2f}x faster than one GPU")
    m = best.metrics
    if best.config.gpus > 1:
        exposed = max(m.exposed_comm_s)
        sent = f"{m.comm_bytes_per_step / 1e6:.3g} MB sent per step by the busiest GPU"
        if exposed < 0.0005 * best.latency_s:
            parts.append(f"communication: all of it overlapped with compute ({sent})")
        else:
            parts.append(f"communication: {duration(exposed)} of {duration(best.latency_s)} "
                         f"is not overlapped with compute ({sent})")
        if m.bubble_fraction >= 0.005:
            parts.append(f"GPUs idle {m.bubble_fraction:.0%} of the time waiting for each "
                         f"other (bubbles)")
        route = best.topology.transport_summary(best.config.gpus)
        if route:
            parts.append(route)
    other_n = [p for p in pool if p is not best and not p.oom
               and p.config.gpus != best.config.gpus]
    if other_n:
        o = other_n[0]
        gap = margin(o.latency_s, best.latency_s)
        lead = f"{gap} ahead of" if gap else "equal (within 0.5%) to"
        parts.append(f"{lead} the best on "
                     f"{o.config.gpus} GPU{'s' if o.config.gpus > 1 else ''} ({describe(o)})")
    same_n = [p for p in pool if p is not best and not p.oom
              and p.config.gpus == best.config.gpus and p.config.patches != best.config.patches]
    if same_n and best.config.pipefusion > 1:
        o = same_n[0]
        gap = margin(o.latency_s, best.latency_s)
        parts.append(f"M={best.config.patches} beats M={o.config.patches} by {gap}" if gap
                     else f"M={best.config.patches} and M={o.config.patches} are equal "
                     f"(within 0.5%)")
    if best.config.cold_start:
        parts.append("note: W=0 starts from empty K,V buffers, which can hurt image quality; "
                     "--warmup 1,2 keeps the search to warmed-up runs")
    return "; ".join(parts)


def riskier_line(ranked: list[Prediction]) -> str | None:
    """The faster, riskier alternative to the recommendation in one line, if there is one."""
    best, fast = recommend(ranked)
    if fast is None:
        return None
    gap = margin(best.latency_s, fast.latency_s)
    by = f"{gap} faster" if gap else "within 0.5% of the recommendation"
    return (f"faster, riskier: {describe(fast)}  ->  {fast.latency_s:.3f} s ({by}); W=0 "
            f"attends to empty K,V buffers in its first steps, which can hurt image quality")


def marks(ranked: list[Prediction]) -> dict[int, str]:
    """Row notes for ``table``: the recommendation and its faster, riskier alternative, by
    ``id`` of their predictions."""
    best, fast = recommend(ranked) if ranked else (None, None)
    out = {id(best): "<- recommended"} if best is not None else {}
    if fast is not None:
        out[id(fast)] = "<- faster, riskier (W=0)"
    return out


def table(ranked: list[Prediction], top: int, notes: dict[int, str] | None = None) -> str:
    """The given configurations as a fixed-width table (speedups against serial); ``notes``
    (``marks``) follow their rows."""
    notes = notes or {}
    serial = next((p for p in ranked if p.config.strategy == "serial"), None)
    width = max([len(p.config.label()) for p in ranked[:top]] + [8])
    head = (f"{'#':>3}  {'configuration':<{width}}{'gpus':>5}{'latency s':>11}{'speedup':>9}"
            f"{'mem GB':>8}{'bubble':>8}{'exposed ms':>11}{'MB/step':>10}  fits")
    lines = [head, "-" * len(head)]
    for i, p in enumerate(ranked[:top], 1):
        c = p.config
        speed = serial.latency_s / p.latency_s if serial else float("nan")
        m = p.metrics
        lines.append(
            f"{i if not p.oom else '-':>3}  {c.label():<{width}}{c.gpus:>5}"
            f"{p.latency_s:>11.3f}{speed:>8.2f}x{p.memory_gb:>8.1f}"
            f"{m.bubble_fraction:>8.1%}{max(m.exposed_comm_s) * 1e3:>11.1f}"
            f"{m.comm_bytes_per_step / 1e6:>10.1f}  {'OOM' if p.oom else 'yes'}"
            + (f"  {notes[id(p)]}" if id(p) in notes else ""))
    return "\n".join(lines)


# What the table's terms mean, printed under it (issue 17: they were defined only deep in
# the README).
LEGEND = """\
columns: M = patches per image (PipeFusion); W = warmup steps run on the full image before
  stale K,V are used (W=0 is fastest but can hurt image quality); bubble = share of GPU time
  spent idle waiting for other stages; exposed ms = communication not hidden under compute,
  per rank, whole run; MB/step = bytes the busiest rank sends per steady step; speedup =
  against one GPU; mem GB = peak memory of the fullest GPU."""


def print_plan(run: PlanRun) -> None:
    """Print the recommendation, why, the ranking and the best of each family (or, with
    --json, every prediction)."""
    args, wl, gpu, result = run.args, run.workload, run.gpu, run.result
    ranked = result.ranked
    note = result.stop_note()
    if args.json:
        print_json(run.rows if run.rows is not None else plan_json(result))
        if note:
            print(f"warning: {note}", file=sys.stderr)
        return
    print(f"{wl.model.name} at {wl.width}x{wl.height}, {wl.steps} steps, {wl.dtype}; "
          f"{run.topo.num_gpus} x {gpu.name} ({gpu.memory_bytes / 1e9:.0f} GB) over {args.link}"
          f"{f', {args.nodes} nodes' if args.nodes > 1 else ''}"
          f"{'' if args.gpu else ' (GPU assumed: pass --gpu to change)'}")
    best, _ = recommend(ranked)
    print(f"recommended: {describe(best)}  ->  {best.latency_s:.3f} s, "
          f"{best.memory_gb:.1f} GB per GPU" + ("  (does NOT fit)" if best.oom else ""))
    print(f"why: {why(ranked)}")
    risky = riskier_line(ranked)
    if risky:
        print(risky)
    print()
    notes = marks(ranked)
    print(table([p for p in ranked if not p.oom] or ranked, args.top, notes))
    print("\nbest of each family (the trade-off, not only the winner):")
    print(table(best_per_family(ranked, args.per_family), 10**6, notes))
    print("\n" + LEGEND)
    print(f"\n{result.candidates} configurations searched in {run.elapsed_s:.2f} s: "
          f"{len(ranked)} simulated, {result.pruned} skipped by a latency lower bound (provably "
          f"slower than every row shown), {result.oom_skipped} skipped as out of memory. "
          f"Costs: {cost_note(run)}.")
    if note:
        print(f"\n{note[0].upper()}{note[1:]}")


# Columns of ``Plan.to_frame``: the configuration, then what the search found.
PLAN_COLUMNS = ("label", "strategy", "gpus", "pipefusion", "patches", "warmup", "ulysses",
                "ring", "tensor", "cfg", "distrifusion", "simulated", "lower_bound_s",
                "latency_s", "speedup", "memory_gb", "oom", "bubble_fraction",
                "exposed_comm_s", "comm_bytes_per_step")


@dataclass
class Plan:
    """What ``sim.plan`` finds, as an object: the ranking (simulated configurations, those
    that fit first, fastest first), the recommendation and why, and every candidate the
    search considered with its latency lower bound. Seconds throughout."""

    run: PlanRun

    @property
    def ranked(self) -> list[Prediction]:
        """The simulated configurations, fitting ones first, fastest first."""
        return self.run.result.ranked

    @property
    def recommended(self) -> Prediction:
        """What the command recommends: the fastest configuration that fits without a cold
        start (W=0 stale context), else the first of the ranking (check ``.oom``: when
        nothing fits it does not either)."""
        return recommend(self.ranked)[0]

    @property
    def riskier_alternative(self) -> Prediction | None:
        """The faster cold-start (W=0) configuration the command shows beside the
        recommendation, or None."""
        return recommend(self.ranked)[1]

    @property
    def why(self) -> str:
        """The command's one line on why the recommendation wins."""
        return why(self.ranked)

    @property
    def stop_note(self) -> str | None:
        """What the time limit left out of the search, or None when it searched everything."""
        return self.run.result.stop_note()

    @property
    def candidates(self) -> list[Candidate]:
        """Every configuration searched, with its lower bound and whether it was simulated."""
        return self.run.result.considered

    def table(self, top: int = 10) -> str:
        """The command's ranking table (fitting configurations, or all when none fits)."""
        return table([p for p in self.ranked if not p.oom] or self.ranked, top,
                     marks(self.ranked))

    def as_json(self) -> list[dict]:
        """What ``sim.plan --json`` prints."""
        return plan_json(self.run.result)

    def to_frame(self) -> Any:
        """Every candidate as a row of a ``pandas.DataFrame`` (``PLAN_COLUMNS``): the
        simulated ones in ranking order, then those the lower bound ruled out (``simulated``
        False, ``latency_s`` NaN); ``speedup`` is against the serial run. Needs pandas.

        >>> import sim
        >>> plan = sim.plan(model="pixart", gpus=2, steps=4, warmup=[1])
        >>> df = plan.to_frame()
        >>> len(df) == len(plan.candidates), df.loc[0, "label"] == plan.recommended.config.label()
        (True, True)
        """
        from sim.frames import data_frame

        serial = next((p.latency_s for p in self.ranked if p.config.strategy == "serial"),
                      None)
        rows = []
        for d in self.as_json():
            c = d["config"]
            lat = d["latency_s"]
            rows.append((c["label"], c["strategy"], c["gpus"], c["pipefusion"], c["patches"],
                         c["warmup"], c["ulysses"], c["ring"], c["tensor"], c["cfg"],
                         c["distrifusion"], d["simulated"], d["lower_bound_s"],
                         float("nan") if lat is None else lat,
                         serial / lat if serial and lat else float("nan"), d["memory_gb"],
                         d["oom"], d.get("bubble_fraction", float("nan")),
                         d.get("exposed_comm_s", float("nan")),
                         d.get("comm_bytes_per_step", float("nan"))))
        return data_frame(rows, PLAN_COLUMNS)


def api_plan(*, model: str, gpus: int, gpu: str | None = None, link: str = "pcie",
             nodes: int = 1, inter_node: str | None = None, nccl: str | None = None,
             host_cpu: str | None = None, ring_overlap: str = "auto", resolution: int | str = 1024,
             steps: int | None = None, dtype: str = "bf16", text_encoder: bool = True,
             vae: bool = True, single_gpu_latency: float | None = None,
             profile: str | None = None, link_profile: str | None = None, top: int = 10,
             per_family: int = 2, warmup: list[int] | str = "0,1,2",
             exhaustive: bool = False, time_limit: float = DEFAULT_TIME_LIMIT_S) -> Plan:
    """Search and rank every configuration: ``sim.plan``'s flags as keyword arguments, with
    its defaults and checks (a ``UserError`` carries the message the command prints after
    ``error:``); ``warmup`` is a list of step counts; ``time_limit`` in seconds (0: none;
    ``Plan.stop_note`` says what a stopped search left out). No progress bar is drawn.

    >>> import sim
    >>> plan = sim.plan(model="pixart", gpus=4, steps=6)
    >>> plan.recommended.config.gpus in (1, 2, 4), plan.recommended.latency_s > 0
    (True, True)
    >>> sum(c.simulated for c in plan.candidates) == len(plan.ranked)
    True
    """
    args = build_parser().parse_args(argv_from_kwargs(dict(locals())))
    return Plan(run_search(args, progress=QUIET))


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    moved_report_flag(p, "reports.plan")
    args = p.parse_args(argv)
    reject_moved_report(args, "reports.plan")
    check_outputs([("--chrome-trace", args.chrome_trace)])  # before the search, not after
    progress = progress_from_args(args)
    run = run_search(args, progress)
    if args.chrome_trace:
        with progress.stage("simulating the recommendation in full for --chrome-trace"):
            rec = recommended_in_full(run)
        write_output(args.chrome_trace, rec.trace.write_chrome, "--chrome-trace")
    print_plan(run)
    return 0


callable_module(__name__, api_plan)

if __name__ == "__main__":
    run_main(main)
