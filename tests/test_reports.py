"""Reports: each opens in headless Chromium with every Plotly figure drawn and no script
error; Chrome traces load as JSON. Skipped (with the reason) where Chromium is missing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("plotly")

from reports import compare, plan  # noqa: E402
from sim import compare as sim_compare  # noqa: E402
from sim import predict  # noqa: E402
from sim.cli import run_main  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian package 'chromium'; .ci/run "
    "installs it where apt-get works)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=20000", "--dump-dom"]


def render(path: Path) -> tuple[str, list[str]]:
    """The DOM after scripts ran, and the script errors Chromium logged."""
    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}",
                              path.resolve().as_uri()], capture_output=True, text=True,
                             timeout=180)
    errors = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln and
              ("Uncaught" in ln or "Error" in ln)]
    return res.stdout, errors


def _figures(html: str) -> int:
    return html.count('class="plotly-graph-div"')


@needs_chromium
def test_renderer_catches_script_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><div id=x>hi</div><script>undefinedFn()</script></body></html>")
    dom, errors = render(bad)
    assert 'id="x"' in dom
    assert errors and "undefinedFn" in errors[0]


def _run(main, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run_main(main, argv)
    assert exc.value.code == 0


def test_report_commands_print_what_the_sim_commands_print(tmp_path: Path, capsys) -> None:
    argv = ["--model", "pixart", "--gpus", "2", "--resolutions", "512", "--steps", "4"]
    _run(sim_compare.main, argv)
    expected = capsys.readouterr().out
    _run(compare.main, argv + ["--report", str(tmp_path / "c.html")])
    assert capsys.readouterr().out == expected
    assert _figures((tmp_path / "c.html").read_text()) == 3


@needs_chromium
def test_plan_report_draws_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "plan.html"
    chrome = tmp_path / "plan.json"
    _run(plan.main, ["--model", "pixart", "--gpus", "4", "--steps", "6", "--report", str(out),
                     "--chrome-trace", str(chrome)])
    html = out.read_text()
    n = _figures(html)
    assert n == 6  # timeline, latency by strategy, 2 memory, PCIe vs NVLink, GPU count
    assert "<script src=" not in html and "Plotly.newPlot" in html  # plotly.js inlined
    dom, errors = render(out)
    assert errors == []
    assert dom.count('class="main-svg"') >= n  # Plotly drew every figure
    assert 'class="sortable"' in dom
    events = json.loads(chrome.read_text())["traceEvents"]
    assert {e["pid"] for e in events} >= {0}


@needs_chromium
def test_compare_report_draws_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "compare.html"
    _run(compare.main, ["--model", "pixart", "--gpus", "4", "--resolutions", "512,1024",
                        "--steps", "6", "--report", str(out)])
    html = out.read_text()
    assert _figures(html) == 3
    dom, errors = render(out)
    assert errors == []
    assert dom.count('class="main-svg"') >= 3


def test_predict_chrome_trace_of_a_hybrid(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    _run(predict.main, ["--model", "pixart", "--gpus", "4", "--cfg", "2", "--ulysses", "2",
                        "--steps", "4", "--chrome-trace", str(out)])
    events = json.loads(out.read_text())["traceEvents"]
    names = {e["name"] for e in events}
    assert "blocks" in names and any(n.startswith("all_to_all") for n in names)
    assert {e["tid"] for e in events if e["ph"] == "X"} == {0, 1}


class _Text(HTMLParser):
    """The rendered page's text, with the text of each table cell of the ranking and the
    order in which the answer, the figures and the folded table appear."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.cells: list[str] = []
        self.headers: list[str] = []
        self.events: list[str] = []  # "answer", "figure", "details"
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        cls = dict(attrs).get("class") or ""
        if tag == "div" and "answer" in cls:
            self.events.append("answer")
        elif tag == "div" and "plotly-graph-div" in cls:
            self.events.append("figure")
        elif tag == "details":
            self.events.append("details")
        if tag in ("td", "th"):
            self._in = tag
            (self.cells if tag == "td" else self.headers).append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._in = None

    def handle_data(self, data: str) -> None:
        self.parts.append(data)
        if self._in == "td":
            self.cells[-1] += data
        elif self._in == "th":
            self.headers[-1] += data


