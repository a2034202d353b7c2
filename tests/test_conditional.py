"""The label-conditional VAE: shapes, conditioning, exact conditional likelihoods, the CLI."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from pyro_vae.cli import main
from pyro_vae.models.conditional import (
    ConditionalVAE,
    LabelledDecoder,
    LabelledEncoder,
    build_conditional_vae,
)
from pyro_vae.config import Config, ModelConfig
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.evaluate import estimate_log_likelihood
from pyro_vae.likelihoods import build_likelihood
from pyro_vae.priors import StandardNormalPrior
from pyro_vae.runs import load_trained
from pyro_vae.training import prepare_data, train

from helpers import run_cli, model_config

CVAE = model_config(kind="cvae", latent_dim=3, hidden_dims=[16], num_classes=4)


def test_shapes_with_vectorized_particles():
    vae = build_conditional_vae(CVAE, (1, 2, 3))
    x, y = torch.rand(5, 6).round(), torch.tensor([0, 1, 2, 3, 0])
    assert vae.decoder(torch.randn(7, 5, 3), y).shape == (7, 5, 6)
    loc, scale = vae.encoder(x, y)
    assert loc.shape == scale.shape == (5, 3)
    estimate = estimate_log_likelihood(vae, x, num_samples=7, y=y)
    assert estimate.log_likelihood.shape == (5,)
    assert bool((estimate.elbo <= estimate.log_likelihood + 1e-5).all())


def test_the_label_changes_the_likelihood():
    vae = build_conditional_vae(CVAE, (1, 2, 3))
    z = torch.randn(5, 3)
    outputs = [vae.decoder(z, torch.full((5,), c)) for c in range(4)]
    assert not torch.allclose(outputs[0], outputs[1])


def test_model_and_guide_need_labels():
    vae = build_conditional_vae(CVAE, (1, 2, 3))
    with pytest.raises(DataError, match="needs the labels"):
        vae.model(torch.zeros(2, 6))
    with pytest.raises(DataError, match="needs the labels"):
        vae.guide(torch.zeros(2, 6))


class _LinearPosterior(nn.Module):
    """q(z | [x, one_hot(y)]) = N(A x − A B one_hot(y), diag s²), an affine map of the input."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.matrix = torch.cat([a, -a @ b], 1)
        self.scale = scale

    def forward(self, inputs):
        return inputs @ self.matrix.T, self.scale.expand(*inputs.shape[:-1], -1)


def _linear_gaussian_cvae(num_pixels=5, latent_dim=2, num_classes=3, noise=0.5):
    """x | z, y ~ N(W z + b_y, noise² I), with W's columns orthogonal so that the exact
    posterior p(z|x, y) = N(Σ Wᵀ(x − b_y)/noise², Σ), Σ = (I + WᵀW/noise²)⁻¹, is diagonal."""
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(num_pixels, latent_dim, generator=generator))
    w = q * torch.tensor([1.5, 0.7])
    b = torch.randn(num_pixels, num_classes, generator=generator)
    linear = nn.Linear(latent_dim + num_classes, num_pixels, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.cat([w, b], 1))
    covariance = torch.linalg.inv(torch.eye(latent_dim) + w.T @ w / noise ** 2)
    posterior = _LinearPosterior(covariance @ w.T / noise ** 2, b, covariance.diagonal().sqrt())
    vae = ConditionalVAE(LabelledEncoder(posterior, num_classes),
                         LabelledDecoder(linear, num_classes), StandardNormalPrior(latent_dim),
                         build_likelihood(ModelConfig(likelihood="gaussian",
                                                      options={"likelihood": {"scale": noise}})),
                         num_classes)
    marginal = torch.distributions.MultivariateNormal(
        torch.zeros(num_pixels), w @ w.T + noise ** 2 * torch.eye(num_pixels))
    return vae, b, marginal


def test_importance_sampling_with_the_exact_posterior_is_exact():
    vae, b, marginal = _linear_gaussian_cvae()
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    x = torch.randn(6, 5) + b.T[y]
    exact = marginal.log_prob(x - b.T[y])
    estimate = estimate_log_likelihood(vae, x, num_samples=3, y=y)
    # With q = p(z|x, y) every weight equals p(x|y): estimate and ELBO are both exact.
    assert torch.allclose(estimate.log_likelihood, exact, atol=1e-4)
    assert torch.allclose(estimate.elbo, exact, atol=1e-4)


@pytest.mark.slow
def test_importance_sampling_with_a_wide_proposal_approaches_the_exact_value():
    vae, b, marginal = _linear_gaussian_cvae()
    vae.encoder.encoder.scale = vae.encoder.encoder.scale * 2.0  # a worse, wider q
    y = torch.tensor([0, 1, 2, 1])
    x = torch.randn(4, 5) + b.T[y]
    exact = marginal.log_prob(x - b.T[y])
    torch.manual_seed(0)
    estimate = estimate_log_likelihood(vae, x, num_samples=20_000, y=y)
    assert bool((estimate.elbo < exact - 0.05).all())  # the ELBO is loose here
    # log p̂_K has a bias of order Var(w)/(2K p²) and a standard error of order
    # sqrt(Var(w)/K)/p; the weights' relative variance (2× wider q in 2-D) is below 3, so
    # both are below 0.02 nats at K = 20,000: 0.05 is over two and a half such errors.
    assert torch.allclose(estimate.log_likelihood, exact, atol=0.05)


