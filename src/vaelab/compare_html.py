"""compare.html for `vaelab compare`: the tables, and per-epoch curves (mean line, s.e. band across seeds) drawn
from each run's metrics.jsonl, embedded as base64 PNG so the page stands alone."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .stats import SE_LABEL, mean_se

if TYPE_CHECKING:
    from .compare import Setting

CURVES = [("elbo", "ELBO (nats)"), ("kl", "KL (nats)"), ("rec", "reconstruction E_q[log p(x|z)] (nats)")]


def epoch_band(setting: Setting, key: str) -> tuple[list[int], list[float], list[float]]:
    """Per epoch: the mean of `key` over the setting's runs that reached that epoch, and its s.e. (0 for one)."""
    by_epoch: dict[int, list[float]] = {}
    for run in setting.runs:
        for row in run.history:
            if row.get(key) is not None:
                by_epoch.setdefault(int(row["epoch"]), []).append(float(row[key]))
    epochs = sorted(by_epoch)
    summaries = [mean_se(by_epoch[e]) for e in epochs]
    return epochs, [s.mean for s in summaries], [s.se or 0.0 for s in summaries]


def plot_curve(settings: list[Setting], metric: str, ylabel: str, path: Path) -> Path | None:
    """Valid (solid) and train (dashed) `metric` per epoch, one colour per setting; None when no run has it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=100)
    drawn = False
    for color, setting in zip(plt.cm.tab10.colors * 10, settings, strict=False):
        for split, style in (("valid", "-"), ("train", "--")):
            epochs, mean, se = epoch_band(setting, f"{split}_{metric}")
            if not epochs:
                continue
            drawn = True
            ax.plot(epochs, mean, style, color=color, label=f"{setting.label} ({split}, {len(setting.runs)} seeds)")
            ax.fill_between(epochs, [m - s for m, s in zip(mean, se, strict=True)],
                            [m + s for m, s in zip(mean, se, strict=True)], color=color, alpha=0.2, linewidth=0)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(f"{metric} per epoch: mean across seeds, band {SE_LABEL}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path.with_name(path.stem + ".tmp.png"), bbox_inches="tight")
    plt.close(fig)
    return path.with_name(path.stem + ".tmp.png").replace(path)


def render_html(result: dict[str, Any], tabs: dict[str, list[list[str]]], settings: list[Setting],
                notes: dict[str, str], out: Path) -> str:
    """The whole page; the curve PNGs are also left in `out` (curves_METRIC.png)."""
    from .compare import title

    esc = html.escape
    figs = []
    for metric, ylabel in CURVES:
        path = plot_curve(settings, metric, ylabel, out / f"curves_{metric}.png")
        if path is not None:
            data = base64.b64encode(path.read_bytes()).decode()
            figs.append(f'<figure><img alt="{esc(metric)} per epoch" src="data:image/png;base64,{data}">'
                        f"<figcaption>{esc(metric)} per epoch; solid: validation, dashed: training; shaded: "
                        f"{esc(SE_LABEL)}.</figcaption></figure>")
    parts = [f"<h1>vaelab compare: {esc(title(result))}</h1>",
             f"<p>{esc(notes['grouping'])}</p>", f"<h2>Test set (nats): mean {esc(SE_LABEL)} (N seeds per row)</h2>",
             html_table(tabs["main"]), f"<p>{esc(notes['main'])}</p>"]
    if tabs["quality"]:
        parts += [f"<h2>Sample quality: mean {esc(SE_LABEL)}</h2>", html_table(tabs["quality"])]
    if len(tabs["paired"]) > 1:
        parts += ["<h2>Paired differences over shared seeds: mean [95% t interval]</h2>", html_table(tabs["paired"]),
                  f"<p>{esc(notes['paired'])}</p>"]
    parts += ["<h2>Curves</h2>", *figs]
    if result["notes"]:
        parts += ["<h2>Notes</h2><ul>", *[f"<li>{esc(n)}</li>" for n in result["notes"]], "</ul>"]
    runs = "".join(f"<li>{esc(s['label'])}: {esc(', '.join(s['runs']))}</li>" for s in result["settings"])
    parts += ["<h2>Runs</h2><ul>", runs, "</ul>"]
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
             "figure{display:inline-block;vertical-align:top;max-width:580px;margin:1em}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>vaelab compare</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>")


def html_table(table: list[list[str]]) -> str:
    """An HTML table, the first row as header cells, every cell escaped."""
    return "<table>" + "".join("<tr>" + "".join(f"<{t}>{html.escape(c)}</{t}>" for c in row) + "</tr>"
                               for t, row in (("th" if i == 0 else "td", r) for i, r in enumerate(table))) + \
        "</table>"
