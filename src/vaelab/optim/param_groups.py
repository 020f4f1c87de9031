"""`train.param_groups`: the groups a parameter can join, the optimizers a group can have and their settings, and
the one check of a param_groups mapping. Imports no torch, so the config layer checks a config with it before
anything is built (config/checks.py), and optimizers.py builds the groups from the same tables."""

from __future__ import annotations

from typing import Any

from vaelab.core.errors import VaelabError, check_number

GROUPS = {"prior": "model.latent.prior_logits", "encoder": "model.encoder.", "decoder": "model.decoder.",
          "latent": "model.latent.", "control": "estimator."}
OPTIMIZERS = ("adam", "sgd", "burda_adam")   # burda_adam: the IWAE code's Adam (optim/burda_adam.py)
GROUP_KEYS = {"adam": ("optimizer", "lr", "betas", "eps"), "sgd": ("optimizer", "lr", "momentum"),
              "burda_adam": ("optimizer", "lr", "betas", "eps")}


def check_param_groups(groups: dict[str, Any]) -> None:
    """Refuse an unknown group, optimizer or setting, or a value out of range, before anything is built."""
    for name, spec in groups.items():
        where = f"train.param_groups.{name}"
        if name not in GROUPS:
            raise VaelabError(f"{where}: unknown group; choose from {', '.join(GROUPS)}")
        if not isinstance(spec, dict):
            raise VaelabError(f"{where} must be a mapping such as {{optimizer: sgd, lr: 0.01}}")
        kind = spec.get("optimizer", "adam")
        if kind not in OPTIMIZERS:
            raise VaelabError(f"{where}.optimizer={kind!r}: choose {', '.join(OPTIMIZERS)}")
        unknown = set(spec) - set(GROUP_KEYS[kind])
        if unknown:
            raise VaelabError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))} for {kind}; valid: "
                              f"{', '.join(GROUP_KEYS[kind])}")
        check_number(f"{where}.lr", spec.get("lr", 1.0), 0, open_lo=True, fix="e.g. lr: 0.01")
        if "eps" in spec:
            check_number(f"{where}.eps", spec["eps"], 0, open_lo=True, fix="e.g. eps: 1.0e-8")
        if "momentum" in spec:
            check_number(f"{where}.momentum", spec["momentum"], 0, 1, open_hi=True,
                         fix="e.g. momentum: 0.9, or 0 for plain SGD")
        betas = spec.get("betas", [0.9, 0.999])
        if not (isinstance(betas, list | tuple) and len(betas) == 2):
            raise VaelabError(f"{where}.betas = {betas!r} must be two numbers in [0, 1): e.g. betas: [0.9, 0.999]")
        for i, beta in enumerate(betas):
            check_number(f"{where}.betas[{i}]", beta, 0, 1, open_hi=True, fix="e.g. betas: [0.9, 0.999]")