@pytest.fixture(scope="module")
def trained_cvae(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cvae") / "run"
    config = Config().with_overrides({"model": {"kind": "cvae"}, "train": {"epochs": 10},
                                      "evaluate": {"num_samples": 20}})
    train(config, run_dir)
    return run_dir


@pytest.mark.slow
def test_a_cvae_run_has_the_plain_vae_outputs(trained_cvae):
    for name in ("config.toml", "checkpoint.pt", "metrics.jsonl", "summary.json",
                 "samples.png", "reconstructions.png", "elbo.png"):
        assert (trained_cvae / name).exists(), name


@pytest.mark.slow
def test_conditional_samples_show_the_requested_label(trained_cvae):
    """A logistic regression fitted to the real digits recognises the label we asked for.

    500 samples, 50 per label. Under chance (a sampler that ignores the label) the accuracy
    is 0.1 with standard error sqrt(0.1·0.9/500) = 0.013; the classifier itself scores about
    0.84 on real test digits. Requiring 0.6 is over 35 standard errors above chance while
    leaving room for the classifier's own errors on blurry means.
    """
    _, vae, _ = load_trained(trained_cvae)
    data = prepare_data(Config())
    classifier = LogisticRegression(max_iter=2000).fit(data.train_x.numpy(),
                                                       data.train_y.numpy())
    labels = torch.arange(500) % 10
    torch.manual_seed(0)
    with torch.no_grad():
        samples = vae.sample(500, labels=labels)
    accuracy = float(np.mean(classifier.predict(samples.numpy()) == labels.numpy()))
    assert accuracy > 0.6


@pytest.mark.slow
def test_resume_continues_a_cvae_run(trained_cvae, capsys, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained_cvae, run_dir)
    code, _, _ = run_cli(capsys, "train", "--out", run_dir, "--resume", "--epochs", 11)
    assert code == 0
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 11


@pytest.mark.slow
def test_sample_cli_label_and_grid(trained_cvae, capsys, tmp_path):
    code, _, _ = run_cli(capsys, "sample", trained_cvae, "--label", 7, "--n", 4,
                         "--out", tmp_path / "seven.npz")
    assert code == 0
    assert np.load(tmp_path / "seven.npz")["x"].shape == (4, 1, 8, 8)
    code, _, _ = run_cli(capsys, "sample", trained_cvae, "--n", 30, "--out", tmp_path / "g.png")
    assert code == 0 and (tmp_path / "g.png").exists()


@pytest.mark.slow
def test_label_out_of_range(trained_cvae, capsys):
    code, _, err = run_cli(capsys, "sample", trained_cvae, "--label", 12)
    assert code == 2 and "labels are 0..9" in err


@pytest.mark.slow
def test_label_on_an_unconditional_model(tmp_path, capsys):
    train(Config().with_overrides({"train": {"epochs": 1}, "evaluate": {"num_samples": 2}}),
          tmp_path / "vae")
    code, _, err = run_cli(capsys, "sample", tmp_path / "vae", "--label", 3)
    assert code == 2 and "unconditional" in err


def test_cvae_on_a_dataset_without_labels(tmp_path, capsys):
    np.savez(tmp_path / "nolabels.npz", x=np.random.default_rng(0).integers(
        0, 2, (40, 4, 4)).astype(np.float32))
    code, _, err = run_cli(capsys, "train", "--model", "cvae", "--dataset",
                           f"file:{tmp_path / 'nolabels.npz'}", "--out", tmp_path / "r")
    assert code == 2 and "has no labels" in err and "kind = \"vae\"" in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_cvae_on_binarized_mnist(tmp_path, capsys, data_dir):
    code, _, err = run_cli(capsys, "train", "--model", "cvae", "--dataset", "binarized-mnist",
                           "--data-dir", data_dir, "--out", tmp_path / "r")
    assert code == 2 and "'binarized-mnist' (train split) has no labels" in err


def test_model_kind_typo_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'cvae'"):
        Config.from_dict({"model": {"kind": "cvea"}})
    with pytest.raises(ConfigError, match="network = \"mlp\""):
        Config.from_dict({"model": {"kind": "cvae", "network": "conv"}})


@pytest.mark.slow
def test_evaluate_cli_scores_log_p_x_given_y(trained_cvae, capsys):
    import json

    assert main(["evaluate", str(trained_cvae), "--num-samples", "5", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["score_name"] == "log p(x|y)"
    assert summary["test_elbo"] <= summary["test_log_likelihood"]