@needs_chromium
def test_plan_report_reads_well_once_rendered(tmp_path: Path, capsys) -> None:
    """Issue 17: read the page as Chromium renders it: the recommendation and its why come
    first, numbers are formatted (percent, ms; no 1e-14), log axes say so, and the long
    table is folded after the charts."""
    out = tmp_path / "plan.html"
    argv = ["--model", "pixart", "--gpus", "4", "--steps", "6", "--link", "nvlink", "--quiet"]
    _run(plan.main, argv + ["--report", str(out)])
    printed = capsys.readouterr().out
    why = next(ln for ln in printed.splitlines() if ln.startswith("why: "))[5:]
    rec = next(ln for ln in printed.splitlines() if ln.startswith("recommended: "))
    dom, errors = render(out)
    assert errors == []
    page = _Text()
    page.feed(dom)
    text = " ".join(" ".join(page.parts).split())
    label = rec.split("recommended: ")[1].split(" on ")[0]
    assert f"Recommended: {label}" in text
    for reason in why.split("; "):
        assert reason in text
    assert "faster, riskier:" in text
    # The answer before every figure; the folded table after them.
    assert page.events[0] == "answer" and page.events[-1] == "details"
    assert "figure" in page.events and dom.count("<details") == 1
    # Formatted cells: the bubble column in percent, exposed communication in ms, and no
    # number in exponent notation anywhere in the table.
    cols = page.headers
    width = len(cols)
    rows = [page.cells[i:i + width] for i in range(0, len(page.cells), width)]
    assert rows and all(len(r) == width for r in rows)
    bubble, exposed = cols.index("bubble"), cols.index("exposed comm")
    assert all(re.fullmatch(r"\d+\.\d %", r[bubble]) for r in rows)
    assert all(re.fullmatch(r"\d+\.\d ms", r[exposed]) for r in rows)
    assert not any(re.search(r"\de[-+]\d", c) for c in page.cells)
    # Plotly drew the log axis title with its scale named.
    assert "seconds (log scale)" in text


SERVE = ["--model", "pixart", "--gpu", "l40", "--gpus", "4", "--link", "pcie", "--mix",
         "1024:0.7,2048:0.3", "--slo", "1.5x", "--requests", "300", "--widths", "1,2",
         "--router", "lwl", "--quiet"]


@needs_chromium
def test_serve_report_draws_every_figure(tmp_path: Path, capsys) -> None:
    from reports import serve as serve_report
    from sim import serve

    argv = SERVE + ["--rate", "0.25", "--price", "2"]
    _run(serve.main, argv)
    expected = capsys.readouterr().out
    out = tmp_path / "serve.html"
    _run(serve_report.main, argv + ["--report", str(out)])
    got = capsys.readouterr()
    # What sim.serve prints, but for the command's own duration on the last line.
    assert got.out.splitlines()[:-1] == expected.splitlines()[:-1]
    assert got.out.splitlines()[-1].split(" in ")[0] == expected.splitlines()[-1].split(
        " in ")[0]
    assert got.err.strip() == f"wrote {out} (--report)"  # sim.outputs announces every file
    html = out.read_text()
    assert _figures(html) == 4  # attainment, latency CDF, Pareto front, replica timeline
    assert "Pareto front" in html and "SLO 2048" in html
    dom, errors = render(out)
    assert errors == []
    assert dom.count('class="main-svg"') >= 4


def test_serve_report_without_a_price_or_rate_says_how_to_get_the_cost(tmp_path: Path,
                                                                       capsys) -> None:
    from reports import serve as serve_report

    out = tmp_path / "serve.html"
    _run(serve_report.main, SERVE + ["--report", str(out)])
    html = out.read_text()
    assert _figures(html) == 3
    assert "Give --price" in html
    assert "90 % of the first row" in html  # the rate the CDF and timeline were run at


def test_serve_report_without_plotly_is_one_line_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "serve.html"
    code = ("import sys; sys.modules['plotly'] = None; "
            "sys.modules['plotly.graph_objects'] = None; "
            "from reports.serve import main; from sim.cli import run_main; "
            f"run_main(main, {SERVE + ['--report', str(out)]!r})")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip() == "error: reports need plotly: pip install 'ditsim[reports]'"
    assert res.stdout == "" and not out.exists()
