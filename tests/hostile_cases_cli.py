"""Hostile command lines and configs of issue 27 (empty values, control characters in a name, out-of-range estimator
and optimizer settings, absurd schedule lengths and sweep sizes, a resume that would shorten a run, a study refused
after creating its folder): the table test_hostile.py runs, each case one line, exit code 2 and the workspace as it
was."""

from __future__ import annotations

from pathlib import Path

from hostile_helpers import CONFIG, SMALL, Case, cmd, config_file, in_ws, setting, train_new

from vaelab.cli.main import main

BERNOULLI = ("--set", "model.latent=bernoulli")
LEARNED_PRIOR = (*BERNOULLI, "--set", "estimator.name=disarm", "--set", "model.latent_kwargs={learn_prior: true}")


def nvil(kwargs: str):
    return train_new(*BERNOULLI, "--set", "estimator.name=nvil", "--set", f"estimator.kwargs={kwargs}")


def prior_group(group: str):
    return train_new(*LEARNED_PRIOR, "--set", f"train.param_groups={{prior: {group}}}")


def numbers(n: int) -> str:
    return "[" + ", ".join(str(i) for i in range(1, n + 1)) + "]"


def sweep_spec(body: str):
    """A sweep spec over the digits preset in the workspace, listed (`--list`: nothing trains even if it passed)."""
    text = f"base: gaussian_vae\nset: {{data.source: digits, train.epochs: 1}}\n{body}\n".encode()
    return in_ws("s.yaml", text, "sweep", "WS/s.yaml", "--out", "WS/sweep", "--list")


GRID_10_12 = "grid:\n" + "".join(f"  {key}: {numbers(1000)}\n" for key in (
    "train.lr", "train.batch_size", "model.latent_dim", "train.log_every"))


def trained_two_epochs(*args: str):
    """The run copy extended to 2 epochs (before the workspace is snapshotted), then `args` on it."""
    def make(ws: Path, run: Path) -> list:
        assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
        return cmd(*args)(ws, run)
    return make


