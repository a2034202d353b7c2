"""Labels met with odd data and odd settings: the label-conditional priors (VampPrior
pseudo-inputs per class, their default size), M2's labelled subset, labels outside the classes
or missing from the training images, label fidelity, the label grid of `sample`, and a
conditional model scored on unlabelled images.
"""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from pyro_vae import fidelity
from pyro_vae.cli.evaluate import format_summary
from pyro_vae.config import Config
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.likelihoods import build_likelihood
from pyro_vae.models import build_vae
from pyro_vae.models.semisupervised import prepare as prepare_m2
from pyro_vae.training import missing_classes_warning, prepare_data, train

from helpers import QUICK_TRAIN, QUICK_TRAIN_PCA, digits_npz, run_cli


# --- the label-conditional VampPrior's start ----------------------------------------------------

@pytest.mark.parametrize("keep,needle", [
    (lambda y: (y != 7) | (np.arange(len(y)) % 30 == 0), "Use [prior] components = 40 or less"),
    (lambda y: y != 7, "class 7 has 0 training images"),
])
def test_a_class_with_too_few_images_for_its_pseudo_inputs(tmp_path, capsys, keep, needle):
    dataset = digits_npz(tmp_path / "d.npz", keep)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--model", "cvae", "--prior", "vamp", "--dataset",
                           dataset, "--latent-dim", 2, *QUICK_TRAIN,
                           "--out", out)
    assert code == 2 and needle in err and "prior = \"mixture\"" in err
    assert not out.exists()


def test_a_vamp_cvae_on_unlabelled_data_is_refused_by_the_label_check(tmp_path, capsys):
    from sklearn.datasets import load_digits
    np.savez(tmp_path / "x.npz", x=(load_digits().data / 16).astype(np.float32))
    code, _, err = run_cli(capsys, "train", "--model", "cvae", "--prior", "vamp",
                           "--prior-components", 10, "--dataset", f"file:{tmp_path / 'x.npz'}",
                           *QUICK_TRAIN, "--out", tmp_path / "run")
    assert code == 2 and "has no labels" in err and not (tmp_path / "run").exists()


def test_m2_starts_its_labelled_vamp_prior_at_its_labelled_images_only():
    """M2 with 20 labels sees 2 labelled images per class: its pseudo-inputs must be those
    images (the other labels are hidden from it), and 5 per class are refused."""
    config = Config().with_overrides({
        "model": {"kind": "m2", "prior": "vamp", "prior_components": 20, "hidden_dims": [8],
                  "latent_dim": 2},
        "data": {"num_labels": 20}})
    data = prepare_data(config)
    vae = build_vae(config.model, data.image_shape, num_data=len(data.train_x))
    _, (labelled, _, _, _) = prepare_m2(config, data, vae, None)
    starts = torch.sigmoid(vae.prior.pseudo_inputs.detach())
    expected = data.train_x[labelled].clamp(0.05, 0.95)
    # every pseudo-input is one of the labelled images, of its own class
    distance = torch.cdist(starts.double(), expected.double())
    nearest = distance.argmin(1)
    assert torch.allclose(distance.min(1).values, torch.zeros(20, dtype=torch.float64),
                          atol=1e-5)
    assert torch.equal(data.train_y[labelled][nearest], vae.prior.component_labels)
    more = config.with_overrides({"model": {"prior_components": 50}})
    vae = build_vae(more.model, data.image_shape, num_data=len(data.train_x))
    with pytest.raises(DataError, match="2 labelled training images.*\\[prior\\] components = 20"):
        prepare_m2(more, data, vae, None)


