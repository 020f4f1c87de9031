"""`vaelab gradvar`: load a run or build a config's model, pick a fixed batch, warm up the estimators and measure
their gradients (`gradvar`, with the numbers from evaluation/gradvar.py), and the text table of the result
(`format_table`). The figure of the same result is viz/gradvar_plot.py's `plot_gradvar`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vaelab.core.errors import VaelabError
from vaelab.evaluation.gradvar import diagnose, warm_up


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width text table of `diagnose`'s rows, with the reference line on top."""
    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4g}"

    head = f"{'estimator':<10} {'unbiased':>8} {'variance':>11} {'bias':>10} {'noise fl.':>10} {'rel.bias':>9} " \
           f"{'cosine':>7} {'s/draw':>8}"
    lines = [result["reference"], f"|exact gradient| = {result['target_norm']:.4g} over {result['n_params']} "
             f"{result['params']} parameters, batch {result['batch']}, {result['draws']} draws", head]
    for r in result["rows"]:
        lines.append(f"{r['estimator']:<10} {str(r['unbiased']):>8} {num(r['variance']):>11} {num(r['bias_norm']):>10} "
                     f"{num(r['bias_noise_floor']):>10} {num(r['relative_bias']):>9} {num(r['cosine']):>7} "
                     f"{r['seconds_per_draw']:>8.4f}")
    return "\n".join(lines)


def gradvar(source: str, names: list[str], draws: int = 1000, batch: int | None = None, warmup: int = 100,
            overrides: Sequence[str] = (), device: str = "auto", seed: int = 0,
            data_source: str | None = None, progress: bool = False) -> tuple[dict[str, Any], str]:
    """`vaelab gradvar`: load a run (trained parameters) or build a config's model (initial parameters), take a
    fixed binarized training batch, warm up fresh estimators' state, and `diagnose`. Returns (result, out dir):
    RUN/gradvar, or runs/<name>/gradvar with the config's name as `vaelab train` gives it (`config.name_variant`)."""
    from pathlib import Path

    from vaelab.config.schema import load_config
    from vaelab.data.binarize import binarize
    from vaelab.estimators.pathwise import build_estimator
    from vaelab.runs.device_data import prepare_data
    from vaelab.runs.loaded_run import build, open_run
    from vaelab.runtime.hardware import resolve_device

    path = Path(source)
    if path.is_dir():
        if overrides:
            raise VaelabError("gradvar on a run uses the run's own config: drop --set (or give a config file)")
        run = open_run(path, device, data_source)
        cfg, model, data, own = run.cfg, run.model, run.data, {run.cfg.estimator.name: run.estimator}
        out = path / "gradvar"
    else:
        cfg = load_config(path, [*overrides, *([f"data.source={data_source}"] if data_source else [])], named=True)
        dev = resolve_device(device)
        data = prepare_data(cfg.data, dev)
        model, _ = build(cfg, data, dev)
        own, out = {}, Path("runs") / cfg.name / "gradvar"
    torch.manual_seed(seed)
    gen = torch.Generator(data.x_train.device).manual_seed(seed)
    x = data.x_train[: batch or cfg.train.batch_size]
    x = binarize(x, "dynamic", gen) if data.binarize == "dynamic" else x
    estimators = {}
    for name in names:
        if name in own:
            estimators[name] = own[name]
            continue
        kwargs = cfg.estimator.kwargs if name == cfg.estimator.name else {}
        estimators[name] = build_estimator(name, kwargs, model).to(x.device)
        warm_up(estimators[name], model, x, warmup)
    result = diagnose(estimators, model, x, draws, progress=progress)
    result |= {"source": str(source), "config": cfg.name, "warmup_steps": warmup, "seed": seed,
               "trained_state_from_run": sorted(set(own) & set(names))}   # these were not warmed up
    return result, str(out)
