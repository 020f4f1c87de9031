"""KL weight schedules beta(step) for the trained objective E_q[log p(x|z)] - beta * KL (`train.kl_weight`), and
learning-rate schedules lr(epoch) = train.lr * factor(epoch) (`train.lr_schedule`).

A schedule is a small mapping in the config, for example
  {}                                                     constant 1: the plain ELBO
  {kind: constant, beta: 4.0}                            beta-VAE (Higgins et al. 2017)
  {kind: linear, start: 0.0, beta: 1.0, warmup_steps: 5000}   KL warm-up (Bowman et al. 2016)
  {kind: cyclical, beta: 1.0, cycle_epochs: 10, ratio: 0.5, cycles: 4}   cyclical annealing (Fu et al. 2019)
Durations are given in optimizer steps (`*_steps`) or in epochs (`*_epochs`, converted with the steps per epoch).
Only training sees beta: the reported ELBO and every evaluation are always the true ELBO (beta = 1).

Learning-rate schedules change the rate at epoch boundaries, a pure function of the epoch (so a resumed run
continues on the same schedule):
  {}                                   constant train.lr
  {kind: exponential, gamma: 0.99}     train.lr * gamma^epoch
  {kind: iwae}                         Burda et al. 2016, section 5: 3^i epochs at train.lr * 10^(-i/7), i = 0..7
  {kind: iwae, rounded: true}          the same with 10^(1-i/7) rounded to one decimal, as the authors' code
                                       (yburda/iwae experiments.py: lr = 1e-4 * round(10^(1-i/7), 1))
  {kind: multistep, milestones: [200, 350], gamma: 0.630957}   train.lr * gamma^(milestones passed)
                                       (torch.optim.lr_scheduler.MultiStepLR stepped once an epoch)
                                       (3,280 epochs), then the last rate
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from vaelab.core.errors import VaelabError, check_number

Schedule = Callable[[int], float]
DURATION_STEPS_MAX = 10**12     # a warm-up or cycle length in steps: longer than any run (10^6 steps a day for
DURATION_EPOCHS_MAX = 10**9     # 2,700 years), so a larger one is a typo; in epochs, as `reproduce --epochs`


def _duration(spec: dict[str, Any], name: str, steps_per_epoch: int | None) -> int:
    """The length `name` in steps, from `{name}_steps` or `{name}_epochs` (exactly one of them must be given)."""
    given = [k for k in (f"{name}_steps", f"{name}_epochs") if k in spec]
    if len(given) != 1:
        raise VaelabError(f"train.kl_weight of kind {spec['kind']!r} needs exactly one of {name}_steps or "
                          f"{name}_epochs: set one, e.g. {name}_steps: 5000")
    value, epochs = spec[given[0]], given[0].endswith("_epochs")
    check_number(f"train.kl_weight.{given[0]}", value, 0, open_lo=True, fix=f"e.g. {given[0]}: 5000")
    if value > (DURATION_EPOCHS_MAX if epochs else DURATION_STEPS_MAX):
        raise VaelabError(f"train.kl_weight.{given[0]} = {value!r} is longer than any run (the bound is "
                          f"{'10^9 epochs' if epochs else '10^12 steps'}): give the length of the warm-up or cycle, "
                          f"e.g. {given[0]}: {10 if epochs else 5000}")
    if epochs:
        if not steps_per_epoch:
            raise VaelabError(f"train.kl_weight.{given[0]} needs the steps per epoch: give {name}_steps instead")
        value *= steps_per_epoch
    return max(1, round(value))


def _weight(spec: dict[str, Any], key: str, default: float) -> float:
    """A non-negative finite weight from the spec."""
    value = spec.get(key, default)
    check_number(f"train.kl_weight.{key}", value, 0, fix=f"e.g. {key}: {default}")
    return float(value)


def _constant(spec: dict[str, Any], steps_per_epoch: int | None) -> Schedule:
    """beta everywhere; beta != 1 is the beta-VAE objective (Higgins et al. 2017)."""
    beta = _weight(spec, "beta", 1.0)
    return lambda step: beta


def _linear(spec: dict[str, Any], steps_per_epoch: int | None) -> Schedule:
    """start + (beta - start) * min(1, step / warmup): KL warm-up (Bowman et al. 2016, section 3.1)."""
    beta, start = _weight(spec, "beta", 1.0), _weight(spec, "start", 0.0)
    warmup = _duration(spec, "warmup", steps_per_epoch)
    return lambda step: start + (beta - start) * min(1.0, step / warmup)


def _cyclical(spec: dict[str, Any], steps_per_epoch: int | None) -> Schedule:
    """Repeated warm-ups: tau = (step mod L) / L, beta(tau) = start + (beta - start) * min(1, tau / R).

    Fu et al. (2019), eq. 5, with cycle length L = T / M and ratio R; after `cycles` (M) cycles, if given,
    the weight stays at beta.
    """
    beta, start = _weight(spec, "beta", 1.0), _weight(spec, "start", 0.0)
    length = _duration(spec, "cycle", steps_per_epoch)
    ratio, cycles = spec.get("ratio", 0.5), spec.get("cycles")
    check_number("train.kl_weight.ratio", ratio, 0, 1, open_lo=True, fix="e.g. ratio: 0.5")
    if cycles is not None:
        check_number("train.kl_weight.cycles", cycles, 1, integer=True, fix="e.g. cycles: 4, or leave it out")
    rise = ratio * length
    end = math.inf if cycles is None else cycles * length

    def weight(step: int) -> float:
        return beta if step >= end else start + (beta - start) * min(1.0, (step % length) / rise)

    return weight


# kind -> (builder, the keys it accepts besides `kind`)
KINDS: dict[str, tuple[Callable[[dict[str, Any], int | None], Schedule], frozenset[str]]] = {
    "constant": (_constant, frozenset({"beta"})),
    "linear": (_linear, frozenset({"beta", "start", "warmup_steps", "warmup_epochs"})),
    "cyclical": (_cyclical, frozenset({"beta", "start", "cycle_steps", "cycle_epochs", "ratio", "cycles"})),
}


def _lr_exponential(spec: dict[str, Any], steps_per_epoch: int | None) -> Schedule:
    """gamma^epoch (torch.optim.lr_scheduler.ExponentialLR stepped once an epoch)."""
    gamma = spec.get("gamma")
    check_number("train.lr_schedule.gamma", gamma, 0, 1, open_lo=True, fix="e.g. gamma: 0.99")
    return lambda epoch: float(gamma) ** epoch


def _lr_iwae(spec: dict[str, Any], steps_per_epoch: int | None) -> Schedule:
    """Burda, Grosse & Salakhutdinov 2016, section 5: stage i (i = 0..7) lasts 3^i epochs at 10^(-i/7) times the
    base rate; 3,280 epochs in all, after which the last rate stays. `rounded: true` takes the authors' rates,
    round(10^(1-i/7), 1) / 10 (1, 0.72, 0.52, 0.37, 0.27, 0.19, 0.14, 0.1)."""
    rounded = spec.get("rounded", False)
    if not isinstance(rounded, bool):
        raise VaelabError(f"train.lr_schedule.rounded = {rounded!r}: give true or false")

    def factor(epoch: int) -> float:
        stage, end = 0, 1                                   # stage 0 is epoch 0 alone
        while epoch >= end and stage < 7:
            stage += 1
            end += 3**stage
        return round(10 ** (1 - stage / 7), 1) / 10 if rounded else 10 ** (-stage / 7)

    return factor


def _lr_multistep(spec: dict[str, Any], steps_per_epoch: int | None) -> Schedule:
    """gamma^(number of milestones <= epoch): torch's MultiStepLR stepped once an epoch (Pythae's reproduction of
    the 784-400-40 VAE: milestones [200, 350], gamma 10^(-1/5))."""
    gamma, milestones = spec.get("gamma"), spec.get("milestones")
    check_number("train.lr_schedule.gamma", gamma, 0, 1, open_lo=True, fix="e.g. gamma: 0.630957 (10^(-1/5))")
    if (not isinstance(milestones, list) or not milestones
            or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in milestones)
            or milestones != sorted(set(milestones))):
        raise VaelabError(f"train.lr_schedule.milestones = {milestones!r}: give increasing epochs >= 1, "
                          "e.g. [200, 350]")
    return lambda epoch: float(gamma) ** sum(epoch >= m for m in milestones)


LR_KINDS: dict[str, tuple[Callable[[dict[str, Any], int | None], Schedule], frozenset[str]]] = {
    "constant": (lambda spec, steps: lambda epoch: 1.0, frozenset()),
    "exponential": (_lr_exponential, frozenset({"gamma"})),
    "iwae": (_lr_iwae, frozenset({"rounded"})),
    "multistep": (_lr_multistep, frozenset({"milestones", "gamma"})),
}


def _build(spec: dict[str, Any] | None, kinds: dict, key: str, steps_per_epoch: int | None) -> Schedule:
    """Validate a schedule mapping of config key `key` against its `kinds` and build it."""
    spec = {"kind": "constant", **(spec or {})}
    kind = spec["kind"]
    if kind not in kinds:
        raise VaelabError(f"unknown {key}.kind {kind!r}: choose one of {', '.join(kinds)}")
    build, keys = kinds[kind]
    unknown = sorted(set(spec) - keys - {"kind"})
    if unknown:
        raise VaelabError(f"unknown key(s) {', '.join(unknown)} in {key} of kind {kind!r}: "
                          f"valid keys are {', '.join(['kind', *sorted(keys)])}")
    return build(spec, steps_per_epoch)


def kl_schedule(spec: dict[str, Any] | None, steps_per_epoch: int | None = None) -> Schedule:
    """Validate a `train.kl_weight` mapping once and return step -> beta (a plain float, cheap per step)."""
    return _build(spec, KINDS, "train.kl_weight", steps_per_epoch)


def lr_schedule(spec: dict[str, Any] | None) -> Schedule:
    """Validate a `train.lr_schedule` mapping once and return epoch -> factor of train.lr."""
    return _build(spec, LR_KINDS, "train.lr_schedule", None)


def kl_weight(spec: dict[str, Any] | None, step: int, steps_per_epoch: int | None = None) -> float:
    """beta at optimizer step `step` (0-based) under the schedule `spec`."""
    return kl_schedule(spec, steps_per_epoch)(step)