@pytest.mark.parametrize("prior", ["mixture", "vamp"])
@pytest.mark.parametrize("classes", [3, 7, 10, 600])
def test_the_default_size_of_a_labelled_prior_fits_any_number_of_classes(prior, classes):
    """With no prior_components, a cvae of C classes gets 500 components rounded down to a
    multiple of C (it was refused for a default 500 the user never set)."""
    config = Config().with_overrides({"model": {"kind": "cvae", "prior": prior,
                                                "num_classes": classes, "hidden_dims": [8]}})
    vae = build_vae(config.model, (1, 8, 8))
    assert vae.prior.per_class == max(1, 500 // classes)
    assert len(vae.prior.component_labels) == vae.prior.per_class * classes


# --- label fidelity with classes missing from the data -------------------------------------------

@pytest.mark.slow
def test_fidelity_leaves_out_labels_the_classifier_never_saw(tmp_path, capsys):
    """Digits of classes 0-4 only, a 10-class model: the classifier never predicts 5-9, so
    those labels are not requested (their share is None, not a 0 that drags the mean down);
    the classes seen survive a save and load; evaluate's text names the ones left out."""
    data = prepare_data(Config())
    keep = data.train_y < 5
    classifier = fidelity.fit_label_classifier(data.train_x[keep], data.train_y[keep], 10,
                                               steps=60)
    assert classifier.classes_seen == [0, 1, 2, 3, 4]
    fidelity.save_label_classifier(tmp_path / "c.pt", classifier)
    assert fidelity.load_label_classifier(tmp_path / "c.pt").classes_seen == [0, 1, 2, 3, 4]
    prototypes = torch.stack([data.train_x[data.train_y == c].mean(0) for c in range(10)])
    logits = torch.logit(prototypes.clamp(0.02, 0.98))

    class Sampler:  # decodes each requested label's mean training image
        num_classes = 10
        likelihood = build_likelihood("bernoulli")

        def generate(self, num_samples, device="cpu", labels=None):
            return torch.zeros(num_samples, 2), logits[labels]

    means, _ = fidelity.measure_label_fidelity(Sampler(), classifier, 20)
    assert means.num_samples == 5 * 20
    assert means.per_label[5:] == [None] * 5 and None not in means.per_label[:5]
    assert means.overall > 0.9  # prototypes of the classes it knows
    text = format_summary({"dataset": "d", "num_test_datapoints": 1, "test_elbo": 0.0,
                           "test_elbo_stderr": 0.0, "test_log_likelihood": 0.0,
                           "test_log_likelihood_stderr": 0.0, "num_importance_samples": 1,
                           "active_units": 0, "latent_dim": 2,
                           **fidelity.summary_fields(means, means)})
    assert "not measured, no training images: 5, 6, 7, 8, 9" in text
    assert "no better than chance" not in text
    fields = {**fidelity.summary_fields(means, means), "fidelity_classifier_test_accuracy": 0.0}
    text = format_summary({"dataset": "d", "num_test_datapoints": 1, "test_elbo": 0.0,
                           "test_elbo_stderr": 0.0, "test_log_likelihood": 0.0,
                           "test_log_likelihood_stderr": 0.0, "num_importance_samples": 1,
                           "active_units": 0, "latent_dim": 2, **fields})
    assert "no better than chance on the test images" in text


@pytest.mark.parametrize("unknown", [float("nan"), None])  # NaN when scored, null in JSON
def test_an_error_bar_of_one_datapoint_prints_as_a_dash(unknown):
    text = format_summary({"dataset": "d", "num_test_datapoints": 1, "test_elbo": -3.0,
                           "test_elbo_stderr": unknown, "test_log_likelihood": -2.0,
                           "test_log_likelihood_stderr": unknown, "num_importance_samples": 1,
                           "active_units": 0, "latent_dim": 2})
    assert "ELBO: -3.000 ± - nats" in text and "-2.000 ± - nats" in text
    assert "nan" not in text


@pytest.mark.parametrize("kind", ["cvae", "m2"])
@pytest.mark.parametrize("relabel,needle", [
    (lambda y: np.where(y == 9, 11, y), "Set [kind] num_classes = 12"),
    (lambda y: y - 1, "no negative labels"),
])
def test_labels_outside_the_classes_say_what_to_do(tmp_path, capsys, kind, relabel, needle):
    dataset = digits_npz(tmp_path / "d.npz", relabel=relabel)
    code, _, err = run_cli(capsys, "train", "--model", kind, "--dataset", dataset, *QUICK_TRAIN,
                           "--out", tmp_path / "run")
    assert code == 2 and needle in err and not (tmp_path / "run").exists()


# --- the label grid with a label-conditional prior of one's own ------------------------------------

class _ClassMeans(torch.nn.Module):
    """p(z|y) = N(z; (10 y, 0), I) without ``shared_draws`` (as a plugin's prior may be);
    without labels the label-free marginal."""

    label_conditional = True
    latent_dim = 2

    def forward(self, batch_shape, device, dtype, labels=None):
        if labels is None:
            labels = torch.randint(10, batch_shape)
        loc = torch.stack([10.0 * labels.to(dtype), torch.zeros(labels.shape, dtype=dtype)], -1)
        return torch.distributions.Independent(torch.distributions.Normal(loc, 1.0), 1)


def test_the_label_grid_draws_each_row_from_its_own_labels_prior():
    """Each row of `sample --n` was decoded at z from the label-free marginal when the prior
    had no shared draws: row y's codes must have mean (10 y, 0), within 6 standard errors."""
    config = Config().with_overrides({"model": {"kind": "cvae", "prior": "normal",
                                                "hidden_dims": [8], "latent_dim": 2}})
    vae = build_vae(config.model, (1, 8, 8))
    vae.prior = _ClassMeans()
    seen = {}
    decoder = vae.decoder.forward
    vae.decoder.forward = lambda z, y: seen.update(z=z, y=y) or decoder(z, y)
    torch.manual_seed(0)
    columns = 400
    vae.label_grid(columns)
    z, y = seen["z"], seen["y"]
    assert torch.equal(y, torch.arange(10).repeat_interleave(columns))
    means = z.reshape(10, columns, 2).mean(1)
    expected = torch.stack([10.0 * torch.arange(10.0), torch.zeros(10)], -1)
    assert (means - expected).abs().max() < 6 / columns ** 0.5


def test_a_prior_registered_label_conditional_must_say_so_on_its_module(monkeypatch):
    """Declared in its registration but not on its class, the model would call it without
    labels: p(z) trained in place of p(z|y), with no sign of it."""
    from pyro_vae import registry
    from pyro_vae.errors import ConfigError

    class Forgetful(_ClassMeans):
        label_conditional = False

    entries = dict(registry.PRIORS._loaded())
    monkeypatch.setattr(registry.PRIORS, "_entries", entries)
    registry.PRIORS.register("forgetful_test_prior", capabilities={"label_conditional"})(
        lambda config, context: Forgetful())
    for kind in ("cvae", "m2"):
        config = Config().with_overrides({"model": {"kind": kind,
                                                    "prior": "forgetful_test_prior",
                                                    "hidden_dims": [8], "latent_dim": 2}})
        with pytest.raises(ConfigError, match="no class attribute label_conditional = True"):
            build_vae(config.model, (1, 8, 8))


# --- raw samples of a labelled run ------------------------------------------------------------------

@pytest.mark.slow
def test_raw_samples_of_a_labelled_run_carry_their_labels(tmp_path, capsys):
    """`sample --out x.npz` of a cvae wrote x, mean and z but not which label each was drawn
    for (they cycle through the labels without --label)."""
    run = tmp_path / "run"
    train(Config().with_overrides({
        "model": {"kind": "cvae", "hidden_dims": [8], "latent_dim": 2, "prior_components": 10},
        "train": {"epochs": 1, "batch_size": 256},
        "evaluate": {"num_samples": 1, "label_fidelity_samples": 0}}), run)
    for argv, expected in ((["--n", 13], np.arange(13) % 10), (["--n", 4, "--label", 7], [7] * 4)):
        code, _, err = run_cli(capsys, "sample", run, *argv, "--out", tmp_path / "s.npz")
        assert code == 0, err
        saved = np.load(tmp_path / "s.npz")
        assert saved["y"].tolist() == list(expected) and len(saved["x"]) == len(expected)
    # A damaged classifier file costs the fidelity line, not the samples already written.
    (run / "label_classifier.pt").write_bytes(b"junk")
    code, out, err = run_cli(capsys, "sample", run, "--label", 2, "--n", 3, "--out",
                             tmp_path / "s.png")
    assert code == 0 and (tmp_path / "s.png").exists()
    assert "label fidelity not measured" in out and "label_classifier.pt" in out
    # Another run's classifier (other image size and labels) ended in a shape traceback.
    fidelity.save_label_classifier(run / "label_classifier.pt", fidelity.LabelClassifier(5, 3))
    code, out, err = run_cli(capsys, "sample", run, "--label", 7, "--n", 3, "--out",
                             tmp_path / "s.png")
    assert code == 0 and "fitted to 5 values and 3 labels" in out


def test_classes_without_training_images_are_warned_about():
    config = Config().with_overrides({"model": {"kind": "cvae", "hidden_dims": [8]}})
    data = prepare_data(config)
    assert missing_classes_warning(config, data) is None
    data.train_y = data.train_y % 3
    warning = missing_classes_warning(config, data)
    assert "7 of the model's 10 classes" in warning and "labels 3, 4, 5, 6, 7, 8, 9" in warning
    assert missing_classes_warning(Config(), data) is None  # an unlabelled kind


@pytest.mark.slow
def test_sample_n_on_a_labelled_run_writes_n_images(trained, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "sample", trained["cvae"], "--n", 5, "--out",
                           tmp_path / "five.png")
    assert code == 0 and "wrote 5 samples" in out
    code, out, _ = run_cli(capsys, "sample", trained["cvae"], "--n", 25, "--out",
                           tmp_path / "grid.png")
    assert code == 0 and "wrote 20 samples" in out and "rounded down" in out


@pytest.mark.slow
def test_evaluating_a_cvae_on_unlabelled_images_says_what_to_do(tmp_path, capsys):
    """The refusal told a user who evaluates to *train* on a labelled dataset."""
    np.savez(tmp_path / "x.npz", x=(load_digits().data[:200] / 16).astype(np.float32))
    run = tmp_path / "cvae"
    assert run_cli(capsys, "train", "--model", "cvae", *QUICK_TRAIN_PCA, "--batch-size", "256",
                   "--out", run)[0] == 0
    code, _, err = run_cli(capsys, "evaluate", run, "--dataset", f"file:{tmp_path / 'x.npz'}",
                           "--num-samples", 2)
    assert code == 2 and "Train it" not in err
    assert "label-conditional VAE" in err and "Evaluate it on labelled images" in err
