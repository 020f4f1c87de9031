"""report.html in a real browser: headless Chromium (found on PATH) driven by Playwright through the DevTools
protocol. Every image loads, nothing is logged as an error, the latent map answers pointer moves by showing the
decode of the grid point under the pointer, the page degrades to static figures without JavaScript, and a
full-page screenshot is left as an artefact ($VAELAB_ARTIFACTS, default reports/test-artifacts/).

No verdict depends on speed: pages are awaited on their load event and DOM conditions, whose generous bounds only
matter if the browser hangs. Skipped, with the reason, when no browser or no Playwright is installed
(`make browser-test` installs both and runs this file).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import BROWSER, BROWSERS, HANG, artifact_dir, build_study

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(BROWSER is None, reason=f"no browser on PATH (looked for {', '.join(BROWSERS)}); "
                                 "`make browser-test` installs Chromium and runs this test")]
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return build_study(tmp_path_factory) / "report.html"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=BROWSER, timeout=HANG)
        yield chromium
        chromium.close()


def open_page(browser, report: Path, javascript: bool = True):
    """A 1280-wide page with the report loaded; console errors and uncaught exceptions collected in page.errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, java_script_enabled=javascript)
    page = context.new_page()
    page.set_default_timeout(HANG)
    page.errors = []
    page.on("console", lambda m: page.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(f"uncaught: {e}"))
    page.goto(report.as_uri(), wait_until="load")
    return page


def images(page) -> list[dict]:
    return page.evaluate("Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, "
                         "width: i.naturalWidth, shown: i.getBoundingClientRect().width}))")


def move_to_cell(page, row: int, col: int) -> dict:
    """Move the pointer (CDP mouse events) to grid point (row, col) of the map; returns what the map then shows."""
    geometry = page.evaluate("""() => { const m = document.querySelector('.latent-map');
        const r = m.querySelector('.lm-plane').getBoundingClientRect();
        return {n: +m.dataset.n, box: m.dataset.box.split(',').map(Number), left: r.left, top: r.top,
                width: r.width, height: r.height}; }""")
    n, (left, top, width, height) = geometry["n"], geometry["box"]
    x = geometry["left"] + geometry["width"] * (left + width * col / (n - 1))
    y = geometry["top"] + geometry["height"] * (top + height * row / (n - 1))
    page.mouse.move(x, y)
    page.wait_for_function(f"document.querySelector('.lm-view').dataset.cell === '{row},{col}'")
    return page.evaluate("""() => { const v = document.querySelector('.lm-view');
        return {cell: v.dataset.cell, position: v.style.backgroundPosition,
                z: document.querySelector('.lm-z').textContent}; }""")


def test_report_in_headless_chromium(browser, report):
    page = open_page(browser, report)
    assert page.errors == []                          # fails fast on a script error at load time
    shown = images(page)
    assert len(shown) >= 20
    assert all(i["complete"] and i["width"] > 0 and i["shown"] > 0 for i in shown), shown
    n = page.evaluate("+document.querySelector('.latent-map').dataset.n")
    page.locator(".latent-map").scroll_into_view_if_needed()
    first, second = move_to_cell(page, 2, 3), move_to_cell(page, n - 3, n - 5)
    assert first["position"] != second["position"] and first["z"] != second["z"]
    for (row, col), shown_now in (((2, 3), first), ((n - 3, n - 5), second)):   # the sprite's tile (row, col)
        x, y = (float(v.rstrip("%")) for v in shown_now["position"].split())
        assert x == pytest.approx(100 * col / (n - 1)) and y == pytest.approx(100 * row / (n - 1))
    assert page.evaluate("getComputedStyle(document.querySelector('.lm-view')).backgroundImage").startswith(
        'url("data:image/png;base64,')
    shot = artifact_dir() / "report_screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000
    assert page.errors == []
    page.context.close()


def test_without_javascript_the_map_is_a_static_figure(browser, report):
    page = open_page(browser, report, javascript=False)
    assert all(i["complete"] and i["width"] > 0 for i in images(page))
    visible = page.evaluate("""() => ['.lm-bg', '.lm-sprite', '.lm-view', '.lm-mark'].map(s =>
        document.querySelector(s).getBoundingClientRect().width > 0)""")
    assert visible == [True, True, False, False]      # the plane and the decoded grid; no viewer, no marker
    assert page.errors == []
    page.context.close()
