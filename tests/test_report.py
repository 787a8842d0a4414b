"""The run report page: self-contained, and in a real headless browser its curves, zoom, hover and slider work."""

from __future__ import annotations

import json
import re

import pytest
from headless_browser import HOW_TO_GET_ONE, Browser, find_browser
from run_fixtures import GRID_STEPS, HOSTILE, SKIPPED, STEPS, make_run

from draft_core import cli
from draft_core.report import REPORT_NAME, refresh_report, write_report


def page_data(path):
    text = path.read_text()
    block = re.search(r'<script type="application/json" id="draft-report-data">(.*?)</script>', text, re.S).group(1)
    return text, json.loads(block)


def test_page_is_one_self_contained_file(tmp_path):
    run = make_run(tmp_path)
    out = write_report([run])
    assert out == run / REPORT_NAME
    text, data = page_data(out)
    # Nothing to fetch: every src is inline, no stylesheet or script comes from elsewhere.
    assert all(src.startswith("data:image/") for src in re.findall(r'\bsrc="([^"]*)"', text))
    assert (
        "<link" not in text
        and not re.search(r"<script[^>]*\bsrc=", text)
        and "://" not in re.sub(r"data:[^\"]*", "", text).replace("http://www.w3.org/2000/svg", "")
    )
    assert [g["step"] for g in data["runs"][0]["grids"]] == list(GRID_STEPS)
    assert [g["step"] for g in data["runs"][0]["val_grids"]] == list(GRID_STEPS[1:])
    reward = data["charts"]["reward"]["series"][0]
    assert reward["x"] == list(range(1, STEPS + 1)) and reward["y"][SKIPPED - 1] is None
    assert reward["hi"][0] - reward["y"][0] == pytest.approx(0.1) and reward["lo"][SKIPPED - 1] is None  # ± std
    val = data["charts"]["val/ink-coverage"]["series"][0]
    assert val["x"] == [10, 20, 30] and val["y"] == pytest.approx([0.21, 0.22, 0.23])
    assert {"kl", "loss", "grad_norm", "lr", "seconds"} <= set(data["other"])
    assert HOSTILE not in text  # escaped in the HTML and in the JSON block alike
    assert f"draft train --resume {run}" in text and "draft sample --model digits" in text
    assert "DRaFT LoRA for digits" in text  # the model card, rendered


def test_a_pending_validation_row_is_shown_before_it_is_written(tmp_path):
    """Validation scores reach metrics.jsonl with their step's row, after the page is rewritten."""
    from draft_core.report import read_run

    run = make_run(tmp_path)
    series = read_run(run, pending={"step": STEPS + 10, "val/ink-coverage": 0.5}).series["val/ink-coverage"]
    assert series.x == [10, 20, 30, STEPS + 10] and series.y[-1] == 0.5
    merged = read_run(run, pending={"step": 5, "val/ink-coverage": 0.25})  # into step 5's row
    assert merged.series["val/ink-coverage"].x == [5, 10, 20, 30] and merged.series["reward_mean"].x == list(
        range(1, STEPS + 1)
    )


def test_large_grids_are_downscaled_and_many_are_thinned(tmp_path):
    from PIL import Image

    from draft_core.report.collect import MAX_GRIDS, MAX_SIDE, read_grids

    folder = tmp_path / "samples"
    folder.mkdir()
    Image.new("RGB", (MAX_SIDE * 2, 100), "red").save(folder / "step-000000.png")
    for s in range(1, MAX_GRIDS + 10):
        Image.new("RGB", (8, 8), "blue").save(folder / f"step-{s:06d}.png")
    grids = read_grids(folder)
    assert len(grids) == MAX_GRIDS and grids[0].step == 0 and grids[-1].step == MAX_GRIDS + 9
    assert grids[0].src.startswith("data:image/jpeg") and grids[1].src.startswith("data:image/png")


def test_refresh_never_raises(tmp_path):
    warnings = []
    assert refresh_report(tmp_path / "nothing", warnings.append) is None
    assert "could not write" in warnings[0] and "training continues" in warnings[0]


def test_cli_report(tmp_path, capsys):
    a, b = make_run(tmp_path, "a"), make_run(tmp_path, "b", slope=0.03)
    assert cli.main(["report", str(a)]) == 0 and (a / REPORT_NAME).is_file()
    assert cli.main(["report", str(a), str(b)]) == 2
    assert "give --out FILE" in capsys.readouterr().err
    assert cli.main(["report", str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "c.html")]) == 2
    assert "missing' is not a folder" in capsys.readouterr().err and not (tmp_path / "c.html").exists()
    assert cli.main(["report", str(a), str(b), "--out", str(tmp_path / "c.html")]) == 0
    _, data = page_data(tmp_path / "c.html")
    assert [s["name"] for s in data["charts"]["reward"]["series"] if s.get("legend") is not False] == ["a", "b"]


