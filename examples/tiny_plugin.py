"""An example vaelab plugin: a network pair ("tiny_mlp") and an estimator ("reparam_mc") registered on import.

Use it from the command line (with this folder on PYTHONPATH, or the module installed):

    PYTHONPATH=examples vaelab --import tiny_plugin train gaussian_vae --set model.nets=tiny_mlp \
        --set estimator.name=reparam_mc --data digits --epochs 2
    PYTHONPATH=examples vaelab evaluate runs/...     # the run's config.yaml says `plugins: [tiny_plugin]`

or name it in a config (`plugins: [tiny_plugin]`), or advertise it from an installed package's pyproject.toml:

    [project.entry-points."vaelab.plugins"]
    tiny = "tiny_plugin"

Run as a script (`python examples/tiny_plugin.py`), it trains and scores one model with both, in one process.
"""

from __future__ import annotations

from torch import Tensor, nn

import vaelab


@vaelab.NETS.register("tiny_mlp")
def tiny_mlp(data_dim: int, image_shape: tuple[int, int], enc_out: int, latent_dim: int,
             hidden: list[int], activation: str) -> tuple[nn.Module, nn.Module]:
    """One tanh hidden layer of width hidden[0] (16 when `hidden` is empty) each way; `activation` is ignored."""
    width = hidden[0] if hidden else 16
    encoder = nn.Sequential(nn.Linear(data_dim, width), nn.Tanh(), nn.Linear(width, enc_out))     # [B, P] -> [B, E]
    decoder = nn.Sequential(nn.Linear(latent_dim, width), nn.Tanh(), nn.Linear(width, data_dim))  # [.., D] -> [.., P]
    return encoder, decoder


@vaelab.ESTIMATORS.register("reparam_mc")
class ReparamMC(vaelab.Estimator):
    """The reparameterization trick with a one-sample Monte Carlo KL, log q(z|x) - log p(z), at the drawn z."""

    needs = frozenset({"rsample"})

    def forward(self, model: vaelab.VAE, x: Tensor, kl_weight: float | Tensor = 1.0) -> vaelab.Estimate:
        q = model.posterior(x)                                  # batch [B], event [D]
        z = q.rsample()                                         # [B, D]
        rec = model.likelihood(z).log_prob(x)                   # [B]
        kl = q.log_prob(z) - model.prior().log_prob(z)          # [B]
        loss = (kl_weight * kl - rec).mean()
        rec, kl = rec.detach(), kl.detach()
        return vaelab.Estimate(loss, rec - kl, rec, kl)


if __name__ == "__main__":   # a demo in one process: `python examples/tiny_plugin.py`
    with vaelab.fit("gaussian_vae", data="digits", estimator="reparam_mc", epochs=5, seed=0,
                    model={"nets": "tiny_mlp", "hidden": [64], "latent_dim": 8}) as run:
        scores = run.evaluate(iw_samples=100)
    print(f"tiny_mlp + reparam_mc on digits: test log p(x) >= {scores['iw_loglik']:.2f} "
          f"± {scores['iw_loglik_stderr']:.2f} (test images), K = 100")
