"""Shared fixtures: tiny seeded configs on sklearn's 8x8 digits, and an in-process CLI runner."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch

from vaelab.cli.main import main
from vaelab.config.schema import load_config


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)   # tests are tiny; one thread keeps them deterministic and leaves the other core free


def tiny_config(*overrides: str):
    """The Gaussian VAE preset shrunk to digits: 64 pixels, hidden [32], 4 latents."""
    return load_config("configs/gaussian_vae.yaml", [
        "data.source=digits", "model.hidden=[32]", "model.latent_dim=4", "train.epochs=2",
        "train.batch_size=64", "eval.iw_samples=20", *overrides])


@pytest.fixture
def cli(capsys):
    """Run `vaelab ARGS...` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


class RecordingHandler(http.server.SimpleHTTPRequestHandler):
    """A quiet static file handler that records the paths it was asked for in `server.requests`."""

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve_folder(root: Path):
    """Serve `root` on 127.0.0.1 (an ephemeral port) for the tests' downloads; yield (base URL, server)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RecordingHandler,
                                                                                 directory=str(root)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert not thread.is_alive()
