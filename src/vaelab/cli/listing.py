"""`vaelab list` without importing torch: the registries' names, one-line summaries and fits, kept here as a
table that tests/test_startup.py checks against the live registries (latents.LATENTS, estimators.ESTIMATORS,
nets.NETS). When that test fails, paste the output of `python -m vaelab.cli.listing` over the three tables below.
"""

from __future__ import annotations

from pathlib import Path

PRESETS = Path(__file__).resolve().parents[1] / "configs"   # config.PRESETS, without importing config (and torch)

# fmt: off
LATENT_ROWS = (
    ('bernoulli',
     "Factorised Bernoulli codes q(z|x) = prod Bern(sigmoid(l_i(x))), prior Bern(p) per bit (the seed's ..."),
    ('bernoulli_ar',
     'Binary codes that are not factorised: q(z|x) = prod_i Bern(z_i | sigmoid(b_i(x) + MADE_i(z_<i, ...'),
    ('deterministic',
     "A plain autoencoder's code (the seed's section 4): no KL; the prior is a density fitted afterwards."),
    ('gaussian',
     "Diagonal Gaussian q(z|x) = N(mu, diag sigma^2), prior N(0, I) (the seed's section 2)."),
    ('gaussian_iaf',
     'q(z|x): N(mu, sigma^2) then `steps` inverse autoregressive flow steps conditioned on a context ...'),
)
ESTIMATOR_ROWS = (
    ('ae',
     "A deterministic autoencoder's loss: the Bernoulli reconstruction term alone (the seed's eq. 12).",
     ('bernoulli', 'bernoulli_ar', 'deterministic', 'gaussian', 'gaussian_iaf')),
    ('arm',
     "ARM, augment-REINFORCE-merge (Yin & Zhou 2019), in the form of the DisARM reference code's `arm`: ...",
     ('bernoulli',)),
    ('disarm',
     'DisARM for factorised Bernoulli latents (Dong, Mnih & Tucker 2020, the g_DisARM estimator).',
     ('bernoulli',)),
    ('gumbel',
     'Binary Concrete / Gumbel-softmax relaxation at temperature tau (Maddison et al. 2017; Jang et al. ...',
     ('bernoulli',)),
    ('iwae',
     'The K-sample importance-weighted bound log 1/K sum_k p(x, z_k) / q(z_k|x) with reparameterised z_k, ...',
     ('gaussian', 'gaussian_iaf')),
    ('nvil',
     'Neural variational inference and learning (Mnih & Gregor 2014, sec. 3 and Algorithm 1).',
     ('bernoulli', 'bernoulli_ar', 'gaussian', 'gaussian_iaf')),
    ('relax',
     'RELAX for factorised Bernoulli latents (Grathwohl et al. 2018, "Backpropagation through the Void"), ...',
     ('bernoulli',)),
    ('reparam',
     "Reparameterization trick z = mu + sigma * eps with analytic KL (Kingma & Welling 2014; the seed's ...",
     ('gaussian', 'gaussian_iaf')),
    ('rloo',
     'REINFORCE with K samples per input, each baselined by the mean of the other K-1 ("Buy 4 REINFORCE ...',
     ('bernoulli', 'bernoulli_ar', 'gaussian', 'gaussian_iaf')),
    ('sfe',
     "Plain REINFORCE on E_q[log p(x|z)] without a control variate (Williams 1992; the seed's eq. 9).",
     ('bernoulli', 'bernoulli_ar', 'gaussian', 'gaussian_iaf')),
    ('sfe-avg',
     "The seed's estimator (eq. 11, Figure 3): REINFORCE with c = a running average of past ...",
     ('bernoulli', 'bernoulli_ar', 'gaussian', 'gaussian_iaf')),
    ('st',
     'Straight-through Gumbel estimator (Jang et al. 2017, sec. 2.2): the decoder sees the hard sample, ...',
     ('bernoulli',)),
    ('vimco',
     "The K-sample importance-weighted bound (Burda et al. 2016) with VIMCO's leave-one-out control ...",
     ('bernoulli', 'bernoulli_ar', 'gaussian', 'gaussian_iaf')),
)
NET_NAMES = ('conv', 'mlp')
# fmt: on


def summary(obj: object, width: int = 100) -> str:
    """A registered class's docstring, first paragraph, cut to `width` characters at a word boundary."""
    text = " ".join((obj.__doc__ or "").split("\n\n")[0].split())
    return text if len(text) <= width else text[:width].rsplit(" ", 1)[0] + " ..."


def live_tables() -> tuple[tuple, tuple, tuple]:
    """(LATENT_ROWS, ESTIMATOR_ROWS, NET_NAMES) read from the registries themselves (imports torch)."""
    from vaelab.estimators.pathwise import ESTIMATORS
    from vaelab.models.latents import LATENTS
    from vaelab.models.nets import NETS

    latents = tuple((name, summary(LATENTS.get(name))) for name in LATENTS)
    estimators = tuple((name, summary(cls), tuple(lat for lat in LATENTS if cls.needs <= LATENTS.get(lat).offers()))
                       for name, cls in ((name, ESTIMATORS.get(name)) for name in ESTIMATORS))
    return latents, estimators, tuple(NETS)


def preset_names() -> list[str]:
    """The shipped preset names (config.presets()): "gaussian_vae", "literature/disarm_linear", ..."""
    return sorted(str(p.relative_to(PRESETS).with_suffix("")) for p in PRESETS.rglob("*.yaml"))


def listing(latents: tuple = LATENT_ROWS, estimators: tuple = ESTIMATOR_ROWS, nets: tuple = NET_NAMES) -> str:
    """What `vaelab list` prints (ending in a newline)."""
    lines = ["latent families (model.latent):"]
    lines += [f"  {name:16s} {text}" for name, text in latents]
    lines.append("estimators (estimator.name), and the latent families each fits:")
    for name, text, fits in estimators:
        lines += [f"  {name:16s} {text}", f"  {'':16s} fits: {', '.join(fits) or 'none'}"]
    lines.append(f"networks (model.nets): {', '.join(nets)}")
    lines.append(f"presets (vaelab train NAME): {', '.join(preset_names())}")
    return "\n".join(lines) + "\n"


def tables_source(latents: tuple, estimators: tuple, nets: tuple) -> str:
    """The three tables as Python source, in this module's layout."""
    out = ["LATENT_ROWS = ("] + [f"    ({n!r},\n     {t!r})," for n, t in latents] + [")", "ESTIMATOR_ROWS = ("]
    out += [f"    ({n!r},\n     {t!r},\n     {f!r})," for n, t, f in estimators]
    return "\n".join([*out, ")", f"NET_NAMES = {nets!r}"])


if __name__ == "__main__":
    print(tables_source(*live_tables()))
