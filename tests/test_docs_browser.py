"""The built documentation site in a real browser: headless Chromium (found on PATH) driven by Playwright opens
the home page and the Python API page from a local HTTP server, as a reader would. Both render with their
navigation, without console errors and without a request outside the site (no web fonts, no CDN); the home
page's link leads to the API page; the API page shows `fit` and `Run.log_prob` with their docstrings. A screenshot
of each is left as an artefact ($VAELAB_ARTIFACTS, default reports/test-artifacts/).

No verdict depends on speed (pages are awaited on load events and DOM conditions; the bounds only matter if the
browser hangs). Skipped, with the reason, when no browser, no Playwright or no mkdocs is installed (`make
browser-test` installs a browser; `make venv` installs the docs extra)."""

from __future__ import annotations

import pytest
from conftest import serve_folder
from helpers import BROWSER, BROWSERS, HANG, artifact_dir, build_site

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(BROWSER is None, reason=f"no browser on PATH (looked for {', '.join(BROWSERS)}); "
                                 "`make browser-test` installs Chromium")]
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def site_url(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    build = build_site(out)
    assert build.returncode == 0, build.stderr[-3000:]
    with serve_folder(out) as (base, _):
        yield base.rstrip("/")


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=BROWSER, timeout=HANG)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        tab = context.new_page()
        tab.set_default_timeout(HANG)
        tab.errors = []
        tab.on("console", lambda m: tab.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        tab.on("pageerror", lambda e: tab.errors.append(f"uncaught: {e}"))
        tab.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "data:")) else
               tab.errors.append(f"request outside the site: {r.url}"))
        yield tab
        browser.close()


def test_home_page_renders_and_leads_to_the_api_reference(page, site_url):
    page.goto(f"{site_url}/index.html", wait_until="load")
    assert page.title().startswith("vaelab")
    assert page.locator("article h1").first.inner_text().strip().removesuffix("¶") == "vaelab"
    assert page.locator("article pre code").count() >= 2                        # install commands, Python
    nav = page.locator("nav.md-nav--primary a.md-nav__link").all_inner_texts()
    assert {"Tutorial", "Python API", "Command line", "Results"} <= {t.strip() for t in nav}, nav
    page.screenshot(path=str(artifact_dir() / "docs_home.png"), full_page=True)
    page.locator("article a", has_text="Python API").first.click()
    page.wait_for_url("**/reference/api.html")
    assert page.errors == []


def test_api_page_shows_the_functions_with_their_docstrings(page, site_url):
    page.goto(f"{site_url}/reference/api.html", wait_until="load")
    fit = page.locator('[id="vaelab.api.fit"]')
    assert fit.is_visible() and "fit" in fit.inner_text()
    log_prob = page.locator('[id="vaelab.api.Run.log_prob"]')
    log_prob.scroll_into_view_if_needed()
    assert log_prob.is_visible()
    body = page.locator("article").inner_text()
    assert "importance-weighted" in body and "x_train" in body                   # docstrings, not just names
    page.screenshot(path=str(artifact_dir() / "docs_api.png"), full_page=False)
    assert page.errors == []
