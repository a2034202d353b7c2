"""Label fidelity (pyro_vae.fidelity): the metric's mechanics and what a trained run reports."""

import json
import math

import pytest
import torch

from pyro_vae import fidelity
from pyro_vae.cli import main
from pyro_vae.models.conditional import one_hot
from pyro_vae.config import Config
from pyro_vae.likelihoods import build_likelihood
from pyro_vae.training import prepare_data, train

NUM_CLASSES = 10
PER_LABEL = 100
SAMPLES = NUM_CLASSES * PER_LABEL


@pytest.fixture(scope="module")
def digits():
    return prepare_data(Config())


@pytest.fixture(scope="module")
def classifier(digits):
    return fidelity.fit_label_classifier(digits.train_x, digits.train_y, NUM_CLASSES,
                                         digits.test_x, digits.test_y)


class _Sampler:
    """A stand-in for a labelled model: decoder logits from a rule over (z, y)."""

    num_classes = NUM_CLASSES
    likelihood = build_likelihood("bernoulli")

    def __init__(self, rule):
        self.rule = rule

    def generate(self, num_samples, device="cpu", labels=None):
        z = torch.randn(num_samples, 2)
        return z, self.rule(z, labels)


@pytest.mark.slow
def test_the_classifier_reads_real_test_digits(classifier):
    # Its own test accuracy is reported beside every fidelity figure; a linear model scores
    # about 0.84 on these binarized 8x8 test digits, chance 0.1.
    assert classifier.test_accuracy > 0.8


@pytest.mark.slow
def test_a_model_that_ignores_the_label_scores_chance(digits, classifier):
    """Samples that are training images picked regardless of y.

    Whatever share s_c of them the classifier calls c, the requested labels are uniform, so
    the expected fidelity is Σ_y s_y / C = 1/C exactly; its binomial standard error over 1,000
    samples is √(0.1·0.9/1000) = 0.0095, and 4 of them are allowed.
    """
    logits = torch.logit(digits.train_x.clamp(0.02, 0.98))
    sampler = _Sampler(lambda z, y: logits[torch.randint(len(logits), (len(z),))])
    means, draws = fidelity.measure_label_fidelity(sampler, classifier, PER_LABEL, seed=1)
    bound = 4 * math.sqrt(0.1 * 0.9 / SAMPLES)
    assert abs(means.overall - 0.1) < bound
    assert abs(draws.overall - 0.1) < bound
    assert means.num_samples == SAMPLES
    assert [sum(row) for row in means.confusion] == [PER_LABEL] * NUM_CLASSES


@pytest.mark.slow
def test_a_model_that_copies_class_prototypes_scores_near_one(digits, classifier):
    """Samples whose mean is the class's mean training image: recognised almost always."""
    prototypes = torch.stack([digits.train_x[digits.train_y == c].mean(0)
                              for c in range(NUM_CLASSES)])
    logits = torch.logit(prototypes.clamp(0.02, 0.98))
    sampler = _Sampler(lambda z, y: one_hot(y, NUM_CLASSES) @ logits)
    means, draws = fidelity.measure_label_fidelity(sampler, classifier, PER_LABEL, seed=1)
    assert means.overall > 0.98
    assert min(means.per_label) > 0.9
    # Bernoulli draws of a prototype are noisier than its mean, but still far above chance.
    assert draws.overall > 0.8


@pytest.mark.slow
def test_the_report_counts_requested_against_recognised(classifier):
    images = torch.zeros(6, 64)
    requested = torch.tensor([3, 3, 3, 5, 5, 5])
    report = fidelity.fidelity_of(images, requested, classifier)
    recognised = int(classifier.predict(images[:1])[0])
    assert report.num_samples == 6
    assert report.confusion[3][recognised] == 3 and report.confusion[5][recognised] == 3
    assert report.per_label[0] is None  # never requested
    assert report.overall == pytest.approx(
        (3 * (recognised == 3) + 3 * (recognised == 5)) / 6)
    assert "label fidelity (means)" in fidelity.describe(report)


@pytest.mark.slow
def test_the_classifier_survives_a_round_trip(classifier, digits, tmp_path):
    fidelity.save_label_classifier(tmp_path / "c.pt", classifier)
    loaded = fidelity.load_label_classifier(tmp_path / "c.pt")
    assert torch.equal(loaded.predict(digits.test_x), classifier.predict(digits.test_x))
    assert loaded.test_accuracy == classifier.test_accuracy


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fidelity") / "cvae"
    config = Config().with_overrides({"model": {"kind": "cvae"}, "train": {"epochs": 10},
                                      "evaluate": {"num_samples": 5}})
    return run_dir, train(config, run_dir)


@pytest.mark.slow
def test_a_short_cvae_training_follows_the_label(cvae_run):
    """10 epochs on the 8x8 digits (210 steps): far above the chance level 0.1, whose
    standard error over the 1,000 samples is 0.0095."""
    run_dir, summary = cvae_run
    assert summary["label_fidelity"] > 0.1 + 30 * math.sqrt(0.1 * 0.9 / SAMPLES)
    assert summary["label_fidelity_samples"] == SAMPLES
    assert len(summary["label_fidelity_per_label"]) == NUM_CLASSES
    assert 0.8 < summary["fidelity_classifier_test_accuracy"] <= 1
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["label_fidelity"] == summary["label_fidelity"]
    assert (run_dir / fidelity.CONFUSION_PICTURE).exists()
    assert (run_dir / fidelity.CLASSIFIER_FILE).exists()


@pytest.mark.slow
def test_sample_with_a_label_reports_its_fidelity(cvae_run, capsys, tmp_path):
    run_dir, _ = cvae_run
    assert main(["sample", str(run_dir), "--label", "4", "--n", "50",
                 "--out", str(tmp_path / "four.npz")]) == 0
    out = capsys.readouterr().out
    assert "label fidelity (means)" in out and "label fidelity (draws)" in out
    assert "per label (%): 4:" in out


@pytest.mark.slow
def test_m2_reports_the_fidelity_of_its_conditional_generation(tmp_path):
    config = Config().with_overrides({"model": {"kind": "m2"}, "data": {"num_labels": 100},
                                      "train": {"epochs": 2},
                                      "evaluate": {"num_samples": 2,
                                                   "label_fidelity_samples": 20}})
    summary = train(config, tmp_path / "m2")
    assert summary["label_fidelity_samples"] == 20 * NUM_CLASSES
    assert 0 <= summary["label_fidelity"] <= 1
    assert sum(map(sum, summary["label_confusion"])) == 20 * NUM_CLASSES
