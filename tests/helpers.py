"""Helpers shared by several test modules (a test module never imports another one: tests/test_layout.py).

- `build_study`: the digits study every report test reads (`vaelab reproduce` once per session);
- `sprite_tiles`, `assert_sprite_is_the_decoder`: the latent map's sprite against the decoder;
- `BROWSER`, `HANG`, `artifact_dir`: the headless browser the browser tests drive;
- `build_site`: the documentation site as `make docs` builds it;
- `write_run`: a run directory as `vaelab train` + `vaelab evaluate` leave it, with chosen numbers."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.config.schema import Config
from vaelab.experiments.reproduce import Settings, reproduce

ROOT = Path(__file__).resolve().parents[1]
ARGS = dict(quick=True, data="digits", epochs=2, device="cpu", iw_samples=20)


def build_study(tmp_path_factory) -> Path:
    """The digits study of ARGS in the session's temp folder, shared by the modules that read it: whoever comes
    second finds every stage done, so its call only rewrites the report."""
    out = tmp_path_factory.getbasetemp() / "study"
    reproduce(Settings(out, **ARGS))
    return out


def sprite_tiles(html: str) -> tuple[dict, np.ndarray]:
    """The latent map's data attributes and its sprite as floats in [0, 1], from the HTML."""
    attrs = dict(re.findall(r'data-(n|x|y|box)="([^"]+)"', re.search(r'<figure class="latent-map[^>]*>', html)[0]))
    sprite = re.search(r'class="lm-sprite"[^>]*src="data:image/png;base64,([^"]+)"', html)[1]
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(sprite))), dtype=np.float64) / 255
    return attrs, image


def assert_sprite_is_the_decoder(model, html: str) -> None:
    """Every tile (r, c) equals omega at z = (x0 + c (x1 - x0)/(n - 1), y1 - r (y1 - y0)/(n - 1)), to 8 bits."""
    attrs, image = sprite_tiles(html)
    n = int(attrs["n"])
    (x0, x1), (y0, y1) = (map(float, attrs[k].split(",")) for k in "xy")
    h, w = model.image_shape
    assert image.shape == (n * h, n * w)
    cells = [(0, 0), (0, n - 1), (n - 1, 0), (n // 2, n // 3), (n - 1, n - 1)]
    z = torch.tensor([[x0 + c * (x1 - x0) / (n - 1), y1 - r * (y1 - y0) / (n - 1)] for r, c in cells])
    omega = model.decode_probs(z.float()).numpy().reshape(len(cells), h, w)
    for (r, c), expected in zip(cells, omega, strict=True):
        np.testing.assert_allclose(image[r * h:(r + 1) * h, c * w:(c + 1) * w], expected, atol=0.5 / 255 + 1e-6)
    assert len({image[r * h:(r + 1) * h, c * w:(c + 1) * w].tobytes() for r, c in cells}) > 1   # not one tile


BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BROWSER = next((path for name in BROWSERS if (path := shutil.which(name))), None)
HANG = 120_000   # ms: only a hung browser takes this long


def artifact_dir() -> Path:
    out = Path(os.environ.get("VAELAB_ARTIFACTS", Path(__file__).resolve().parents[1] / "reports" / "test-artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def build_site(out: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` of the repository's mkdocs.yml into `out` (the same build `make docs` runs)."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=os.environ | {"NO_MKDOCS_2_WARNING": "1"})


def write_run(path, estimator, seed, numbers, provenance=True, epochs=3, config=True, **extra):
    """A run directory as `vaelab train` + `vaelab evaluate` leave it."""
    path.mkdir(parents=True)
    cfg = Config()
    cfg.estimator.name, cfg.train.seed, cfg.train.epochs, cfg.data.source = estimator, seed, epochs, "digits"
    if config:
        (path / "config.yaml").write_text(cfg.to_yaml())
    rows = [{"epoch": e, "train_elbo": -120.0 + e + seed, "valid_elbo": -118.0 + e + 2 * seed, "train_kl": 10.0 + e,
             "valid_kl": 11.0 + e, "train_rec": -110.0 + e, "valid_rec": -109.0 + e, "seconds": 2.0 + seed}
            for e in range(1, epochs + 1)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    elbo, iw, mc, kl, rec = numbers
    ev = {"elbo": elbo, "elbo_stderr": 0.5, "iw_loglik": iw, "iw_loglik_stderr": 0.4, "kl": kl, "rec": rec,
          "iw_samples": 100, "n_examples": 250}
    if provenance:
        ev |= {"config_name": "run", "latent": "gaussian", "estimator": estimator, "seed": seed, "epochs_trained":
               epochs, "steps_trained": 21 * epochs, "data": "digits", "binarize": "dynamic",
               "vaelab_version": "0.1.0", "git_commit": "abc1234", "iw_loglik_mc_stderr": mc}
    (path / "eval.json").write_text(json.dumps(ev | extra))
