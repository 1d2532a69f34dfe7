"""``python -m reports.compare``: the strategy comparison with an HTML report.

Takes every ``sim.compare`` flag plus ``--report FILE``, prints what ``sim.compare`` prints,
and writes the table and its charts (latency, speedup, memory per GPU) as one HTML file.

Example::

    python -m reports.compare --model pixart --gpu l40 --gpus 8 --link pcie \\
        --resolutions 1024,2048,4096 --report compare.html
"""

from __future__ import annotations

import argparse

from sim import compare
from sim.cli import run_main
from sim.compare import Cells
from sim.errors import UserError
from sim.outputs import check_outputs, write_output


def build_parser() -> argparse.ArgumentParser:
    """``sim.compare``'s flags plus ``--report``."""
    p = compare.build_parser("python -m reports.compare")
    p.add_argument("--report", required=True, metavar="FILE",
                   help="write an interactive HTML report (Plotly, opens offline)")
    return p


def intro(args: argparse.Namespace, cells: Cells) -> str:
    """The report's opening line: model, steps, cluster and where costs came from."""
    any_p = next(p for row in cells.values() for p in row.values())
    return (f"{any_p.workload.model.name}, {any_p.workload.steps} steps, {args.gpus} x "
            f"{any_p.gpu.name} over {args.link}; each cell is the best configuration of "
            f"the family using every GPU. Costs: "
            f"{'profile ' + args.profile if args.profile else 'analytic roofline'}.")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:  # plotly is an optional extra: without it, one line instead of a traceback
        from reports.compare_report import write_compare_report
    except ImportError:
        raise UserError("reports need plotly: pip install 'ditsim[reports]'") from None
    check_outputs([("--report", args.report)])  # before the comparison, not after
    resolutions, cells, missing = compare.compare(args)
    write_output(args.report, lambda p: write_compare_report(
        p, "ditsim compare", intro(args, cells), resolutions, cells, missing), "--report")
    compare.print_comparison(args, resolutions, cells, missing)
    return 0


if __name__ == "__main__":
    run_main(main)
