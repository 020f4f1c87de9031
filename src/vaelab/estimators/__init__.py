"""Gradient estimators: `(model, x, kl_weight) -> Estimate`, one registered class each.

Importing the package registers every estimator: the pathwise and relaxed ones (`pathwise`) and the score-function
family (`score_function`), on the base classes and registry of `base`."""

from vaelab.estimators import pathwise, score_function  # noqa: F401  (registers every estimator)
