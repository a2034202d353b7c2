"""Fault injection, third round: the label-conditional priors, M2's options and label
fidelity met with odd data and odd settings.

Every case ends in one clear paragraph (exit status 2, no traceback, no run directory left
behind) or in an honest figure; none is silently ignored.
"""

import numpy as np
import pytest
import torch

from pyro_vae import fidelity
from pyro_vae.cli.evaluate import format_summary
from pyro_vae.config import Config
from pyro_vae.errors import DataError
from pyro_vae.likelihoods import build_likelihood
from pyro_vae.models import build_vae
from pyro_vae.models.semisupervised import prepare as prepare_m2
from pyro_vae.training import missing_classes_warning, prepare_data, train

from helpers import run_cli

SMALL = ["--epochs", "1", "--eval-samples", "2", "--batch-size", "256"]


def _digits_npz(path, keep=lambda y: np.ones(len(y), bool), relabel=lambda y: y):
    """The embedded digits as a user's .npz, with some images left out or relabelled."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x, y = (digits.data / 16).astype(np.float32), digits.target
    chosen = keep(y)
    np.savez(path, x=x[chosen], y=relabel(y[chosen]))
    return f"file:{path}"


# --- the label-conditional VampPrior's start ----------------------------------------------------

@pytest.mark.parametrize("keep,needle", [
    (lambda y: (y != 7) | (np.arange(len(y)) % 30 == 0), "Use prior_components = 40 or less"),
    (lambda y: y != 7, "class 7 has 0 training images"),
])
def test_a_class_with_too_few_images_for_its_pseudo_inputs(tmp_path, capsys, keep, needle):
    dataset = _digits_npz(tmp_path / "d.npz", keep)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--model", "cvae", "--prior", "vamp", "--dataset",
                           dataset, "--latent-dim", 2, *SMALL,
                           "--out", out)
    assert code == 2 and needle in err and "prior = \"mixture\"" in err
    assert not out.exists()


def test_a_vamp_cvae_on_unlabelled_data_is_refused_by_the_label_check(tmp_path, capsys):
    from sklearn.datasets import load_digits
    np.savez(tmp_path / "x.npz", x=(load_digits().data / 16).astype(np.float32))
    code, _, err = run_cli(capsys, "train", "--model", "cvae", "--prior", "vamp",
                           "--prior-components", 10, "--dataset", f"file:{tmp_path / 'x.npz'}",
                           *SMALL, "--out", tmp_path / "run")
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
    with pytest.raises(DataError, match="2 labelled training images.*prior_components = 20"):
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


# --- options that a kind or schedule would ignore -------------------------------------------------

@pytest.mark.parametrize("kind,section,key,value,needle", [
    ("vae", "train", "aux_loss_weight", 5.0, "aux_loss_weight is only used with kind = \"m2\""),
    ("cvae", "train", "m2_schedule", "interleaved", "m2_schedule is only used with kind"),
    ("vae", "train", "labelled_every", 3, "labelled_every is only used with kind"),
    ("m2", "train", "labelled_every", 3, "only used with m2_schedule = \"interleaved\""),
    ("vae", "model", "decoder_label", "input", "decoder_label is only used with kind = \"cvae\""),
    ("quadrant_cvae", "model", "decoder_label", "input", "decoder_label is only used"),
    ("vae", "evaluate", "label_fidelity_samples", 50, "label_fidelity_samples is only used"),
])
def test_an_option_another_kind_would_ignore_is_refused(tmp_path, capsys, kind, section, key,
                                                        value, needle):
    recipe = tmp_path / "r.toml"
    quoted = f'"{value}"' if isinstance(value, str) else value
    recipe.write_text(f'[model]\nkind = "{kind}"\n[{section}]\n{key} = {quoted}\n'
                      .replace(f"[model]\nkind = \"{kind}\"\n[model]\n",
                               f"[model]\nkind = \"{kind}\"\n"))
    code, _, err = run_cli(capsys, "train", recipe, *SMALL, "--out", tmp_path / "run")
    assert code == 2 and needle in err and not (tmp_path / "run").exists()


def test_the_options_are_accepted_where_they_are_used():
    Config().with_overrides({"model": {"kind": "m2", "decoder_label": "input"},
                             "train": {"m2_schedule": "interleaved", "labelled_every": 3,
                                       "aux_loss_weight": 5.0}})
    Config().with_overrides({"model": {"kind": "cvae", "decoder_label": "input"}})


# --- label fidelity with classes missing from the data -------------------------------------------

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


@pytest.mark.parametrize("kind", ["cvae", "m2"])
@pytest.mark.parametrize("relabel,needle", [
    (lambda y: np.where(y == 9, 11, y), "Set [model] num_classes = 12"),
    (lambda y: y - 1, "no negative labels"),
])
def test_labels_outside_the_classes_say_what_to_do(tmp_path, capsys, kind, relabel, needle):
    dataset = _digits_npz(tmp_path / "d.npz", relabel=relabel)
    code, _, err = run_cli(capsys, "train", "--model", kind, "--dataset", dataset, *SMALL,
                           "--out", tmp_path / "run")
    assert code == 2 and needle in err and not (tmp_path / "run").exists()


def test_a_label_fidelity_size_beyond_memory_is_refused_before_training(tmp_path, capsys):
    """It was found only after the last epoch, as an allocation failure with no summary."""
    recipe = tmp_path / "r.toml"
    recipe.write_text('[model]\nkind = "cvae"\n[evaluate]\nlabel_fidelity_samples = '
                      f'{10 ** 12}\n')
    code, _, err = run_cli(capsys, "train", recipe, *SMALL, "--out", tmp_path / "run")
    assert code == 2 and "label_fidelity_samples" in err and "needs at least" in err
    assert not (tmp_path / "run").exists()


def test_a_num_classes_beyond_memory_is_refused_with_the_figure(tmp_path, capsys):
    """one_hot(y) enters the encoder and the decoder: 10⁹ classes are terabytes of weights
    (it ended in an allocation failure that named every setting but num_classes)."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[model]\nkind = "cvae"\nnum_classes = {10 ** 9}\n')
    code, _, err = run_cli(capsys, "train", recipe, *SMALL, "--out", tmp_path / "run")
    assert code == 2 and "needs at least" in err and "num_classes" in err
    assert not (tmp_path / "run").exists()


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


