"""`vaelab list` without importing torch: the registries' names, one-line summaries and fits, read from the static
tables that the config layer owns (config/names.py; tests/test_config_leaf.py checks them against the live
registries)."""

from __future__ import annotations

from vaelab.config.names import (
    ESTIMATOR_ROWS,
    HAND_WRITTEN,
    HAND_WRITTEN_ACTIVATIONS,
    LATENT_ROWS,
    NET_NAMES,
    presets,
)


def live_tables() -> tuple[tuple, tuple, tuple]:
    """(LATENT_ROWS, ESTIMATOR_ROWS, NET_NAMES) read from the registries themselves (imports torch)."""
    from vaelab.config.names import live_tables as live

    tables = live()
    return tables["LATENT_ROWS"], tables["ESTIMATOR_ROWS"], tables["NET_NAMES"]


def listing(latents: tuple = LATENT_ROWS, estimators: tuple = ESTIMATOR_ROWS, nets: tuple = NET_NAMES) -> str:
    """What `vaelab list` prints (ending in a newline)."""
    lines = ["latent families (model.latent):"]
    lines += [f"  {name:16s} {text}" for name, text in latents]
    lines.append("estimators (estimator.name), and the latent families each fits:")
    for name, text, fits in estimators:
        lines += [f"  {name:16s} {text}", f"  {'':16s} fits: {', '.join(fits) or 'none'}"]
        if name in HAND_WRITTEN:
            lines.append(f"  {'':16s} hand-written step on a CPU (train.backward: auto): {HAND_WRITTEN[name]} latents, "
                         f"mlp nets with {', '.join(HAND_WRITTEN_ACTIVATIONS)}")
    lines.append(f"networks (model.nets): {', '.join(nets)}")
    lines.append(f"presets (vaelab train NAME): {', '.join(presets())}")
    return "\n".join(lines) + "\n"