# -- in a browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    exe = find_browser()
    if exe is None:
        pytest.skip(HOW_TO_GET_ONE)
    with Browser(exe) as b:
        yield b


def chart_box(b, key):
    return b.js(f"""(() => {{ const r = document.querySelector('[data-chart="{key}"] svg .overlay').getBoundingClientRect();
        window.scrollTo(0, 0); return [r.left, r.top, r.width, r.height]; }})()""")


def test_page_in_a_browser(browser, tmp_path):
    b = browser
    run = make_run(tmp_path)
    b.errors.clear()
    b.open(write_report([run]))
    assert b.errors == []
    assert b.js("window.injected === undefined") and HOSTILE in b.js("document.body.innerText")
    # The curves hold every finite point: 29 rewards (step 7 was skipped), 3 validation points.
    points = b.js(
        "Object.fromEntries([...document.querySelectorAll('path.line')].map(p => [p.dataset.series, +p.dataset.points]))"
    )
    assert points["reward (batch mean)"] == STEPS - 1 and points["val/ink-coverage"] == 3
    d = b.js("document.querySelector('path.line[data-series=\"reward (batch mean)\"]').getAttribute('d')")
    assert len(re.findall(r"[ML]", d)) == STEPS - 1 and d.count("M") == 2  # the skipped step breaks the line
    d = b.js("document.querySelector('path.line[data-series=\"val/ink-coverage\"]').getAttribute('d')")
    assert d.count("M") == 1 and d.count("L") == 2  # validation points every 10 steps, joined
    assert b.js("document.querySelectorAll('[data-chart=\"reward\"] path[fill-opacity]').length") == 1  # the std band
    markers = "document.querySelectorAll('[data-chart=\"%s\"] g[clip-path] circle').length"
    assert b.js(markers % "val/ink-coverage") == 3 and b.js(markers % "other") == 0  # a marker for each sparse point

    # Hover: the tooltip shows the value at the nearest step.
    x, y, w, h = chart_box(b, "reward")
    b.mouse("moved", x + w * (20 - 1) / (STEPS - 1), y + h / 2)  # over step 20
    tip = b.js("document.querySelector('[data-chart=\"reward\"] .tip').innerText")
    assert "step 20" in tip and "reward (batch mean): -0.6" in tip
    # Drag from step ~8 to ~15: the x range narrows to it; double-click resets it.
    x0, x1 = x + w * 7 / 29, x + w * 14 / 29
    b.mouse("pressed", x0, y + h / 2)
    b.mouse("moved", x1, y + h / 2)
    b.mouse("released", x1, y + h / 2)
    lo, hi = b.js(
        "(() => { const s = document.querySelector('[data-chart=\"reward\"] svg'); return [+s.dataset.x0, +s.dataset.x1]; })()"
    )
    assert lo == pytest.approx(8, abs=0.3) and hi == pytest.approx(15, abs=0.3)
    b.js("document.querySelector('[data-chart=\"reward\"] button.reset').click()")
    assert b.js("+document.querySelector('[data-chart=\"reward\"] svg').dataset.x1") == STEPS

    # The slider starts at the last grid; one step left (a real key press) shows step 20's grid.
    grids = [g["src"] for g in page_data(run / REPORT_NAME)[1]["runs"][0]["grids"]]
    assert b.js("document.querySelector('img.grid').src") == grids[-1]
    b.js("document.querySelector('.grids input[type=range]').focus()")
    b.key("ArrowLeft", 37)
    assert b.js("document.querySelector('img.grid').src") == grids[2]
    assert b.js("document.querySelector('.grid-step').textContent") == "step 20 (3 of 4)"

    # The validation grids have their own slider.
    val = page_data(run / REPORT_NAME)[1]["runs"][0]["val_grids"]
    assert b.js("document.querySelector('.grids[data-kind=\"val_grids\"] img.grid').src") == val[-1]["src"]
    b.js("document.querySelector('.grids[data-kind=\"val_grids\"] input[type=range]').focus()")
    b.key("Home", 36)
    assert (
        b.js("document.querySelector('.grids[data-kind=\"val_grids\"] .grid-step').textContent") == "step 10 (1 of 3)"
    )
    assert b.js("document.querySelector('.grids[data-kind=\"grids\"] .grid-step').textContent") == "step 20 (3 of 4)"

    # The metric picker redraws the third chart.
    b.js(
        "(() => { const s = document.querySelector('select.metric'); s.value = 'kl'; s.dispatchEvent(new Event('change')); })()"
    )
    assert b.js("document.querySelector('[data-chart=\"other\"] .chart-title').textContent") == "kl"
    assert b.js("+document.querySelector('[data-chart=\"other\"] path.line').dataset.points") == STEPS - 1
    assert b.errors == []


