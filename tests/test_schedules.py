"""KL weight and learning-rate schedules: the stated values, strict validation, runs that follow them (a beta-weighted
run still reports the ELBO; a resumed run continues the learning-rate schedule)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from torch.distributions import Normal, kl_divergence

from vaelab.config.schema import load_config
from vaelab.core.errors import VaelabError
from vaelab.optim.schedules import kl_schedule, kl_weight, lr_schedule
from vaelab.runs.loaded_run import open_run
from vaelab.training.trainer import train


def test_empty_and_constant_schedules():
    assert [kl_weight({}, s) for s in (0, 7, 10**6)] == [1.0, 1.0, 1.0]
    assert kl_weight({"kind": "constant", "beta": 4}, 123) == 4.0          # beta-VAE (Higgins et al. 2017)
    assert kl_weight({"beta": 0.25}, 0) == 0.25                             # kind defaults to constant


def test_linear_warmup_values():
    spec = {"kind": "linear", "start": 0.2, "beta": 1.0, "warmup_steps": 8}
    assert [kl_weight(spec, s) for s in (0, 2, 4, 8, 100)] == pytest.approx([0.2, 0.4, 0.6, 1.0, 1.0])
    by_epoch = {"kind": "linear", "warmup_epochs": 2}                       # start 0, beta 1 by default
    assert [kl_weight(by_epoch, s, steps_per_epoch=5) for s in (0, 5, 10)] == pytest.approx([0.0, 0.5, 1.0])


def test_cyclical_values_follow_fu_et_al():
    """tau = (t mod L) / L; beta = tau / R while tau <= R, then 1; constant beta after M cycles."""
    spec = {"kind": "cyclical", "cycle_steps": 10, "ratio": 0.5, "cycles": 2, "beta": 2.0}
    got = [kl_weight(spec, s) for s in range(25)]
    one_cycle = [2.0 * min(1.0, (t / 10) / 0.5) for t in range(10)]
    assert got == pytest.approx(one_cycle + one_cycle + [2.0] * 5)
    assert got[0] == 0.0 and got[2] == pytest.approx(0.8) and got[5] == 2.0 and got[12] == pytest.approx(0.8)
    forever = {"kind": "cyclical", "cycle_epochs": 1, "ratio": 1.0}
    assert kl_weight(forever, 1003, steps_per_epoch=100) == pytest.approx(0.03)


@pytest.mark.parametrize("spec, message", [
    ({"kind": "cosine"}, "unknown train.kl_weight.kind 'cosine'"),
    ({"kind": "linear", "warmup_steps": 10, "warmpu": 1}, "unknown key.*warmpu.*valid keys"),
    ({"kind": "constant", "warmup_steps": 10}, "unknown key.*warmup_steps"),
    ({"kind": "linear"}, "needs exactly one of warmup_steps or warmup_epochs"),
    ({"kind": "linear", "warmup_steps": 5, "warmup_epochs": 1}, "exactly one"),
    ({"kind": "linear", "warmup_steps": 0}, "must be a finite number > 0"),
    ({"kind": "constant", "beta": -1}, "must be a finite number >= 0"),
    ({"kind": "cyclical", "cycle_steps": 10, "ratio": 1.5}, r"must be a finite number in \(0, 1\]"),
    ({"kind": "cyclical", "cycle_steps": 10, "cycles": 0}, "must be an integer >= 1"),
    ({"kind": "linear", "warmup_epochs": 3}, "needs the steps per epoch"),
])
def test_bad_schedules_are_refused_with_the_fix(spec, message):
    with pytest.raises(VaelabError, match=message):
        kl_schedule(spec)


def test_bad_schedule_is_refused_before_training(tmp_path):
    with pytest.raises(VaelabError, match="unknown key"):     # refused when the config is loaded
        train(tiny_config("train.kl_weight={kind: linear, warmup: 5}"), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_beta_weighted_run_reports_the_unweighted_elbo(tmp_path):
    """beta = 0.25: train_loss is the weighted objective, train/valid ELBO the true one (beta = 1)."""
    beta = 0.25
    cfg = tiny_config("train.epochs=1", "train.steps_per_epoch=3", f"train.kl_weight={{beta: {beta}}}")
    (row,) = train(cfg, tmp_path / "run", quiet=True)
    assert row["kl_weight"] == beta and row["steps"] == 3
    # reparam: loss = beta KL - rec and -elbo = KL - rec, per example, so their means differ by (beta - 1) KL.
    assert row["train_loss"] + row["train_elbo"] == pytest.approx((beta - 1) * row["train_kl"], abs=1e-4)
    assert row["train_elbo"] == pytest.approx(row["train_rec"] - row["train_kl"], abs=1e-4)
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text())["kl_weight"] == beta

    run = open_run(tmp_path / "run", "cpu")                      # independent recomputation from the checkpoint
    with torch.no_grad():
        x = run.data.x_valid
        mu, logvar = run.model.encoder(x).chunk(2, dim=-1)
        q = Normal(mu, torch.exp(0.5 * logvar))
        kl = kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)   # [N]
        rec = torch.stack([run.model.likelihood(q.sample()).log_prob(x) for _ in range(100)])  # [100, N]
    assert row["valid_kl"] == pytest.approx(kl.mean().item(), rel=1e-4)   # the full KL, not beta * KL
    # valid_rec is a one-sample estimate: within 5 standard errors of the 100-sample mean
    se = (rec[0].std() / len(x) ** 0.5).item()
    assert abs(row["valid_rec"] - rec.mean().item()) < 5 * se
    assert row["valid_elbo"] == pytest.approx(row["valid_rec"] - row["valid_kl"], abs=1e-4)
    assert abs(row["valid_elbo"] - (rec.mean() - kl.mean()).item()) < 5 * se


# --- the remedy presets -------------------------------------------------------------------------------------------

REMEDIES = sorted(Path("configs/remedies").glob("*.yaml"))


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in REMEDIES])
def test_each_remedy_preset_trains_two_steps_on_digits(tmp_path, path):
    cfg = load_config(path, ["data.source=digits", "train.epochs=1", "train.steps_per_epoch=2",
                             "train.batch_size=32", "eval.iw_samples=0", "train.device=cpu"])
    (row,) = train(cfg, tmp_path / "run", quiet=True)
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["valid_elbo"]) and row["steps"] == 2


def test_the_remedies_cover_the_issue():
    stems = {p.stem for p in REMEDIES}
    assert {"bernoulli_kl_beta", "bernoulli_kl_warmup", "bernoulli_kl_cyclical", "bernoulli_conv",
            "bernoulli_autoregressive", "gaussian_conv", "gaussian_iwae", "gaussian_iaf"} <= stems


# ------------------------------------------------------------------------------------- learning-rate schedules


def test_iwae_learning_rate_schedule_follows_burda_et_al():
    # Burda et al. 2016, section 5: 3^i epochs at 10^(-i/7), i = 0..7: stages start at epochs 0, 1, 4, 13, 40, ...
    factor = lr_schedule({"kind": "iwae"})
    starts = [0, *[sum(3**j for j in range(i)) for i in range(1, 8)]]          # 0, 1, 4, 13, 40, 121, 364, 1093
    assert starts[-1] + 3**7 == 3280
    for i, start in enumerate(starts):
        assert factor(start) == pytest.approx(10 ** (-i / 7))
        assert start == 0 or factor(start - 1) == pytest.approx(10 ** (-(i - 1) / 7))
    assert factor(3279) == factor(10_000) == pytest.approx(0.1)


@pytest.mark.parametrize("spec, message", [
    ({"kind": "cosine"}, "unknown train.lr_schedule.kind 'cosine'"),
    ({"kind": "exponential"}, r"gamma = None must be a finite number in \(0, 1\]"),
    ({"kind": "exponential", "gamma": 1.5}, r"must be a finite number in \(0, 1\]"),
    ({"kind": "iwae", "gamma": 0.5}, "unknown key.*gamma.*valid keys are kind"),
])
def test_bad_learning_rate_schedules_are_refused(spec, message):
    with pytest.raises(VaelabError, match=message):
        lr_schedule(spec)


def test_learning_rate_schedule_drives_adam(tmp_path):
    history = train(tiny_config("train.epochs=3", "train.lr_schedule={kind: exponential, gamma: 0.5}",
                                "train.adam_eps=1e-4"), tmp_path / "run", quiet=True)
    assert [r["lr"] for r in history] == pytest.approx([1e-3, 5e-4, 2.5e-4])
    state = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=True)
    group = state["optim"]["optimizers"][0]["param_groups"][0]
    assert group["lr"] == pytest.approx(2.5e-4) and group["eps"] == 1e-4


def test_resumed_run_continues_the_learning_rate_schedule(tmp_path, monkeypatch):
    # interrupted in its third epoch, the run resumes there at gamma^2, not at the base rate
    import vaelab.training.trainer as train_mod

    real_epoch = train_mod.EpochLoop.run

    def dying_epoch(self, epoch, *args, **kwargs):
        if epoch == 2:                                     # epoch index 2
            raise KeyboardInterrupt
        return real_epoch(self, epoch, *args, **kwargs)

    cfg = tiny_config("train.epochs=3", "train.lr_schedule={kind: exponential, gamma: 0.5}")
    monkeypatch.setattr(train_mod.EpochLoop, "run", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", quiet=True)
    monkeypatch.setattr(train_mod.EpochLoop, "run", real_epoch)
    history = train(None, tmp_path / "run", resume=True, quiet=True)
    assert [r["lr"] for r in history] == pytest.approx([1e-3, 5e-4, 2.5e-4])


def test_multistep_matches_torch_multisteplr():
    """kind multistep against torch's MultiStepLR stepped once an epoch (Pythae's 784-400-40 schedule)."""
    from vaelab.optim.schedules import lr_schedule

    gamma = 10 ** (-1 / 5)
    factor = lr_schedule({"kind": "multistep", "milestones": [200, 350], "gamma": gamma})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[200, 350], gamma=gamma)
    for epoch in range(500):
        assert factor(epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), epoch
        opt.step()
        sched.step()


def test_iwae_rounded_rates_are_the_authors():
    """yburda/iwae experiments.py: stage i (1..8) runs 3^(i-1) epochs at 1e-4 * round(10^(1-(i-1)/7), 1)."""
    from vaelab.optim.schedules import lr_schedule

    factor = lr_schedule({"kind": "iwae", "rounded": True})
    starts = [0, 1, 4, 13, 40, 121, 364, 1093]
    assert [round(1e-3 * factor(e), 10) for e in starts] == [1e-3, 7.2e-4, 5.2e-4, 3.7e-4, 2.7e-4, 1.9e-4, 1.4e-4,
                                                              1e-4]
    assert factor(3279) == factor(1093) and factor(1092) == factor(364)


@pytest.mark.parametrize("spec", [{"kind": "multistep", "milestones": [350, 200], "gamma": 0.5},
                                  {"kind": "multistep", "milestones": [], "gamma": 0.5},
                                  {"kind": "multistep", "milestones": [200], "gamma": 1.5},
                                  {"kind": "iwae", "rounded": "yes"}])
def test_bad_lr_schedules_are_refused(spec):
    from vaelab.core.errors import VaelabError
    from vaelab.optim.schedules import lr_schedule

    with pytest.raises(VaelabError, match="train.lr_schedule"):
        lr_schedule(spec)
