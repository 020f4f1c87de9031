"""compare.html for `vaelab compare`: the tables, and per-epoch curves (mean line, s.e. band across seeds) drawn
from each run's metrics.jsonl, embedded as base64 PNG so the page stands alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from .atomic import atomic_path
from .stats import SE_LABEL, mean_se


class _Run(Protocol):
    @property
    def history(self) -> list[dict[str, Any]]: ...


class Setting(Protocol):
    """What the page reads of a compare.Setting (compare.py imports this module, so not the class itself): its
    label and its runs' metrics.jsonl rows."""

    @property
    def label(self) -> str: ...

    @property
    def runs(self) -> Sequence[_Run]: ...

CURVES = [("elbo", "ELBO (nats)"), ("kl", "KL (nats)"), ("rec", "reconstruction E_q[log p(x|z)] (nats)")]


def epoch_band(setting: Setting, key: str) -> dict[str, list]:
    """Per epoch: the mean of `key` over the setting's runs that reached that epoch, its s.e. (0 for one run) and
    that number of runs, as {epoch, mean, se, n} lists (compare.json's `curves`, the plotted band)."""
    by_epoch: dict[int, list[float]] = {}
    for run in setting.runs:
        for row in run.history:
            if row.get(key) is not None:
                by_epoch.setdefault(int(row["epoch"]), []).append(float(row[key]))
    epochs = sorted(by_epoch)
    summaries = [mean_se(by_epoch[e]) for e in epochs]
    return {"epoch": epochs, "mean": [s.mean for s in summaries], "se": [s.se or 0.0 for s in summaries],
            "n": [len(by_epoch[e]) for e in epochs]}


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
            band = epoch_band(setting, f"{split}_{metric}")
            epochs, mean, se = band["epoch"], band["mean"], band["se"]
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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def render_html(result: dict[str, Any], tabs: dict[str, list[list[str]]], settings: list[Setting],
                notes: dict[str, str], out: Path, title: str) -> str:
    """The whole page titled `title`, through the report's renderer (page.render_page); the curve PNGs are also
    left in `out` (curves_METRIC.png)."""
    from .page import figure, grid, note, render_page, table
    from .page import notes as note_list

    figs = []
    for metric, ylabel in CURVES:
        path = plot_curve(settings, metric, ylabel, out / f"curves_{metric}.png")
        if path is not None:
            figs.append(figure(path, f"{metric} per epoch; solid: validation, dashed: training; shaded: "
                                     f"{SE_LABEL}.", alt=f"{metric} per epoch"))
    sections = [(f"Test set (nats): mean {SE_LABEL} (N seeds per row)", [table(tabs["main"]), note(notes["main"])])]
    if tabs["quality"]:
        sections.append((f"Sample quality: mean {SE_LABEL}", [table(tabs["quality"])]))
    if len(tabs["paired"]) > 1:
        sections.append(("Paired differences over shared seeds: mean [95% t interval]",
                         [table(tabs["paired"]), note(notes["paired"])]))
    sections.append(("Curves", [grid(*figs)] if figs else [note("no run has per-epoch metrics")]))
    if result["notes"]:
        sections.append(("Notes", [note_list(result["notes"])]))
    sections.append(("Runs", [note_list([f"{s['label']}: {', '.join(s['runs'])}" for s in result["settings"]])]))
    return render_page(f"vaelab compare: {title}", sections, intro=notes["grouping"])