CASES = [
    # empty values on the command line
    Case("train-estimator-empty", train_new("--estimator", ""), "argument --estimator: an empty value: give an "
         "estimator name"),
    Case("train-device-empty", train_new("--device", ""), "argument --device: an empty value"),
    Case("train-device-blank", train_new("--device", "  "), "argument --device: an empty value"),
    Case("train-data-empty", train_new(data=""), "argument --data: an empty value: give a data source name or a PATH"),
    Case("train-out-empty", cmd("train", CONFIG, "--data", "digits", "--out", "", *SMALL),
         "argument --out: an empty value: give a run directory"),
    Case("resume-empty", cmd("train", "--resume", ""), "argument --resume: an empty value"),
    Case("gradvar-estimators-empty", cmd("gradvar", "RUN", "--estimators", ""), "argument --estimators: an empty"),
    Case("gradvar-estimators-commas", cmd("gradvar", "RUN", "--estimators", " , ,"), "names no estimator"),
    Case("gradvar-out-empty", cmd("gradvar", "RUN", "--out", ""), "argument --out: an empty value"),
    Case("reproduce-out-empty", cmd("reproduce", "--out", ""), "argument --out: an empty value"),
    Case("reproduce-data-empty", cmd("reproduce", "--out", "WS/rep", "--data", ""), "argument --data: an empty"),
    # a config name with a control character
    Case("config-name-nul", config_file(b'name: "a\\0b"\n'), "name = 'a\\x00b' holds a control character"),
    Case("config-name-escape", config_file(b'name: "a\\eb"\n'), "holds a control character or line break"),
    Case("config-name-delete", config_file(b'name: "a\\x7fb"\n'), "holds a control character"),
    Case("config-name-line-separator", config_file(b'name: "a\\u2028b"\n'), "holds a control character"),
    Case("config-name-newline", config_file(b'name: "a\\nb"\n'), "holds a control character"),
    # estimator settings out of range
    Case("nvil-decay-50", nvil("{decay: 50}"), "estimator.kwargs.decay = 50 must be a finite number in [0, 1)"),
    Case("nvil-decay-1", nvil("{decay: 1.0}"), "estimator.kwargs.decay = 1.0 must be a finite number in [0, 1)"),
    Case("nvil-decay-negative", nvil("{decay: -0.5}"), "estimator.kwargs.decay = -0.5"),
    # absurd schedule lengths
    Case("warmup-epochs-absurd", setting("train.kl_weight={kind: linear, warmup_epochs: 1.0e+308}"),
         "train.kl_weight.warmup_epochs = 1e+308 is longer than any run (the bound is 10^9 epochs)"),
    Case("warmup-steps-absurd", setting("train.kl_weight={kind: linear, warmup_steps: 1.0e+13}"),
         "(the bound is 10^12 steps)"),
    Case("cycle-epochs-absurd", setting("train.kl_weight={kind: cyclical, cycle_epochs: 1.0e+300}"),
         "train.kl_weight.cycle_epochs = 1e+300 is longer than any run"),
    # optimizer settings of a parameter group
    Case("group-momentum-negative", prior_group("{optimizer: sgd, lr: 0.01, momentum: -1}"),
         "train.param_groups.prior.momentum = -1 must be a finite number in [0, 1)"),
    Case("group-momentum-string", prior_group("{optimizer: sgd, lr: 0.01, momentum: fast}"),
         "train.param_groups.prior.momentum = 'fast' must be"),
    Case("group-momentum-1", prior_group("{optimizer: sgd, lr: 0.01, momentum: 1}"), "momentum = 1 must be"),
    Case("group-eps-negative", prior_group("{optimizer: adam, lr: 0.01, eps: -1}"),
         "train.param_groups.prior.eps = -1 must be a finite number > 0"),
    Case("group-eps-string", prior_group("{optimizer: adam, lr: 0.01, eps: tiny}"),
         "train.param_groups.prior.eps = 'tiny' must be"),
    Case("group-burda-eps-zero", prior_group("{optimizer: burda_adam, eps: 0}"), "prior.eps = 0 must be"),
    # sweeps sized before they are built
    Case("sweep-seeds-absurd", sweep_spec("seeds: 1000000000000"),
         "seeds = 1,000,000,000,000: more than the 10,000 runs one sweep may hold"),
    Case("sweep-grid-absurd", sweep_spec(GRID_10_12),
         "grid expands to 1,000,000,000,000 settings, more than the 10,000 runs"),
    Case("sweep-grids-union-absurd", sweep_spec(
        f"grid:\n  - {{train.lr: {numbers(6000)}}}\n  - {{train.batch_size: {numbers(6000)}}}"),
         "grid expands to 12,000 settings"),
    Case("sweep-settings-times-seeds", sweep_spec(f"grid: {{train.batch_size: {numbers(200)}}}\nseeds: 100"),
         "200 settings x 100 seeds = 20,000 runs, more than the 10,000"),
    # a resume that would shorten a run
    Case("resume-fewer-epochs", trained_two_epochs("train", "--resume", "RUN", "--epochs", "1", "--quiet"),
         "has trained 2 epochs; --epochs 1 would train none and record fewer than it holds: give --epochs >= 2 "
         "or omit it"),
    # a study refused before its folder exists
    Case("reproduce-device-mps", cmd("reproduce", "--quick", "--device", "mps", "--out", "WS/D"),
         "train.device = 'mps' is not a device"),
    Case("reproduce-bad-set", cmd("reproduce", "--quick", "--out", "WS/D", "--set", "train.lr=-1"), "train.lr = -1"),
    # stacked seeds: a lone number reads two ways; a range is sized before it is built
    Case("stack-seeds-lone-number", cmd("stack", CONFIG, "--seeds", "5", "--out", "WS/S"),
         "--seeds 5: a lone number is ambiguous"),
    Case("stack-seeds-huge-range", cmd("stack", CONFIG, "--seeds", "0-1000000000000", "--out", "WS/S"),
         "names more than 1,024 seeds"),
]
