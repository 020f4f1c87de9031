"""The names a config may use, as static tables, so a config is checked and `vaelab list` answers without importing
torch: the registries' names (latent families, estimators, networks) with what the checks need of each (its
one-line summary, the latent families an estimator fits, whether a latent family is binary, the keyword arguments
its class takes), and the fixed choices of the data, model and train sections.

The registry tables below `# fmt: off` are what `python -m vaelab.config.names` prints, and tests/test_config_leaf.py
checks them, and the fixed choices, against the live registries and modules: when that test fails, paste the
output over those tables. A name these tables do not hold (a plugin's) is looked up in the live registries
(config/checks.py), which import torch. This module imports nothing of vaelab's and nothing outside the standard
library.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any

PRESETS = Path(__file__).resolve().parents[1] / "configs"   # shipped with the package (package data)

# Fixed choices (each equals the live module's; tests/test_config_leaf.py checks them)
DATA_SOURCES = ("mnist", "digits", "mnist-static", "fashion-mnist", "omniglot", "caltech-silhouettes")  # data.catalog
DATA_HELP = f"{' | '.join(DATA_SOURCES)} | PATH (.npz file or MNIST IDX folder)"   # what --data takes
BINARIZATIONS = ("dynamic", "static", "threshold", "none")                      # data.binarize.BINARIZATIONS
ACTIVATIONS = ("relu", "tanh", "leaky_relu", "elu", "softplus")                 # models.nets.ACTIVATIONS
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")                             # runtime.hardware.DEVICE_PATTERN
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # runtime.hardware
BACKWARDS = ("auto", "manual", "autograd")                                      # training.by_hand.BACKWARDS
# the estimators with a hand-written step (train.backward, training/by_hand*.py), on which latent family, with MLP
# nets of these activations; tests/test_by_hand.py checks this table against the steps' own `plan`
HAND_WRITTEN = {"reparam": "gaussian", "disarm": "bernoulli", "arm": "bernoulli"}
HAND_WRITTEN_ACTIVATIONS = ("tanh", "relu", "leaky_relu")
AUTOCASTS = ("bf16",)                                                           # runtime.hardware.AUTOCAST_DTYPES

Signature = tuple[str, dict[str, Any]] | None   # (class name, {keyword: annotation}); None: takes **kwargs

# fmt: off
LATENT_ROWS = (
    ('bernoulli',
     "Factorised Bernoulli codes q(z|x) = prod Bern(sigmoid(l_i(x))), prior Bern(p) per bit (the study's ..."),
    ('bernoulli_ar',
     'Binary codes that are not factorised: q(z|x) = prod_i Bern(z_i | sigmoid(b_i(x) + MADE_i(z_<i, ...'),
    ('deterministic',
     "A plain autoencoder's code (the study's section 4): no KL; the prior is a density fitted afterwards."),
    ('gaussian',
     "Diagonal Gaussian q(z|x) = N(mu, diag sigma^2), prior N(0, I) (the study's section 2)."),
    ('gaussian_iaf',
     'q(z|x): N(mu, sigma^2) then `steps` inverse autoregressive flow steps conditioned on a context ...'),
)
ESTIMATOR_ROWS = (
    ('ae',
     "A deterministic autoencoder's loss: the Bernoulli reconstruction term alone (the study's eq. 12).",
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
     "Reparameterization trick z = mu + sigma * eps with analytic KL (Kingma & Welling 2014; the study's ...",
     ('gaussian', 'gaussian_iaf')),
    ('rloo',
     'REINFORCE with K samples per input, each baselined by the mean of the other K-1 ("Buy 4 REINFORCE ...',
     ('bernoulli', 'bernoulli_ar', 'gaussian', 'gaussian_iaf')),
    ('sfe',
     "Plain REINFORCE on E_q[log p(x|z)] without a control variate (Williams 1992; the study's eq. 9).",
     ('bernoulli', 'bernoulli_ar', 'gaussian', 'gaussian_iaf')),
    ('sfe-avg',
     "The study's estimator (eq. 11, Figure 3): REINFORCE with c = a running average of past ...",
     ('bernoulli', 'bernoulli_ar', 'gaussian', 'gaussian_iaf')),
    ('st',
     'Straight-through Gumbel estimator (Jang et al. 2017, sec. 2.2): the decoder sees the hard sample, ...',
     ('bernoulli',)),
    ('vimco',
     "The K-sample importance-weighted bound (Burda et al. 2016) with VIMCO's leave-one-out control ...",
     ('bernoulli', 'bernoulli_ar', 'gaussian', 'gaussian_iaf')),
)
NET_NAMES = ('conv', 'mlp')
DISCRETE_LATENTS = ('bernoulli', 'bernoulli_ar')
AUTOENCODER_LATENTS = ('deterministic',)
LATENT_KWARGS = {
    'bernoulli': ('BernoulliLatent', {'prior_probs': float, 'learn_prior': bool}),
    'bernoulli_ar': ('AutoregressiveBernoulliLatent',
                     {'prior_probs': float, 'learn_prior': bool, 'hidden_units': int | None}),
    'deterministic': ('DeterministicLatent', {}),
    'gaussian': ('GaussianLatent', {}),
    'gaussian_iaf': ('GaussianIAFLatent', {'steps': int, 'hidden_units': int | None}),
}
ESTIMATOR_KWARGS = {
    'ae': ('Autoencoder', {}),
    'arm': ('ARM', {'signal': str}),
    'disarm': ('DisARM', {'signal': str}),
    'gumbel': ('BinaryConcrete', {'temperature': float}),
    'iwae': ('IWAE', {'num_samples': int}),
    'nvil': ('NVIL', {'hidden': int, 'decay': float, 'normalize': bool}),
    'relax': ('RELAX', {'hidden': int, 'temperature': float, 'activation': str}),
    'reparam': ('Reparam', {}),
    'rloo': ('RLOO', {'num_samples': int, 'signal': str}),
    'sfe': ('ScoreFunction', {}),
    'sfe-avg': ('RunningAverageSFE', {'average': str, 'decay': float}),
    'st': ('StraightThrough', {'temperature': float}),
    'vimco': ('VIMCO', {'num_samples': int}),
}
# fmt: on


def presets() -> list[str]:
    """The shipped preset names: "gaussian_vae", "literature/disarm_linear", ..."""
    return sorted(str(p.relative_to(PRESETS).with_suffix("")) for p in PRESETS.rglob("*.yaml"))


def static_names(kind: str) -> tuple[str, ...]:
    """The names of one registry ("latent", "estimator", "net") this module holds."""
    rows = {"latent": LATENT_ROWS, "estimator": ESTIMATOR_ROWS, "net": tuple((n,) for n in NET_NAMES)}[kind]
    return tuple(row[0] for row in rows)


def signature_of(cls: type) -> Signature:
    """The keyword arguments a config may give registered class `cls`: those with defaults of the first __init__
    below torch's nn.Module, with their annotations (typing.Any where none); None when it takes **kwargs (then
    nothing can be checked). Imports torch (only the live registries' classes are asked)."""
    import torch

    for klass in cls.__mro__:
        if klass in (torch.nn.Module, object):
            return cls.__name__, {}
        if "__init__" in vars(klass):
            params = inspect.signature(klass.__init__).parameters
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                return None
            hints = typing.get_type_hints(klass.__init__)
            return cls.__name__, {n: hints.get(n, Any) for n, p in params.items()
                                  if p.default is not inspect.Parameter.empty}
    return cls.__name__, {}


def summary(obj: object, width: int = 100) -> str:
    """A registered class's docstring, first paragraph, cut to `width` characters at a word boundary."""
    text = " ".join((obj.__doc__ or "").split("\n\n")[0].split())
    return text if len(text) <= width else text[:width].rsplit(" ", 1)[0] + " ..."


def live_tables() -> dict[str, Any]:
    """The registry tables of this module, read from the live registries (imports torch)."""
    from vaelab.estimators.pathwise import ESTIMATORS
    from vaelab.models.latents import LATENTS
    from vaelab.models.nets import NETS

    latents = {name: LATENTS.get(name) for name in LATENTS}
    estimators = {name: ESTIMATORS.get(name) for name in ESTIMATORS}
    return {
        "LATENT_ROWS": tuple((name, summary(cls)) for name, cls in latents.items()),
        "ESTIMATOR_ROWS": tuple((name, summary(cls), tuple(lat for lat, fam in latents.items()
                                                           if cls.needs <= fam.offers()))
                                for name, cls in estimators.items()),
        "NET_NAMES": tuple(NETS),
        "DISCRETE_LATENTS": tuple(name for name, cls in latents.items() if cls.discrete),
        "AUTOENCODER_LATENTS": tuple(name for name, cls in latents.items() if cls.autoencoder),
        "LATENT_KWARGS": {name: signature_of(cls) for name, cls in latents.items()},
        "ESTIMATOR_KWARGS": {name: signature_of(cls) for name, cls in estimators.items()},
    }


def type_source(tp: Any) -> str:
    """An annotation as Python source: int, float | None, list[int], Any."""
    if tp is Any:
        return "Any"
    if tp is type(None):
        return "None"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(type_source(arm) for arm in typing.get_args(tp))
    if typing.get_origin(tp) is not None:
        return f"{typing.get_origin(tp).__name__}[{', '.join(type_source(a) for a in typing.get_args(tp))}]"
    return tp.__name__


def _signature_source(name: str, sig: Signature) -> str:
    """One row of LATENT_KWARGS / ESTIMATOR_KWARGS, on two lines when one would pass 120 characters."""
    if sig is None:
        return f"    {name!r}: None,"
    params = f"{{{', '.join(f'{k!r}: {type_source(t)}' for k, t in sig[1].items())}}}"
    line = f"    {name!r}: ({sig[0]!r}, {params}),"
    return line if len(line) <= 120 else f"    {name!r}: ({sig[0]!r},\n{' ' * (len(name) + 9)}{params}),"


def tables_source(tables: dict[str, Any]) -> str:
    """The registry tables as Python source, in this module's layout (between `# fmt: off` and `# fmt: on`)."""
    out = ["LATENT_ROWS = ("] + [f"    ({n!r},\n     {t!r})," for n, t in tables["LATENT_ROWS"]]
    out += [")", "ESTIMATOR_ROWS = ("]
    out += [f"    ({n!r},\n     {t!r},\n     {f!r})," for n, t, f in tables["ESTIMATOR_ROWS"]]
    out += [")", f"NET_NAMES = {tables['NET_NAMES']!r}", f"DISCRETE_LATENTS = {tables['DISCRETE_LATENTS']!r}",
            f"AUTOENCODER_LATENTS = {tables['AUTOENCODER_LATENTS']!r}"]
    for key in ("LATENT_KWARGS", "ESTIMATOR_KWARGS"):
        out += [f"{key} = {{"] + [_signature_source(n, s) for n, s in tables[key].items()] + ["}"]
    return "\n".join(out)


if __name__ == "__main__":
    print(tables_source(live_tables()))
