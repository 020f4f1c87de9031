"""The documentation: the site builds with `mkdocs build --strict` (every warning an error), its CLI reference
holds every command the parser has, every relative link in the README and docs/ names a file inside the
repository, and the README stays short."""

from __future__ import annotations

import html as html_lib
import re
from pathlib import Path

import pytest
from helpers import build_site

from vaelab.cli.main import parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    build = build_site(out)
    assert build.returncode == 0, build.stderr[-3000:]
    return out


def test_site_builds_strictly_with_every_page(site):
    for page in ("index.html", "tutorial.html", "guide/python.html", "howto/own-data.html",
                 "howto/new-estimator.html", "howto/sweeps.html", "howto/multi-gpu.html", "reference/cli.html",
                 "reference/api.html", "reference/errors.html", "results.html", "architecture.html"):
        assert (site / page).is_file(), page


def test_cli_reference_is_generated_from_the_parsers(site):
    html = (site / "reference" / "cli.html").read_text()
    top = parser()
    (choices,) = [a.choices for a in top._actions if hasattr(a, "choices") and isinstance(a.choices, dict)]
    for name in choices:
        assert f"vaelab {name}" in html and f"usage: vaelab {name}" in html, name
    assert "--iw-samples" in html and "--quality-samples" in html and "<!-- cli-reference -->" not in html


def test_api_reference_documents_the_run_methods(site):
    html = (site / "reference" / "api.html").read_text()
    for name in ("fit", "load", "Run.encode", "Run.reconstruct", "Run.log_prob", "Run.save_grid", "Run.sample"):
        assert f'id="vaelab.api.{name}"' in html, name


def test_results_page_includes_results_md_unchanged(site):
    html = (site / "results.html").read_text()
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    tables = sum(line.startswith("|---") for line in results.splitlines())
    assert html.count("<table>") == tables > 10
    headings = [line[3:].split(":")[0] for line in results.splitlines() if line.startswith("## ")]
    text = html_lib.unescape(html)
    assert len(headings) > 5 and all(h in text for h in headings), [h for h in headings if h not in text]
    assert "-133.62 ± 0.04" in results and "-133.62 ± 0.04" in html


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_stay_inside_the_repository(page):
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            pytest.fail(f"{page.name} links outside the repository: {target}")
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), f"{page.name}: {target}"


def test_readme_is_short_and_speaks_to_the_reader():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 120
    for phrase in ("shared/seed", "lent GPU", "could not be read here", "on this 2-core CPU", "3 min 31 s"):
        assert phrase not in text, phrase
    assert "## Results beside the papers" in text and "make demo" in text and "make test" in text


def test_the_package_description_has_no_link_into_the_source_tree():
    """The wheel's long description (pyproject's `readme`) is shown on the package index, where a relative link
    leads nowhere: every link in it is absolute, and the file ships in the source distribution's root."""
    import tomllib

    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    text = (ROOT / readme).read_text()
    relative = [t for t in LINK.findall(text) if not t.startswith(("http://", "https://", "#"))]
    assert not relative, f"{readme} links into the source tree: {relative}"
    assert "vaelab.fit(" in text and "vaelab train" in text
