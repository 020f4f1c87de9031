"""Sample quality in numbers: distances between samples and the test set in a digit classifier's feature space.

All scores use the penultimate layer of a DigitCNN (evaluation/classifier.py; the shipped MNIST one by default), never
Inception: `fid_classifier_features` is "FID on MNIST-classifier features" and is not comparable with
published Inception FIDs. A classifier scores only runs on the data it was trained on (`check_classifier_data`:
the shipped one mnist and mnist-static, another the data its info records): its features describe only those.
- Fréchet distance between Gaussian fits of the two feature sets (Heusel et al. 2017, eq. 6), computed by
  torchmetrics' FrechetInceptionDistance with our features (float64 moments, eigenvalue matrix square root).
- Improved precision and recall (Kynkäänniemi et al. 2019, eqs. 1-3): the share of samples inside the
  test set's k-NN manifold (quality) and of test images inside the samples' manifold (coverage). Precision
  alone does not flag far out-of-distribution images: pure Bernoulli(1/2) noise maps inside the real digits'
  balls (precision 0.98), so read it with FID, recall and the digit scores, which all flag noise.
- Digit coverage: the entropy of the classifier's predicted-digit frequencies (log 10 nats = all ten equally
  often) and the mean confidence (mean max softmax; low for blurry or non-digit images).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Categorical

from vaelab.core.errors import VaelabError
from vaelab.core.progress import bar, stage
from vaelab.evaluation.classifier import MNIST_FAMILY, DigitCNN, data_identity

FEATURES_NOTE = "Frechet distance on {}-d penultimate features of the vaelab digit classifier (not Inception FID)"


class _Precomputed(nn.Module):
    """Identity 'feature extractor' for torchmetrics: features are computed once and shared by all scores."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^1/2) between Gaussian fits of features [N, F] and [M, F]."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real) < 2 or len(fake) < 2 or real.shape[1] != fake.shape[1]:
        raise VaelabError(f"Fréchet distance needs >= 2 feature rows on each side of equal width, got "
                          f"{tuple(real.shape)} and {tuple(fake.shape)}: draw more samples")
    fid = FrechetInceptionDistance(feature=_Precomputed(real.shape[1])).to(real.device)
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    return float(fid.compute())


def knn_radii(features: Tensor, k: int = 3, chunk: int = 1000) -> Tensor:
    """Distance [N] from each point to its k-th nearest other point: the radius of its manifold ball."""
    # the point itself is at distance 0, so the k-th other neighbour is the (k+1)-th smallest distance
    return torch.cat([torch.cdist(part, features).kthvalue(k + 1, dim=1).values for part in features.split(chunk)])


def manifold_share(points: Tensor, centers: Tensor, radii: Tensor, chunk: int = 1000) -> float:
    """Share of points [M, F] inside at least one ball (centers [N, F], radii [N]): Kynkäänniemi et al. eq. 2."""
    inside = [(torch.cdist(part, centers) <= radii).any(1) for part in points.split(chunk)]   # [chunk] each
    return torch.cat(inside).double().mean().item()


def precision_recall(real: Tensor, fake: Tensor, k: int = 3, chunk: int = 1000) -> tuple[float, float]:
    """Improved precision (fake inside the real manifold) and recall (real inside the fake manifold)."""
    if k < 1 or min(len(real), len(fake)) <= k:
        raise VaelabError(f"precision/recall with k={k} needs more than k images on each side, got "
                          f"{len(real)} and {len(fake)}: draw more samples or lower --k")
    precision = manifold_share(fake, real, knn_radii(real, k, chunk), chunk)
    recall = manifold_share(real, fake, knn_radii(fake, k, chunk), chunk)
    return precision, recall


def digit_coverage(probs: Tensor) -> dict:
    """Entropy of the predicted-digit frequencies (nats, and as a share of log 10) and mean confidence."""
    counts = torch.bincount(probs.argmax(1), minlength=probs.shape[1])          # [10]
    entropy = Categorical(probs=counts.double() / counts.sum()).entropy().item()
    return {"digit_entropy_nats": entropy, "digit_entropy_fraction": entropy / math.log(probs.shape[1]),
            "mean_confidence": probs.max(1).values.mean().item(), "digit_counts": counts.tolist()}


