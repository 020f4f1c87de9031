"""`compare()`, what `vaelab compare` runs (cli/compare.py says what it does): the runs under some paths found and
loaded (compare_runs), grouped into settings with their statistics (compare_groups), as tables and markdown
(compare_tables) and, with `out`, written as compare.md, compare.json and compare.html (compare_html).
"""

from __future__ import annotations

import json
from pathlib import Path

from vaelab.core.atomic import atomic_write_text
from vaelab.experiments.compare_groups import group, grouping_keys, summarize
from vaelab.experiments.compare_html import render_html
from vaelab.experiments.compare_runs import find_runs, load_run
from vaelab.experiments.compare_tables import notes_text, render_md, tables, title


def compare(paths: list[str | Path], by: list[str] | None = None, out: str | Path | None = None) -> str:
    """Compare the runs under `paths`; returns the markdown; with `out` also writes compare.{md,json,html}."""
    runs = [load_run(p) for p in find_runs(paths)]
    keys = grouping_keys(runs, list(by or []))
    settings = group(runs, keys)
    result = summarize(settings, runs, keys)
    tabs = tables(result, runs)
    md = render_md(result, tabs)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "compare.json", json.dumps(result, indent=2, default=str) + "\n")
        atomic_write_text(out / "compare.md", md)
        atomic_write_text(out / "compare.html", render_html(result, tabs, settings, notes_text(result), out,
                                                           title(result)))
    return md

