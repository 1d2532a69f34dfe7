"""``python -m reports.plan``: the planner with an HTML report.

Takes every ``sim.plan`` flag plus ``--report FILE``, prints what ``sim.plan`` prints, and
writes the report: the ranking, the recommendation's timeline and memory, the best of each
family, and two views the planner alone does not give, for which the search is run again:
PCIe against NVLink, and latency against GPU count.

Example::

    python -m reports.plan --model pixart --gpus 8 --link pcie --report plan.html
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from sim import plan
from sim.cli import progress_from_args, run_main
from sim.errors import UserError
from sim.hardware import DEFAULT_GPU, get_gpu
from sim.outputs import check_outputs, write_outputs
from sim.plan import PlanRun
from sim.progress import QUIET, Progress
from sim.search import best_per_family, search
from sim.topology import build_topology


def build_parser() -> argparse.ArgumentParser:
    """``sim.plan``'s flags plus ``--report``."""
    p = plan.build_parser("python -m reports.plan")
    p.add_argument("--report", required=True, metavar="FILE",
                   help="write an interactive HTML report (Plotly, opens offline)")
    return p


@dataclass
class Alternatives:
    """Best latency (s) per strategy family under other clusters than the one planned for."""

    links: dict[str, dict[str, float]]  # "GPU link" -> family -> latency
    link_note: str  # which GPU the link comparison uses, and why
    by_gpus: dict[str, dict[int, float]]  # family -> GPU count -> latency


def gather(run: PlanRun, progress: Progress = QUIET) -> Alternatives:
    """Search again over PCIe and over NVLink (on an NVLink GPU when the planned one has
    none), and for each GPU count that divides the planned one; the planned search is reused
    where it is the same. ``progress`` counts the searches."""
    args, wl, gpu, topo = run.args, run.workload, run.gpu, run.topo
    link_gpu = gpu if gpu.nvlink else get_gpu(DEFAULT_GPU["nvlink"])
    counts = [d for d in range(1, topo.num_gpus + 1) if topo.num_gpus % d == 0]
    total = 2 + len(counts)
    links: dict[str, dict[str, float]] = {}
    for link in ("pcie", "nvlink"):
        lt = build_topology(link_gpu, args.gpus, link, args.nodes, args.inter_node, args.nccl,
                            args.host_cpu)
        res = run.result if (link == args.link and link_gpu is gpu) else search(
            wl, link_gpu, lt, run.warmups, run.scale, top=1, per_family=1, spec=run.spec)
        links[f"{link_gpu.name} {link}"] = {p.config.strategy: p.latency_s
                                            for p in best_per_family(res.ranked, 1) if not p.oom}
        progress("report: searching other links and GPU counts", len(links), total)
    note = "same GPU" if link_gpu is gpu else \
        f"{gpu.name} has no NVLink, so {link_gpu.name} is shown over both"
    by_gpus: dict[str, dict[int, float]] = {}
    for i, n in enumerate(counts):
        res = search(wl, gpu, topo, run.warmups, run.scale, top=1, per_family=1, only=n,
                     spec=run.spec)
        for p in best_per_family(res.ranked, 1):
            if not p.oom and (p.config.gpus == n):
                by_gpus.setdefault(p.config.strategy, {})[n] = p.latency_s
        progress("report: searching other links and GPU counts", 3 + i, total)
    progress.end()
    return Alternatives(links, note, by_gpus)


def intro(run: PlanRun) -> str:
    """The report's opening line: workload, cluster, costs, size of the search."""
    wl = run.workload
    return (f"{wl.model.name} at {wl.width}x{wl.height}, {wl.steps} steps, {wl.dtype}; "
            f"{run.topo.num_gpus} x {run.gpu.name} over {run.args.link}. Costs: "
            f"{plan.cost_note(run)}. {run.result.candidates} configurations searched.")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:  # plotly is an optional extra: without it, one line instead of a traceback
        from reports.plan_report import write_plan_report
    except ImportError:
        raise UserError("reports need plotly: pip install 'ditsim[reports]'") from None
    # Refused before the searches, not after them.
    check_outputs([("--report", args.report), ("--chrome-trace", args.chrome_trace)])
    progress = progress_from_args(args)
    run = plan.run_search(args, progress)
    with progress.stage("report: simulating the recommendation in full for its timeline"):
        rec = plan.recommended_in_full(run)
    alt = gather(run, progress)
    ranked = run.result.ranked
    # Both files or neither: a report whose trace failed to write is removed with it.
    write_outputs([
        ("--chrome-trace", args.chrome_trace, rec.trace.write_chrome),
        ("--report", args.report, lambda p: write_plan_report(
            p, "ditsim plan", intro(run), ranked, rec, best_per_family(ranked, 1), alt.links,
            alt.link_note, alt.by_gpus, plan.why(ranked), plan.riskier_line(ranked)))])
    plan.print_plan(run)
    return 0


if __name__ == "__main__":
    run_main(main)