@torch.no_grad()
def classify(classifier: DigitCNN, x: Tensor, batch_size: int = 1000, progress: bool = False,
             desc: str = "classifier features") -> tuple[Tensor, Tensor]:
    """Penultimate features [N, F] and class probabilities [N, 10] of images x [N, P]; `progress`: a bar over the
    batches, named `desc` (core/progress.py)."""
    device = next(classifier.parameters()).device
    features = torch.cat([classifier.features(part.to(device).float())
                          for part in bar(x.split(batch_size), desc, progress)])
    return features, classifier.head(features).softmax(1)


def classifier_refusal(classifier: DigitCNN, source: str, path: str | None = None, run: str = "RUN") -> str | None:
    """Why `classifier` (the shipped one when `path` is None) cannot score samples of a run trained on `source`, as
    one line with the fix; None when it was trained on that data (the MNIST family counts as one data set)."""
    fix = (f"train one for it with `vaelab classifier train --data {source} --out C.safetensors`, then "
           f"`vaelab quality {run} --classifier C.safetensors`")
    trained = classifier.info.get("data")
    if trained is None:
        return f"classifier {path} does not record the data it was trained on: {fix}"
    if data_identity(str(trained)) == data_identity(source):
        return None
    if path is None:
        return (f"sample-quality scores need a classifier trained on the run's data: the shipped classifier knows "
                f"MNIST digits (it scores {' and '.join(MNIST_FAMILY)} runs only) and this run's data is {source}: "
                f"{fix}")
    return (f"classifier {path} was trained on {trained} but this run's data is {source}, so its features do not "
            f"describe these images: {fix}")


def check_classifier_data(classifier: DigitCNN, source: str, path: str | None = None, run: str = "RUN") -> None:
    """Raise the VaelabError of `classifier_refusal` when the classifier was not trained on the run's data."""
    reason = classifier_refusal(classifier, source, path, run)
    if reason is not None:
        raise VaelabError(reason)


def check_shape(classifier: DigitCNN, x: Tensor, what: str) -> None:
    """Refuse images whose pixel count does not fit the classifier, naming the --classifier fix."""
    h, w = classifier.image_shape
    if x.ndim != 2 or x.shape[1] != h * w:
        trained_on = classifier.info.get("data", "unknown data")
        raise VaelabError(f"the classifier is for {h}x{w} images ({trained_on}) but the {what} are {tuple(x.shape)}: "
                          "train one with `vaelab classifier train --data SOURCE --out PATH`, pass --classifier PATH")


def quality_scores(samples: Tensor, reference: Tensor, classifier: DigitCNN, k: int = 3,
                   batch_size: int = 1000, progress: bool = False) -> dict:
    """All quality scores of samples [N, P] against reference images [M, P] (e.g. the test set); `progress`:
    a bar or a line per stage (core/progress.py)."""
    check_shape(classifier, samples, "samples")
    check_shape(classifier, reference, "reference images")
    fake, fake_probs = classify(classifier, samples, batch_size, progress,
                                f"quality: features of {len(samples)} samples")
    real, real_probs = classify(classifier, reference, batch_size, progress,
                                f"quality: features of {len(reference)} reference images")
    stage(f"quality: precision and recall, k={k} nearest neighbours", progress)
    precision, recall = precision_recall(real, fake, k, batch_size)
    reference_coverage = digit_coverage(real_probs)
    stage("quality: Frechet distance of the features", progress)
    return {"fid_classifier_features": frechet_distance(real, fake), "precision": precision, "recall": recall,
            "k": k, **digit_coverage(fake_probs),
            "reference_digit_entropy_fraction": reference_coverage["digit_entropy_fraction"],
            "reference_mean_confidence": reference_coverage["mean_confidence"],
            "n_samples": len(samples), "n_reference": len(reference),
            "features": FEATURES_NOTE.format(classifier.num_features)}
