"""`vaelab compare` and vaelab.core.stats on run directories with known numbers, checked against numpy and scipy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from helpers import write_run
from scipy import stats as sps

from vaelab.core.stats import combined_mc_se, mean_se, paired_difference
from vaelab.experiments.compare import compare
from vaelab.experiments.compare_html import epoch_band
from vaelab.experiments.compare_runs import find_runs

# per (estimator, seed): test ELBO, IW log-lik., its MC s.e., KL, rec
NUMBERS = {
    ("reparam", 0): (-100.0, -95.0, 0.02, 20.0, -80.0),
    ("reparam", 1): (-101.5, -96.1, 0.03, 21.0, -80.5),
    ("reparam", 2): (-99.2, -94.7, 0.01, 19.5, -79.7),
    ("iwae", 0): (-99.0, -94.0, 0.02, 22.0, -77.0),
    ("iwae", 1): (-100.1, -94.9, 0.04, 22.5, -77.6),
    ("iwae", 2): (-98.9, -94.2, 0.02, 21.0, -77.9),
    ("iwae", 3): (-97.0, -93.0, 0.05, 23.0, -74.0),   # no reparam twin: in the mean, not in the paired rows
}


@pytest.fixture
def sweep_dir(tmp_path):
    root = tmp_path / "sweep"
    for (est, seed), numbers in NUMBERS.items():
        write_run(root / f"estimator.name={est},seed={seed}", est, seed, numbers)
    (root / "configs").mkdir()                        # a sweep's own folders hold no runs
    (root / "configs" / "x.yaml").write_text("name: x\n")
    return root


def column(est, i, seeds=None):
    return [v[i] for (e, s), v in NUMBERS.items() if e == est and (seeds is None or s in seeds)]


def test_mean_se_and_paired_interval_match_numpy_and_scipy():
    a = {0: 1.0, 1: 2.5, 2: 2.0, 3: 4.0}
    b = {0: 1.5, 1: 3.5, 2: 2.1, 4: 9.0}
    s = mean_se(list(a.values()))
    assert s.n == 4 and s.mean == pytest.approx(np.mean(list(a.values())))
    assert s.se == pytest.approx(sps.sem(list(a.values())))
    p = paired_difference(a, b)
    shared = [0, 1, 2]
    diffs = np.array([b[k] - a[k] for k in shared])
    ci = sps.ttest_rel([b[k] for k in shared], [a[k] for k in shared]).confidence_interval(0.95)
    assert p.seeds == (0, 1, 2) and p.n == 3
    assert p.mean == pytest.approx(diffs.mean()) and p.se == pytest.approx(sps.sem(diffs))
    assert (p.lo, p.hi) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert mean_se([3.0]) .se is None and paired_difference({0: 1.0}, {0: 2.0}).lo is None
    assert combined_mc_se([0.3, 0.4]) == pytest.approx(0.25) and combined_mc_se([0.3, None]) is None


def test_compare_table_json_and_html(sweep_dir, tmp_path):
    out = tmp_path / "cmp"
    md = compare([sweep_dir], out=out)
    result = json.loads((out / "compare.json").read_text())
    assert result["grouped_by"] == ["estimator.name"]
    by_label = {s["label"]: s for s in result["settings"]}
    assert set(by_label) == {"estimator.name=reparam", "estimator.name=iwae"}
    for est in ("reparam", "iwae"):
        m = by_label[f"estimator.name={est}"]["metrics"]
        for i, key in enumerate(("elbo", "iw_loglik")):
            values = column(est, i)
            assert m[key]["mean"] == pytest.approx(np.mean(values))
            assert m[key]["se"] == pytest.approx(sps.sem(values)) and m[key]["n"] == len(values)
        mc = np.array(column(est, 2))
        assert m["iw_loglik"]["mc_se"] == pytest.approx(math.sqrt((mc ** 2).sum()) / len(mc))
    (pair,) = result["paired"]
    a_label, b_label = pair["a"], pair["b"]
    a_est, b_est = a_label.split("=")[1], b_label.split("=")[1]
    d = pair["metrics"]["iw_loglik"]
    assert d["seeds"] == [0, 1, 2]                   # seed 3 exists only for iwae
    ci = sps.ttest_rel(column(b_est, 1, {0, 1, 2}), column(a_est, 1, {0, 1, 2})).confidence_interval(0.95)
    assert (d["lo"], d["hi"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    # the markdown states what ± means, with the numbers rounded from the same values
    assert "± s.e. across seeds" in md and "95% t interval" in md
    iwae_row = next(line for line in md.splitlines() if line.startswith("| estimator.name=iwae"))
    assert f"{np.mean(column('iwae', 1)):.2f} ± {sps.sem(column('iwae', 1)):.2f}" in iwae_row
    assert "| 4 |" in iwae_row                        # four seeds
    page = (out / "compare.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "src=\"http" not in page
    assert (out / "compare.md").read_text() == md


def test_curves_are_mean_and_se_across_seeds(sweep_dir):
    from vaelab.experiments.compare_groups import group, grouping_keys
    from vaelab.experiments.compare_runs import load_run

    runs = [load_run(p) for p in find_runs([sweep_dir])]
    settings = group(runs, grouping_keys(runs, []))
    iwae = next(s for s in settings if s.label.endswith("iwae"))
    band = epoch_band(iwae, "valid_elbo")
    assert band["epoch"] == [1, 2, 3] and band["n"] == [4, 4, 4]
    per_seed = np.array([[-118.0 + e + 2 * s for s in range(4)] for e in band["epoch"]])
    np.testing.assert_allclose(band["mean"], per_seed.mean(1))
    np.testing.assert_allclose(band["se"], sps.sem(per_seed, axis=1))


def test_compare_json_holds_each_settings_curves(sweep_dir, tmp_path):
    """compare.json's curves: per setting and metric, the per-epoch mean and s.e. across seeds (scipy.stats.sem)."""
    compare([sweep_dir], out=tmp_path / "cmp")
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    reparam = next(s for s in result["settings"] if s["label"].endswith("reparam"))
    assert sorted(reparam["curves"]) == sorted(f"{p}_{m}" for p in ("train", "valid") for m in ("elbo", "kl", "rec"))
    kl = reparam["curves"]["train_kl"]
    assert kl["epoch"] == [1, 2, 3] and kl["n"] == [3, 3, 3]
    np.testing.assert_allclose(kl["mean"], [11.0, 12.0, 13.0])      # 10 + epoch for every seed
    np.testing.assert_allclose(kl["se"], [0.0, 0.0, 0.0])
    elbo = reparam["curves"]["train_elbo"]
    per_seed = np.array([[-120.0 + e + s for s in range(3)] for e in (1, 2, 3)])
    np.testing.assert_allclose(elbo["se"], sps.sem(per_seed, axis=1))


