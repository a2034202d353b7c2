"""The feature score (SSD's Mahalanobis distance in the transformation classifier's features):
its distance against closed forms, its features against the classifier's own layers."""

import pytest
import torch

from pyro_vae.errors import ConfigError
from pyro_vae.feature_score import FeatureDistance, classifier_features
from pyro_vae.transformation_score import TransformationClassifier


def test_the_distance_of_gaussian_features_is_chi_square_with_d_degrees_of_freedom():
    """For x ~ N(m, Σ) and a fit to many draws, (x − m)ᵀ Σ⁻¹ (x − m) ~ χ²(D): mean D,
    variance 2D; the tolerance is five standard errors of the mean of n draws."""
    generator = torch.Generator().manual_seed(0)
    dims, count = 8, 20000
    # A covariance of condition number 8 (Ledoit-Wolf's shrinkage is then negligible):
    # Σ = Q diag(1..8) Qᵀ with Q a random rotation.
    rotation, _ = torch.linalg.qr(torch.randn(dims, dims, generator=generator,
                                              dtype=torch.float64))
    mixing = rotation @ torch.diag(torch.arange(1, dims + 1, dtype=torch.float64).sqrt())
    mean = torch.randn(dims, generator=generator, dtype=torch.float64)

    def draw(n):
        return torch.randn(n, dims, generator=generator, dtype=torch.float64) @ mixing.T + mean

    distance = FeatureDistance().fit(draw(count))
    scores = distance.score(draw(count))
    assert scores.mean() == pytest.approx(dims, abs=5 * (2 * dims / count) ** 0.5)
    assert distance.score(mean[None])[0] == pytest.approx(0.0, abs=0.01)
    # And the precision against the exact one: Σ = A Aᵀ.
    exact = torch.linalg.inv(mixing @ mixing.T)
    point = mean + torch.ones(dims, dtype=torch.float64)
    assert distance.score(point[None])[0] == pytest.approx(
        float((point - mean) @ exact @ (point - mean)), rel=0.02)


def test_the_distance_grows_away_from_the_in_distribution_features():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(500, 16, generator=generator)
    distance = FeatureDistance().fit(features)
    near, far = torch.zeros(1, 16), torch.full((1, 16), 3.0)
    assert distance.score(far)[0] > 10 * distance.score(near)[0]


def test_too_few_images_are_refused_in_words():
    with pytest.raises(ConfigError, match="at least 3"):
        FeatureDistance().fit(torch.zeros(2, 4))


def test_the_fewest_images_allowed_give_a_covariance_of_full_rank():
    # Two images give Ledoit-Wolf no shrinkage (Σ of rank one, the line between them);
    # from three on the shrinkage makes Σ invertible, so every direction is measured.
    features = torch.randn(3, 16, generator=torch.Generator().manual_seed(0)).double()
    fitted = FeatureDistance().fit(features)
    assert torch.linalg.matrix_rank(fitted.precision) == 16


def test_the_features_are_the_classifiers_hidden_layer_of_the_untransformed_image():
    torch.manual_seed(0)
    classifier = TransformationClassifier((1, 16, 16), 72).eval()
    x = torch.rand(7, 256)
    features = classifier_features(classifier, x, batch_size=3)
    assert features.shape == (7, 128) and features.dtype == torch.float64
    assert (features >= 0).all()  # after the ReLU
    with torch.no_grad():
        logits = classifier.head[-1](features.float())
        assert torch.allclose(logits, classifier(x.reshape(7, 1, 16, 16)), atol=1e-5)


def test_the_library_fits_the_score_on_the_first_half_and_reads_it_on_the_second():
    """As the bank of codes: the mean and covariance from the first half of the reference
    images (``reference_halves``), the reference values (which calibrate it and Fisher's
    part) from the second; read one-sided, a distance of 0 is never flagged."""
    from pyro_vae import anomaly
    from pyro_vae.config import Config
    from pyro_vae.models import build_vae

    torch.manual_seed(0)
    vae = build_vae(Config().with_overrides({"model": {"hidden_dims": [8], "latent_dim": 2}})
                    .model, (1, 8, 8)).eval()
    classifier = TransformationClassifier((1, 8, 8), 72).eval()
    reference_x = (torch.rand(40, 64) < 0.3).float()
    other = (torch.rand(10, 64) < 0.6).float()
    scored, reference = anomaly.score_with_reference(
        vae, reference_x, {"other": other}, (1, 8, 8), ("features",),
        anomaly.ScoreSettings(num_samples=2), classifier=classifier)
    fit_half, reference_half = anomaly.reference_halves(len(reference_x))
    features = classifier_features(classifier, reference_x)
    expected = FeatureDistance().fit(features[fit_half])
    assert reference.features.fit_images == len(fit_half) == 20
    assert torch.allclose(reference.scores["features"], expected.score(features[reference_half]))
    assert torch.allclose(scored["other"]["features"],
                          expected.score(classifier_features(classifier, other)))
    assert not anomaly.flagged(reference, "features", {"features": torch.zeros(1)}, 0.05).any()
    with pytest.raises(ConfigError, match="transformation classifier's features"):
        anomaly.score_with_reference(vae, reference_x, {"other": other}, (1, 8, 8),
                                     ("features",), anomaly.ScoreSettings(num_samples=2))
