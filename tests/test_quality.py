"""Defaults that decide published quality: the decoder's output-bias start at the data, the
posterior-collapse warning, M2's per-step classification weight and grey classifier input."""

import importlib
import json

import numpy as np
import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

from pyro_vae.cli import main

from pyro_vae.config import Config, ModelConfig
from pyro_vae.data import ImageData, binarize, binarize_fixed, load_dataset, minibatches
from pyro_vae.evaluate import latent_activity
from pyro_vae.likelihoods import (MEAN_CLAMP, ContinuousBernoulliLikelihood,
                                  GaussianLikelihood, continuous_bernoulli_mean)
from pyro_vae.models import build_vae
from pyro_vae.networks import output_layer
from pyro_vae.objectives import ObjectiveModule, make_objective
from pyro_vae.runs import load_checkpoint
from pyro_vae.models.semisupervised import build_m2
from pyro_vae.training import COLLAPSE_KL, collapse_warning, prepare_data, train
from helpers import model_config

IMAGE = (1, 4, 4)
#: The training module (``pyro_vae.train`` is the function it defines).


@pytest.fixture
def one_thread():
    """One torch thread: on shared, busy cores two threads made the 200-step VampPrior test
    30 times slower (641 s against 22 s) without changing its numbers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_pictures(monkeypatch):
    """Training runs here are about numbers; drawing their PNGs would triple their time."""
    monkeypatch.setattr(importlib.import_module("pyro_vae.plots.vae"), "write_pictures",
                        lambda *args: None)


def _binary_data(count: int = 300) -> torch.Tensor:
    """Binary images whose pixel means span 0 (never on) to 1 (always on)."""
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.linspace(0, 1, 16)
    return torch.bernoulli(probabilities.expand(count, 16), generator=generator)


def _mean_logit(x: torch.Tensor) -> torch.Tensor:
    return torch.logit(x.mean(0).clamp(MEAN_CLAMP, 1 - MEAN_CLAMP))


MODELS = {
    "vae": ModelConfig(hidden_dims=[8], latent_dim=2),
    "two_layer": model_config(hidden_dims=[8], latent_dim=3, stochastic_layers=2,
                              top_hidden_dims=[6], top_latent_dim=2),
    "cvae": model_config(kind="cvae", hidden_dims=[8], latent_dim=2, num_classes=3),
    "m2": model_config(kind="m2", hidden_dims=[8], latent_dim=2, num_classes=3),
    "quadrant_cvae": ModelConfig(kind="quadrant_cvae", hidden_dims=[8], latent_dim=2),
    "quadrant_baseline": ModelConfig(kind="quadrant_baseline", hidden_dims=[8]),
    "bayesian_all": model_config(hidden_dims=[8], latent_dim=2, bayesian_decoder="all"),
    "bayesian_last": model_config(hidden_dims=[8], latent_dim=2, bayesian_decoder="last"),
    "vamp": ModelConfig(hidden_dims=[8], latent_dim=2, prior="vamp",
                        options={"prior": {"components": 4}}),
}


def _decoded_background(vae, x: torch.Tensor) -> torch.Tensor:
    """The decoder's output at zero hidden activity: the output layer's bias."""
    if hasattr(vae, "weight_posterior") and "net.2.bias" in vae.weight_posterior.names:
        return vae.weight_posterior.mean()["net.2.bias"]
    return output_layer(vae.decoder).bias.detach()


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_decoder_starts_its_output_bias_at_the_mean_logit(kind):
    config = MODELS[kind]
    vae = build_vae(config, IMAGE, num_data=300)
    x = _binary_data()
    value = vae.start_output_bias(x)
    expected = _mean_logit(x)
    assert torch.allclose(value, expected) and torch.allclose(_decoded_background(vae, x),
                                                              expected)
    # The clamp keeps never-on and always-on pixels finite, at ∓logit(1 − ε).
    assert value[0] == pytest.approx(-6.9068, abs=1e-3)
    assert value[-1] == pytest.approx(6.9068, abs=1e-3)


def test_gaussian_and_continuous_bernoulli_starts_have_the_data_mean():
    x = torch.rand(200, 16, generator=torch.Generator().manual_seed(1)) * torch.linspace(0, 1, 16)
    gaussian = build_vae(ModelConfig(hidden_dims=[8], latent_dim=2, likelihood="gaussian"),
                         IMAGE)
    assert torch.allclose(gaussian.start_output_bias(x), x.mean(0))
    cb = build_vae(ModelConfig(hidden_dims=[8], latent_dim=2,
                               likelihood="continuous_bernoulli"), IMAGE)
    logits = cb.start_output_bias(x)
    # Where the mean is reachable within the logit bound, the CB mean equals the data mean.
    reachable = (x.mean(0) > 0.15) & (x.mean(0) < 0.85)
    assert reachable.sum() >= 8
    assert torch.allclose(continuous_bernoulli_mean(logits.double()).float()[reachable],
                          x.mean(0)[reachable], atol=1e-5)
    assert torch.allclose(ContinuousBernoulliLikelihood().mean(logits)[reachable],
                          x.mean(0)[reachable], atol=1e-4)


def test_conv_decoder_starts_its_channel_bias_at_the_mean_logit():
    vae = build_vae(ModelConfig(network="conv", hidden_dims=[16], latent_dim=2), (1, 8, 8))
    x = torch.bernoulli(torch.full((100, 64), 0.2), generator=torch.Generator().manual_seed(2))
    assert torch.allclose(vae.start_output_bias(x), torch.logit(x.mean()).reshape(1))


@pytest.mark.slow
def test_training_starts_at_the_data_and_resumes_exactly(tmp_path, no_pictures):
    np.savez(tmp_path / "data.npz", x=_binary_data().numpy())
    config = Config().with_overrides({
        "data": {"dataset": f"file:{tmp_path / 'data.npz'}", "validation_fraction": 0.1},
        "model": {"hidden_dims": [8], "latent_dim": 2},
        "train": {"epochs": 1, "batch_size": 50},
        "evaluate": {"num_samples": 4},
    })
    # After an epoch the bias is still within Adam's reach (about lr per step) of the mean
    # logit of the training images: train() started it there.
    train(config, tmp_path / "one")
    saved = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    expected = _mean_logit(prepare_data(config).train_x)
    moved = (saved["model"]["decoder.net.2.bias"] - expected).abs().max()
    assert moved <= saved["step"] * config.train.learning_rate * 1.5
    assert expected.abs().max() > 5  # far from the zero start: the check can fail
    # Resuming loads the trained bias instead of starting it again: exact continuation.
    two = config.with_overrides({"train": {"epochs": 2}})
    train(two, tmp_path / "one", resume=True)
    train(two, tmp_path / "two")
    resumed = load_checkpoint(tmp_path / "one" / "checkpoint.pt")["model"]
    straight = load_checkpoint(tmp_path / "two" / "checkpoint.pt")["model"]
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key


# --- the posterior-collapse warning -------------------------------------------------------

def test_collapse_warning_flags_a_tiny_kl_or_no_active_unit():
    assert collapse_warning(1, {"kl": 3.2, "active_units": 2}) is None
    assert collapse_warning(1, {}) is None  # a model without a latent code
    tiny = collapse_warning(1, {"kl": 0.004, "active_units": 3})
    assert "epoch 1" in tiny and "0.0040 nats" in tiny and "--free-bits" in tiny
    assert "3 active latent units" in tiny
    inactive = collapse_warning(4, {"kl": 0.5, "active_units": 0})
    assert "epoch 4" in inactive and "0 active latent units" in inactive
    assert collapse_warning(1, {"kl": COLLAPSE_KL, "active_units": 1}) is None


@pytest.mark.slow
def test_collapsed_run_warns_on_the_cli_and_records_it_in_the_metrics(tmp_path, capsys,
                                                                      no_pictures):
    # Identical images: E_q[z|x] cannot vary with x, so no unit is active after epoch 1.
    image = (np.arange(16) % 3 == 0).astype(np.float32)
    np.savez(tmp_path / "same.npz", x=np.tile(image, (200, 1)))
    run = tmp_path / "run"
    assert main(["train", "--dataset", f"file:{tmp_path / 'same.npz'}", "--epochs", "2",
                 "--latent-dim", "2", "--batch-size", "100", "--eval-samples", "4",
                 "--out", str(run)]) == 0
    err = capsys.readouterr().err
    # Shown once when it starts, recorded in every epoch's row while it lasts.
    assert err.count("warning: posterior collapse") == 1 and "after epoch 1" in err
    for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        assert row["active_units"] == 0 and "posterior collapse" in row["collapse_warning"]


# --- M2: the auxiliary classification weight per step, grey classifier input -------------

def _classifier_grads(vae, loss: torch.Tensor) -> list[torch.Tensor]:
    return torch.autograd.grad(loss, list(vae.classifier.parameters()), allow_unused=True)


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
def test_m2_aux_weight_is_alpha_unlabelled_points_per_labelled_point_in_a_step():
    alpha, num_labelled, num_unlabelled, batch = 5.0, 10, 990, 30
    vae = build_m2(model_config(kind="m2", latent_dim=2, hidden_dims=[8], num_classes=3),
                   (1, 2, 2), aux_loss_weight=alpha)
    vae.set_split_sizes(num_labelled, num_unlabelled, batch)
    module = ObjectiveModule(vae, TraceEnum_ELBO(max_plate_nesting=1))
    generator = torch.Generator().manual_seed(4)
    x_l, y_l = torch.rand(5, 4, generator=generator).round(), torch.tensor([0, 1, 2, 0, 1])
    x_u = torch.rand(batch, 4, generator=generator).round()
    unlabelled_weight = num_unlabelled / batch  # an unlabelled point's weight in the step
    # Labelled batch: the classifier's only term is y_aux, α·N_u/B_u per point.
    labelled = _classifier_grads(vae, module(x_l, y_l))
    by_hand = _classifier_grads(vae, F.cross_entropy(vae.classifier(x_l), y_l, reduction="sum"))
    for got, one in zip(labelled, by_hand):
        assert torch.allclose(got, alpha * unlabelled_weight * one, rtol=1e-4, atol=1e-6)
    # Unlabelled batch: each point's −U(x) weighs N_u/B_u (the same z draws with one seed).
    pyro.set_rng_seed(5)
    scaled = _classifier_grads(vae, module(x_u))
    with vae.scoring():
        pyro.set_rng_seed(5)
        unscaled = _classifier_grads(vae, module(x_u))
    for got, one in zip(scaled, unscaled):
        assert torch.allclose(got, unlabelled_weight * one, rtol=1e-4, atol=1e-6)
    # Labelled per-point ELBO keeps its whole-data weight N_l/B_l (the aux term is extra).
    trace = poutine.trace(vae.model).get_trace(x_l, y_l)
    assert trace.nodes["x"]["scale"] == pytest.approx(num_labelled / 5)
    assert trace.nodes["y_aux"]["scale"] == pytest.approx(alpha * unlabelled_weight)


def test_m2_classifier_reads_the_grey_images_and_data_keep_them():
    vae = build_m2(model_config(kind="m2", latent_dim=2, hidden_dims=[8], num_classes=3),
                   (1, 2, 2))
    vae.set_split_sizes(10, 90, 5)
    grey = torch.rand(5, 4, generator=torch.Generator().manual_seed(6))
    x, y = torch.bernoulli(grey), torch.tensor([0, 1, 2, 0, 1])
    logits = poutine.trace(vae.model).get_trace(x, y, classifier_x=grey).nodes["y_aux"]["fn"]
    assert torch.allclose(logits.logits, torch.log_softmax(vae.classifier(grey), -1))
    with poutine.enum(first_available_dim=-2):
        q_y = poutine.trace(vae.guide).get_trace(x, classifier_x=grey).nodes["y"]["fn"]
    assert torch.allclose(q_y.logits, torch.log_softmax(vae.classifier(grey), -1))
    data = ImageData("toy", (1, 2, 2), grey, None, grey[:2], None, grey[2:], None)
    fixed = binarize_fixed(data, ("validation", "test"))
    assert set(torch.unique(fixed.test_x).tolist()) <= {0.0, 1.0}
    assert torch.equal(fixed.grey("test"), grey[2:]) and torch.equal(fixed.grey("train"), grey)
    assert torch.equal(fixed.to("cpu").grey("validation"), grey[:2])


# --- the VampPrior keeps its code ----------------------------------------------------------

@pytest.mark.slow
def test_vamp_prior_keeps_active_units_on_mnist(data_dir, one_thread):
    """200 steps (batch 50) on 1,000 MNIST digits, 8 latents, 20 pseudo-inputs.

    Measured once on this set-up: from a zero output bias the VampPrior had 3 active units
    and a KL of 0.11 nats (and falling) at step 200; from the data's mean logit, 8 active
    units and 5.6 nats. A constant encoder makes the VampPrior equal q(z|x), where the KL and
    its gradient vanish, so a collapse there is permanent.
    """
    data = load_dataset("mnist", str(data_dir), 0.0)
    x_train, x_check = data.train_x[:1000], data.test_x[:300]
    config = ModelConfig(latent_dim=8, hidden_dims=[64], activation="tanh",
                         encoder_scale="logvar", prior="vamp",
                         options={"prior": {"components": 20}})
    vae = build_vae(config, (1, 28, 28), num_data=len(x_train))
    vae.prior.initialize_from(x_train)
    vae.start_output_bias(x_train)
    module = ObjectiveModule(vae, make_objective("elbo"))
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200 // (len(x_train) // 50)):
        x = binarize(x_train, generator)
        for batch in minibatches(len(x), 50, "cpu"):
            loss = module(x[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        activity = latent_activity(vae, binarize(x_check, generator))
    assert activity["active_units"] >= 6 and activity["kl"] > 2.0


@pytest.mark.parametrize("standardize", [True, False])
def test_a_learned_gaussian_scale_starts_at_its_best_value_for_the_mean_image(standardize):
    """σ starts at the RMS deviation of the training data from their mean image (1 in
    standardized units): the maximum-likelihood σ of a decoder at the mean image, which is
    where training starts the decoder. A fixed σ stays as set."""
    generator = torch.Generator().manual_seed(0)
    x = 3.0 + 0.5 * torch.randn(400, 6, generator=generator)
    likelihood = GaussianLikelihood()
    if standardize:
        likelihood.initialize_from(x)
    likelihood.start_scale(x)
    rms = float((x - x.mean(0)).pow(2).mean().sqrt())
    assert float(likelihood.scale) == pytest.approx(1.0 if standardize else rms, rel=1e-5)
    loc = torch.zeros(6) if standardize else x.mean(0)  # the decoder at the mean image
    start = float(likelihood.scale)
    for factor in (0.8, 1.25):  # the log-likelihood falls either side of the start
        nudged = GaussianLikelihood(scale=start * factor)
        if standardize:
            nudged.initialize_from(x)
        assert nudged(loc).log_prob(x).mean() < likelihood(loc).log_prob(x).mean()
    fixed = GaussianLikelihood(scale=0.3)
    fixed.start_scale(x)
    assert fixed.scale == 0.3
