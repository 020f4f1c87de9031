"""The figure of `vaelab gradvar`'s result: log10 gradient variance and bias norm per estimator. It draws the
result dict that evaluation/gradvar_run.py's `gradvar` returns and gradvar.json holds (plain data)."""

from __future__ import annotations

from typing import Any


def plot_gradvar(result: dict[str, Any], path) -> None:
    """Bar chart of log10 gradient variance per estimator, with bias norm and its noise floor beside it."""
    import matplotlib.pyplot as plt

    from vaelab.viz.plots import save_figure

    rows = result["rows"]
    names = [r["estimator"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax1.bar(names, [r["variance"] for r in rows], color=["C0" if r["unbiased"] else "C3" for r in rows])
    ax1.set_yscale("log")
    ax1.set_title("gradient variance, trace of covariance (red: biased)", fontsize=9)
    bias = [r["bias_norm"] if r["bias_norm"] is not None else float("nan") for r in rows]
    floor = [r["bias_noise_floor"] if r["bias_noise_floor"] is not None else float("nan") for r in rows]
    ax2.bar(names, bias, color="C1", label="|mean - target|")
    ax2.plot(names, floor, "k_", markersize=14, label="noise floor")
    ax2.set_yscale("log")
    ax2.set_title("bias norm against the target", fontsize=9)
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    fig.suptitle(result["reference"], fontsize=8)
    save_figure(fig, path)