# --- a non-finite step of a labelled model ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["cvae", "m2"])
def test_a_labelled_models_nan_is_the_nan_paragraph(tmp_path, capsys, kind):
    """The diagnosis replayed the batch without its labels: the cvae said "call model(x, y)"
    instead of what went wrong, and M2 ended in a traceback sampling q(y|x) from NaN logits."""
    code, _, err = run_cli(capsys, "train", "--model", kind, "--lr", 1e38, *SMALL,
                           "--out", tmp_path / "run")
    assert code == 2 and " became " in err and "at epoch 1, step" in err
    assert "non-finite parameters" in err and "model(x, y)" not in err
    assert not (tmp_path / "run").exists()


# --- raw samples of a labelled run ------------------------------------------------------------------

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


def test_switching_kind_drops_the_old_kinds_own_defaults():
    """`pyro-vae train digits_cvae --model vae` trained a VAE with a mixture prior that came
    from the cvae's default, not from the recipe."""
    cvae = Config.from_dict({"model": {"kind": "cvae"}})
    assert cvae.model.prior == "mixture"
    assert cvae.with_overrides({"model": {"kind": "vae"}}).model.prior == "normal"
    assert cvae.with_overrides({"model": {"kind": "m2"}}).model.prior == "normal"
    asked = cvae.with_overrides({"model": {"kind": "vae", "prior": "vamp"}})
    assert asked.model.prior == "vamp"
    vamp = Config.from_dict({"model": {"kind": "cvae", "prior": "vamp"}})
    assert vamp.with_overrides({"model": {"kind": "m2"}}).model.prior == "vamp"
    back = Config().with_overrides({"model": {"kind": "cvae"}})
    assert back.model.prior == "mixture"


def test_an_npz_with_unlabelled_x_test_says_to_add_y_test(tmp_path, capsys):
    from sklearn.datasets import load_digits
    digits = load_digits()
    x, y = (digits.data / 16).astype(np.float32), digits.target
    np.savez(tmp_path / "d.npz", x=x[:1500], y=y[:1500], x_test=x[1500:])
    code, _, err = run_cli(capsys, "train", "--model", "cvae", "--dataset",
                           f"file:{tmp_path / 'd.npz'}", *SMALL, "--out", tmp_path / "run")
    assert code == 2 and "y_test beside x_test" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["sample", "compare", "gaps"])
@pytest.mark.parametrize("seed", [-5, 2 ** 70])
def test_a_seed_out_of_range_is_refused(tmp_path, capsys, command, seed):
    """torch and NumPy raised ValueError tracebacks for these."""
    code, _, err = run_cli(capsys, command, tmp_path / "no-run", "--seed", seed)
    assert code == 2 and "--seed" in err and "[0, 2**32)" in err


def test_a_thread_count_beyond_reason_is_refused(tmp_path, capsys, monkeypatch):
    """torch.set_num_threads overflowed with a traceback; an absurd $OMP_NUM_THREADS falls
    back to one thread like any unusable value."""
    from pyro_vae.cli import apply_threads
    code, _, err = run_cli(capsys, "train", "--threads", 10 ** 11, "--out", tmp_path / "run")
    assert code == 2 and "--threads" in err and not (tmp_path / "run").exists()
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(10 ** 14))
    try:
        assert apply_threads(None) == 1
    finally:
        torch.set_num_threads(before)


def test_classes_without_training_images_are_warned_about():
    config = Config().with_overrides({"model": {"kind": "cvae", "hidden_dims": [8]}})
    data = prepare_data(config)
    assert missing_classes_warning(config, data) is None
    data.train_y = data.train_y % 3
    warning = missing_classes_warning(config, data)
    assert "7 of the model's 10 classes" in warning and "labels 3, 4, 5, 6, 7, 8, 9" in warning
    assert missing_classes_warning(Config(), data) is None  # an unlabelled kind


def test_resuming_with_an_optimizer_state_for_other_parameters(tmp_path, capsys):
    """A checkpoint whose optimizer state names other parameters than the model has (a run of
    a release whose model had more, or one altered by hand) cannot be continued exactly: one
    paragraph and exit 2, and the run is left as it was."""
    run = tmp_path / "run"
    assert run_cli(capsys, "train", "--out", run, *SMALL)[0] == 0
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    checkpoint["optimizer"]["param_groups"][0]["params"].append(999)
    torch.save(checkpoint, run / "checkpoint.pt")
    before = (run / "checkpoint.pt").read_bytes()
    code, _, err = run_cli(capsys, "train", "--resume", "--out", run, "--epochs", "2")
    assert code == 2 and "optimizer state for other trainable parameters" in err
    assert (run / "checkpoint.pt").read_bytes() == before
