"""compare.html for `vaelab compare`: the tables, and per-epoch curves (mean line, s.e. band across seeds) drawn
from each run's metrics.jsonl, embedded as base64 PNG so the page stands alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from vaelab.core.atomic import atomic_path
from vaelab.core.stats import SE_LABEL, mean_se


class _Run(Protocol):
    @property
    def history(self) -> list[dict[str, Any]]: ...

    @property
    def grad_stats(self) -> list[dict[str, Any]]: ...


class Setting(Protocol):
    """What the page reads of a compare_groups.Setting (compare_groups.py imports this module, so not the class
    itself): its label and its runs' metrics.jsonl rows."""

    @property
    def label(self) -> str: ...

    @property
    def runs(self) -> Sequence[_Run]: ...

CURVES = [("elbo", "ELBO (nats)"), ("kl", "KL (nats)"), ("rec", "reconstruction E_q[log p(x|z)] (nats)")]


# the gradient probe's curve (train.grad_stats_every): DisARM Fig. 5's right column, against steps
GRAD_CURVE = ("log10_grad_var", "log10 encoder-gradient variance (trace, one draw)")


def epoch_band(setting: Setting, key: str) -> dict[str, list]:
    """Per epoch: the mean of `key` over the setting's runs that reached that epoch, its s.e. (0 for one run) and
    that number of runs, as {epoch, mean, se, n} lists (compare.json's `curves`, the plotted band)."""
    return _band([run.history for run in setting.runs], "epoch", key)


def step_band(setting: Setting, key: str) -> dict[str, list]:
    """As epoch_band, per optimisation step of the runs' grad_stats.jsonl rows: {step, mean, se, n}."""
    return _band([run.grad_stats for run in setting.runs], "step", key)


def _band(row_lists: list[list[dict[str, Any]]], x: str, key: str) -> dict[str, list]:
    by_x: dict[int, list[float]] = {}
    for rows in row_lists:
        for row in rows:
            if row.get(key) is not None:
                by_x.setdefault(int(row[x]), []).append(float(row[key]))
    xs = sorted(by_x)
    summaries = [mean_se(by_x[v]) for v in xs]
    return {x: xs, "mean": [s.mean for s in summaries], "se": [s.se or 0.0 for s in summaries],
            "n": [len(by_x[v]) for v in xs]}


def plot_curve(settings: list[Setting], metric: str, ylabel: str, path: Path) -> Path | None:
    """Valid (solid) and train (dashed) `metric` per epoch, one colour per setting; None when no run has it."""
    series = [(i, f"{s.label} ({split}, {len(s.runs)} seeds)", epoch_band(s, f"{split}_{metric}"), style)
              for i, s in enumerate(settings) for split, style in (("valid", "-"), ("train", "--"))]
    return _plot(series, "epoch", ylabel, f"{metric} per epoch: mean across seeds, band {SE_LABEL}", path)


def plot_grad_curve(settings: list[Setting], path: Path) -> Path | None:
    """The gradient probe's log10 variance against steps, one line per setting; None when no run measured it."""
    key, ylabel = GRAD_CURVE
    series = [(i, f"{s.label} ({sum(bool(r.grad_stats) for r in s.runs)} seeds)", step_band(s, key), "-")
              for i, s in enumerate(settings)]
    return _plot(series, "step", ylabel, f"gradient variance during training: mean across seeds, band {SE_LABEL}",
                 path)


def _plot(series: list[tuple[int, str, dict[str, list], str]], x: str, ylabel: str, title: str,
          path: Path) -> Path | None:
    """Mean lines with s.e. bands: series of (colour index, label, band, line style); None when all are empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    series = [s for s in series if s[2][x]]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=100)
    colors = plt.cm.tab10.colors
    for index, label, band, style in series:
        xs, mean, se = band[x], band["mean"], band["se"]
        color = colors[index % len(colors)]
        ax.plot(xs, mean, style, color=color, label=label)
        ax.fill_between(xs, [m - s for m, s in zip(mean, se, strict=True)],
                        [m + s for m, s in zip(mean, se, strict=True)], color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel(x)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
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
    from vaelab.viz.html_page import figure, grid, note, render_page, table
    from vaelab.viz.html_page import notes as note_list

    figs = []
    for metric, ylabel in CURVES:
        path = plot_curve(settings, metric, ylabel, out / f"curves_{metric}.png")
        if path is not None:
            figs.append(figure(path, f"{metric} per epoch; solid: validation, dashed: training; shaded: "
                                     f"{SE_LABEL}.", alt=f"{metric} per epoch"))
    path = plot_grad_curve(settings, out / "curves_grad_var.png")
    if path is not None:
        figs.append(figure(path, "Encoder-gradient variance on the step's batch (train.grad_stats_every), log10; "
                                 f"shaded: {SE_LABEL}.", alt="gradient variance against steps"))
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
