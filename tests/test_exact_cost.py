"""`vaelab evaluate --exact` (issue 28): it states its cost (2^D codes x N test images decoder rows) before any
work, refuses above 2^16 codes unless --yes is given (one line, exit 2, nothing written), and reports progress;
its answer still equals a brute-force enumeration written independently here."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F

from vaelab.config.schema import ModelConfig
from vaelab.core.errors import VaelabError
from vaelab.evaluation import exact
from vaelab.models.vae import build_model
from vaelab.runs.loaded_run import open_run

TINY = ["--data", "digits", "--epochs", "1", "--quiet", "--device", "cpu", "--set", "train.steps_per_epoch=2",
        "--set", "model.hidden=[8]"]


def bits_model(dim: int):
    return build_model(ModelConfig(latent="bernoulli", latent_dim=dim, hidden=[8]), 20, (4, 5))


def test_cost_line_counts_codes_times_images():
    line = exact.exact_cost(20, 10_000)
    assert "2^20 = 1,048,576 codes x 10,000 test images" in line
    assert f"{2**20 * 10_000:.2e} decoder rows" in line and "\n" not in line


def test_confirmation_needed_only_above_two_to_the_sixteen_codes():
    assert exact.check_exact_confirmed(bits_model(16), 100, confirmed=False) == 16
    with pytest.raises(VaelabError, match=r"2\^17 = 131,072 codes x 100 test images.*--yes"):
        exact.check_exact_confirmed(bits_model(17), 100, confirmed=False)
    assert exact.check_exact_confirmed(bits_model(17), 100, confirmed=True) == 17


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny Bernoulli runs on digits: 4 latent bits (cheap to enumerate) and 17 (above the 2^16 threshold)."""
    from vaelab.cli.main import main

    root = tmp_path_factory.mktemp("exact")
    for dim in (4, 17):
        assert main(["train", "bernoulli_vae", "--out", str(root / f"bits{dim}"), *TINY,
                     "--set", f"model.latent_dim={dim}"]) == 0
    return root


def test_above_two_to_the_sixteen_codes_is_refused_without_yes(runs, cli):
    run = runs / "bits17"
    before = sorted(p.name for p in run.iterdir())
    code, out, err = cli("evaluate", run, "--exact", "--device", "cpu")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "--yes" in err and "2^17 = 131,072 codes" in err and "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == before          # no eval.json: refused before any work


def brute_force_loglik(model, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = logsumexp over every code z of log Bern(z; 1/2) + log p(x|z), one code at a time: [N]."""
    dim = model.latent.dim
    terms = []
    with torch.no_grad():
        for bits in itertools.product((0.0, 1.0), repeat=dim):
            z = torch.tensor(bits, dtype=x.dtype).expand(len(x), dim)                      # [N, D]
            logits = model.decoder(z)                                                       # [N, P]
            rec = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)  # [N]
            terms.append(rec - dim * math.log(2))
    return torch.logsumexp(torch.stack(terms), 0)                                           # [N]


def test_yes_runs_it_with_the_cost_first_and_progress(runs, cli, monkeypatch):
    run = runs / "bits4"
    monkeypatch.setattr(exact, "CONFIRM_CODES", 8)                    # 2^4 codes now count as large
    code, _, err = cli("evaluate", run, "--exact", "--device", "cpu", "--iw-samples", "5")
    assert code == 2 and "--yes" in err and not (run / "eval.json").exists()
    code, out, err = cli("evaluate", run, "--exact", "--yes", "--device", "cpu", "--iw-samples", "5")
    assert code == 0, err
    loaded = open_run(run, "cpu")
    n = len(loaded.data.x_test)
    lines = err.splitlines()
    assert lines[0] == exact.exact_cost(4, n)                         # stated before any other work
    assert any(line.startswith("exact log p(x), 2^4 codes") and line.endswith("chunks") for line in lines)
    assert lines[-1] == f"exact log p(x): {n}/{n} images done"
    got = json.loads((run / "eval.json").read_text())["exact_loglik"]
    want = brute_force_loglik(loaded.model, loaded.data.x_test).mean().item()
    assert got == pytest.approx(want, abs=1e-4) and json.loads(out)["exact_loglik"] == got


def test_quiet_prints_no_cost_line(runs, cli):
    code, _, err = cli("evaluate", runs / "bits4", "--exact", "--quiet", "--device", "cpu", "--iw-samples", "0")
    assert code == 0 and err == ""