def test_overlay_of_two_runs_in_a_browser(browser, tmp_path):
    b = browser
    runs = [make_run(tmp_path, "a"), make_run(tmp_path, "b", slope=0.03)]
    b.errors.clear()
    b.open(write_report(runs, tmp_path / "compare.html"))
    assert b.errors == []
    legend = b.js(
        "[...document.querySelectorAll('[data-chart=\"reward\"] .legend .item')].map(e => e.innerText.trim())"
    )
    assert legend == ["a", "b"]
    assert b.js("document.querySelectorAll('.grids').length") == 2 * 2  # samples and validation, per run
    # Hiding run a (a click on its legend entry) leaves b's curve and its moving average.
    b.js("document.querySelector('[data-chart=\"reward\"] .legend .item').click()")
    shown = b.js("[...document.querySelectorAll('[data-chart=\"reward\"] path.line')].map(p => p.dataset.series)")
    assert shown == ["b"]


def test_page_before_the_first_step_in_a_browser(browser, tmp_path):
    """The page as it is first written, with the step-0 grid and no metrics yet."""
    b = browser
    run = make_run(tmp_path)
    (run / "metrics.jsonl").unlink()
    for grid in sorted((run / "samples").glob("step-*.png"))[1:]:
        grid.unlink()
    b.errors.clear()
    b.open(write_report([run]))
    assert b.errors == []
    assert b.js("document.querySelectorAll('path.line').length") == 0
    assert b.js("document.querySelector('.grid-step').textContent") == "step 0 (1 of 1)"
    assert "step 0 of 30" in b.js("document.querySelector('.sub').textContent")


def _guarded_run(tmp_path):
    """make_run's run, stopped by a guard at step 30 with its best validation at step 20."""
    run = make_run(tmp_path)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        if row["step"] == 20:
            row["guard_best"] = True
        if row["step"] == 30:
            row["guard_stop"] = "val/judge dropped to 0.8 from 0.97 at the start (more than 0.05)"
            row["val/judge"] = 0.8
        elif "val/ink-coverage" in row:
            row["val/judge"] = 0.97
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_hacking_panel_data(tmp_path):
    run = _guarded_run(tmp_path)
    text, data = page_data(write_report([run]))
    chart = data["charts"]["hacking"]
    names = [s["name"] for s in chart["series"]]
    assert names == ["training reward", "val/ink-coverage (held out)", "val/judge (held out)"]
    assert chart["series"][2]["x"] == [10, 20, 30] and chart["series"][2]["y"] == pytest.approx([0.97, 0.97, 0.8])
    assert chart["marks"] == [
        {"x": 30, "label": "stopped: val/judge dropped to 0.8 from 0.97 at the start (more than 0.05)", "kind": "stop"},
        {"x": 20, "label": "best (lora/best/)", "kind": "best"},
    ]
    assert "stopped by train.stop_when" in text
    # a run without validation has no hacking panel
    plain = make_run(tmp_path / "c")
    rows = [json.loads(line) for line in (plain / "metrics.jsonl").read_text().splitlines()]
    (plain / "metrics.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in r.items() if not k.startswith("val/")}) + "\n" for r in rows)
    )
    assert "hacking" not in page_data(write_report([plain]))[1]["charts"]


def test_hacking_panel_in_a_browser(browser, tmp_path):
    b = browser
    run = _guarded_run(tmp_path)
    b.errors.clear()
    b.open(write_report([run]))
    assert b.errors == []
    lines = b.js(
        "[...document.querySelectorAll('[data-chart=\"hacking\"] path.line')].map(p => [p.dataset.series, +p.dataset.points])"
    )
    assert lines == [["training reward", STEPS - 1], ["val/ink-coverage (held out)", 3], ["val/judge (held out)", 3]]
    marks = b.js(
        "[...document.querySelectorAll('[data-chart=\"hacking\"] g.mark')].map(g => [g.getAttribute('class'), +g.dataset.step, g.textContent])"
    )
    assert [m[:2] for m in marks] == [["mark stop", 30], ["mark best", 20]]
    assert "val/judge dropped to 0.8" in marks[0][2]
    # the stop line stands at step 30 on the x axis: at the right edge of the plot
    x, _, w, _ = chart_box(b, "hacking")
    line_x = b.js("document.querySelector('[data-chart=\"hacking\"] g.mark.stop line').getBoundingClientRect().left")
    assert line_x == pytest.approx(x + w, abs=2)
    assert "stopped by train.stop_when" in b.js("document.querySelector('.sub').textContent")
    assert b.errors == []