def test_gradient_variance_curve_is_mean_and_se_across_seeds_per_step(sweep_dir, tmp_path):
    """Runs with grad_stats.jsonl (train.grad_stats_every) give compare.json a log10_grad_var curve against steps and
    the page its figure; seed 2 stopped before step 300, so that step has 2 runs; settings without it have none."""
    values = {0: [4.0, 3.5, 3.2], 1: [4.2, 3.4, 3.0], 2: [4.1, 3.6]}
    for seed, series in values.items():
        rows = [{"step": 100 * (i + 1), "grad_var": 10**v, "log10_grad_var": v, "grad_snr": 0.1}
                for i, v in enumerate(series)]
        (sweep_dir / f"estimator.name=reparam,seed={seed}" / "grad_stats.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
    compare([sweep_dir], out=tmp_path / "cmp")
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    by_label = {s["label"].rpartition("=")[2]: s["curves"] for s in result["settings"]}
    assert "log10_grad_var" not in by_label["iwae"]
    band = by_label["reparam"]["log10_grad_var"]
    assert band["step"] == [100, 200, 300] and band["n"] == [3, 3, 2]
    for i in range(3):
        at_step = [series[i] for series in values.values() if len(series) > i]
        assert band["mean"][i] == pytest.approx(np.mean(at_step))
        assert band["se"][i] == pytest.approx(sps.sem(at_step))
    assert (tmp_path / "cmp" / "curves_grad_var.png").stat().st_size > 1000
    assert "gradient variance against steps" in (tmp_path / "cmp" / "compare.html").read_text()


def test_by_key_and_fallback_to_config_and_metrics(tmp_path, cli):
    """No provenance in eval.json: seed from config.yaml, epochs from metrics.jsonl, no MC error; eval.json alone
    (no config.yaml) is grouped by its provenance fields."""
    write_run(tmp_path / "old" / "a0", "reparam", 0, NUMBERS[("reparam", 0)], provenance=False, epochs=2)
    write_run(tmp_path / "old" / "a1", "reparam", 1, NUMBERS[("reparam", 1)], provenance=False, epochs=2)
    write_run(tmp_path / "new" / "b0", "iwae", 0, NUMBERS[("iwae", 0)], config=False)
    write_run(tmp_path / "new" / "b1", "iwae", 1, NUMBERS[("iwae", 1)], config=False)
    code, out, err = cli("compare", tmp_path, "--by", "estimator.name", "--out", tmp_path / "c")
    assert code == 0, err
    result = json.loads((tmp_path / "c" / "compare.json").read_text())
    reparam = next(s for s in result["settings"] if s["label"] == "estimator.name=reparam")
    assert reparam["seeds"] == [0, 1] and reparam["epochs"] == [2]
    assert reparam["metrics"]["iw_loglik"]["mc_se"] is None
    assert reparam["metrics"]["train_seconds"]["mean"] == pytest.approx(np.mean([2 * 2.0, 2 * 3.0]))
    assert result["paired"][0]["metrics"]["elbo"]["seeds"] == [0, 1]
    row = next(line for line in out.splitlines() if line.startswith("| estimator.name=reparam"))
    assert row.split("|")[7].strip() == "–"           # IW MC s.e. unknown without provenance
    # train ELBO: the last epoch's row of each seed's metrics.jsonl (-120 + epoch + seed, epoch 2), mean ± s.e.
    last = [-120.0 + 2 + seed for seed in (0, 1)]
    assert reparam["metrics"]["train_elbo"]["mean"] == pytest.approx(np.mean(last))
    assert reparam["metrics"]["train_elbo"]["se"] == pytest.approx(sps.sem(last))


def test_quality_scores_and_stale_eval_are_reported(tmp_path):
    q = {"mode": "threshold", "prior": "normal", "fid_classifier_features": 12.0, "precision": 0.8, "recall": 0.6}
    write_run(tmp_path / "r0", "reparam", 0, NUMBERS[("reparam", 0)], quality_threshold_normal=q)
    write_run(tmp_path / "r1", "reparam", 1, NUMBERS[("reparam", 1)], quality_threshold_normal=q | {"precision": 0.9})
    ev = json.loads((tmp_path / "r1" / "eval.json").read_text())
    (tmp_path / "r1" / "eval.json").write_text(json.dumps(ev | {"epochs_trained": 2}))
    md = compare([tmp_path])
    assert "## Sample quality" in md and f"0.850 ± {sps.sem([0.8, 0.9]):.3f}" in md
    assert "eval.json is from epoch 2 but metrics.jsonl has 3 epochs" in md


@pytest.mark.parametrize(("args", "message"), [
    (["EMPTY"], "no run directories under"),
    (["SWEEP", "--by", "train.nonsense"], "--by train.nonsense: no run has this config key"),
    (["SWEEP", "DUP"], "are both seed 0 of setting"),
])
def test_errors_are_one_line_with_exit_2(sweep_dir, tmp_path, cli, args, message):
    (tmp_path / "empty").mkdir()
    write_run(tmp_path / "dup" / "copy", "iwae", 0, NUMBERS[("iwae", 0)])
    places = {"EMPTY": tmp_path / "empty", "SWEEP": sweep_dir, "DUP": tmp_path / "dup"}
    args = [str(places.get(a, a)) for a in args]
    code, out, err = cli("compare", *args)
    assert code == 2 and err.startswith("vaelab: error: ") and message in err and err.count("\n") == 1


def test_settings_default_to_every_differing_key(tmp_path):
    for lr in ("1e-3", "3e-4"):
        for seed in (0, 1):
            write_run(tmp_path / f"{lr}-{seed}", "reparam", seed, NUMBERS[("reparam", seed)], provenance=False)
            cfg = yaml.safe_load((tmp_path / f"{lr}-{seed}" / "config.yaml").read_text())
            cfg["train"]["lr"], cfg["name"], cfg["train"]["device"] = float(lr), f"n{seed}", "cpu" if seed else "auto"
            (tmp_path / f"{lr}-{seed}" / "config.yaml").write_text(yaml.safe_dump(cfg))
    md = compare([tmp_path])
    assert "Settings differ in: train.lr." in md   # not name, seed or device
    assert "| train.lr=0.001 | 2 |" in md and "| train.lr=0.0003 | 2 |" in md


def test_a_key_an_older_config_lacks_counts_as_its_default(tmp_path):
    """Seed 0's config.yaml predates train.autocast; seed 1 records the default, seed 2 another value."""
    for seed in (0, 1, 2):
        write_run(tmp_path / f"s{seed}", "reparam", seed, NUMBERS[("reparam", seed)], provenance=False)
    old = yaml.safe_load((tmp_path / "s0" / "config.yaml").read_text())
    del old["train"]["autocast"]
    (tmp_path / "s0" / "config.yaml").write_text(yaml.safe_dump(old))
    assert "all runs" in compare([tmp_path / "s0", tmp_path / "s1"])   # one setting of two seeds
    other = yaml.safe_load((tmp_path / "s2" / "config.yaml").read_text())
    other["train"]["autocast"] = "bf16"
    (tmp_path / "s2" / "config.yaml").write_text(yaml.safe_dump(other))
    md = compare([tmp_path])
    assert "Settings differ in: train.autocast." in md
    assert "| train.autocast=– | 2 |" in md and "| train.autocast=bf16 | 1 |" in md


def test_keys_without_effect_do_not_split_settings(tmp_path):
    """The gradient probe (it restores the RNG it draws from), log_every, and compile_mode without compile change no
    number: 3 seeds that differ only there are one setting."""
    changes = [{}, {"grad_stats_every": 500, "grad_stats_draws": 16, "log_every": 1},
               {"compile_mode": "max-autotune", "log_every": 50}]
    for seed, change in enumerate(changes):
        write_run(tmp_path / f"s{seed}", "reparam", seed, NUMBERS[("reparam", seed)], provenance=False)
        cfg = yaml.safe_load((tmp_path / f"s{seed}" / "config.yaml").read_text())
        cfg["train"] |= change
        (tmp_path / f"s{seed}" / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert "| all runs | 3 |" in compare([tmp_path])
