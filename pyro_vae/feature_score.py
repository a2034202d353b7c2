"""The feature score: how far an image's features in the transformation classifier lie from
the in-distribution images' features.

The transformation classifier of :mod:`pyro_vae.transformation_score` learns, to tell 72 flips,
moves and quarter turns of the training images apart, features of their shape and orientation.
SSD (Sehwag, Chiang & Mittal 2021, "SSD: A unified framework for self-supervised outlier
detection", ICLR) scores an image by the Mahalanobis distance of its self-supervised features
to those of the in-distribution images; Lee et al. (2018, "A simple unified framework for
detecting out-of-distribution samples and adversarial attacks") with a classifier's features.
Here the features φ(x) are the classifier's hidden layer (128 units, after the ReLU) for the
untransformed image, and with the mean m and covariance Σ of φ over held-out in-distribution
images (Σ by Ledoit & Wolf's (2004) shrinkage, "A well-conditioned estimator for large-
dimensional covariance matrices", well conditioned for 128 features from a few hundred images)

    s(x) = (φ(x) − m)ᵀ Σ⁻¹ (φ(x) − m),

higher = more anomalous. SSD's single-cluster form; no setting is tuned (the layer is the
classifier's only hidden layer, the shrinkage Ledoit & Wolf's closed form).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pyro_vae.errors import ConfigError
from pyro_vae.transformation_score import TransformationClassifier

#: The fewest in-distribution images the covariance is fitted on: with two, Ledoit-Wolf's
#: shrinkage is exactly zero and Σ has rank one (the line between them); three is the first
#: size whose shrinkage is positive.
MIN_FIT_IMAGES = 3


@torch.no_grad()
def classifier_features(classifier: TransformationClassifier, x: torch.Tensor,
                        batch_size: int = 500) -> torch.Tensor:
    """φ(x): the hidden layer of ``classifier`` for each of the flattened, untransformed images
    ``x`` (computed on the classifier's device, returned on the CPU as float64)."""
    classifier.eval()
    device = next(classifier.parameters()).device
    hidden = classifier.head[:-1]  # flatten, linear, ReLU: all but the output layer
    found = []
    for start in range(0, len(x), batch_size):
        batch = x[start: start + batch_size].to(device).reshape(-1, *classifier.image_shape)
        found.append(hidden(classifier.features(batch)).double().cpu())
    if not found:
        return torch.empty(0, classifier.head[-1].in_features, dtype=torch.float64)
    return torch.cat(found)


@dataclass
class FeatureDistance:
    """The squared Mahalanobis distance to in-distribution features (module docstring)."""

    mean: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    precision: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    fit_images: int = 0

    def fit(self, features: torch.Tensor) -> "FeatureDistance":
        """Fit m and the Ledoit-Wolf Σ to ``features`` [n, D] of in-distribution images."""
        from sklearn.covariance import LedoitWolf

        if len(features) < MIN_FIT_IMAGES:
            raise ConfigError(f"the feature score fits a covariance to at least "
                              f"{MIN_FIT_IMAGES} in-distribution images, but got "
                              f"{len(features)}; score more validation images (raise --limit).")
        values = features.double().cpu().numpy()
        estimate = LedoitWolf().fit(values)
        self.mean = torch.from_numpy(estimate.location_).double()
        # Ledoit-Wolf's shrinkage towards a multiple of the identity keeps Σ invertible, from
        # three images on, even for hidden units that never fire on these images.
        self.precision = torch.linalg.pinv(torch.from_numpy(estimate.covariance_).double(),
                                           hermitian=True)
        self.fit_images = len(values)
        return self

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """s(x) for each row of ``features``."""
        centred = features.double().cpu() - self.mean
        return ((centred @ self.precision) * centred).sum(-1)
