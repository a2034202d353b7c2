"""The label-conditional priors p(z|y) of the CVAE (pyro_vae/priors.py: LabelledMixturePrior,
LabelledVampPrior): their densities against a plain mixture of Gaussians, their draws, the
VampPrior's start, what the configuration accepts, and a short training whose samples follow
the label."""

import math

import pytest
import torch

from pyro_vae.config import Config
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.evaluate import latent_activity
from pyro_vae.models import build_vae
from pyro_vae.priors import LabelledMixturePrior, LabelledVampPrior
from pyro_vae.registry import PRIORS as PRIOR_REGISTRY
from pyro_vae.runs import load_trained
from pyro_vae.training import train

CLASSES, PER_CLASS, DIM, PIXELS = 3, 4, 2, 6


class _Encoder(torch.nn.Module):
    """(x, y) ↦ (loc, scale): a fixed linear map of x, shifted by 3·y in every coordinate."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(PIXELS, DIM, dtype=torch.float64))

    def forward(self, x, y):
        loc = x @ self.weight + 3.0 * y[:, None].double()
        return loc, 0.3 + x[:, :DIM]


def _vamp():
    torch.manual_seed(0)
    return LabelledVampPrior(DIM, _Encoder(), PIXELS, CLASSES, CLASSES * PER_CLASS).double()


def _mixture():
    torch.manual_seed(0)
    prior = LabelledMixturePrior(DIM, CLASSES, CLASSES * PER_CLASS).double()
    with torch.no_grad():  # unequal weights, spread-out means and scales
        prior.logits.normal_()
        prior.loc.mul_(6.0)
        prior.raw_scale.normal_(0.0, 0.5)
    return prior


PRIORS = pytest.mark.parametrize("make", [_vamp, _mixture], ids=["vamp", "mixture"])


def _plain_log_density(prior, z, label):
    """log Σ_k π_{y,k} N(z; loc_{y,k}, diag scale_{y,k}²), component by component."""
    logits, loc, scale = prior.components()
    weights = torch.log_softmax(logits[label], 0)
    terms = [weights[k] + torch.distributions.Normal(loc[label, k], scale[label, k])
             .log_prob(z).sum() for k in range(PER_CLASS)]
    return torch.logsumexp(torch.stack(terms), 0)


@PRIORS
def test_the_density_given_a_label_is_that_classes_mixture(make):
    prior = make()
    z = torch.randn(5, DIM, dtype=torch.float64) * 3
    labels = torch.tensor([0, 1, 2, 1, 0])
    got = prior(torch.Size([5]), z.device, z.dtype, labels=labels).log_prob(z)
    want = torch.stack([_plain_log_density(prior, z[i], int(labels[i])) for i in range(5)])
    assert torch.allclose(got, want, atol=1e-9)


@PRIORS
def test_without_labels_the_density_is_the_average_over_classes(make):
    prior = make()
    z = torch.randn(4, DIM, dtype=torch.float64) * 3
    got = prior(torch.Size([4]), z.device, z.dtype).log_prob(z)
    want = torch.stack([torch.logsumexp(torch.stack([_plain_log_density(prior, z[i], c)
                                                     for c in range(CLASSES)]), 0)
                        - math.log(CLASSES) for i in range(4)])
    assert torch.allclose(got, want, atol=1e-9)


@PRIORS
def test_draws_given_a_label_come_from_that_classes_mixture(make):
    prior = make()
    labels = torch.tensor([0, 1, 2]).repeat(2000)
    torch.manual_seed(1)
    z = prior(torch.Size([len(labels)]), "cpu", torch.float64, labels=labels).sample()
    logits, loc, scale = prior.components()
    for c in range(CLASSES):
        mine = z[labels == c]
        # A mixture's mean is Σ_k π_k m_k, its variance Σ_k π_k (s_k² + m_k²) − mean²; the
        # sample mean of n draws lies within 6 standard errors of it (fails only if the draws
        # ignore the label or the weights).
        weights = torch.softmax(logits[c], 0)[:, None]
        centre = (weights * loc[c]).sum(0)
        variance = (weights * (scale[c] ** 2 + loc[c] ** 2)).sum(0) - centre ** 2
        assert ((mine.mean(0) - centre).abs() < 6 * (variance / len(mine)).sqrt()).all()


def test_the_gradient_reaches_the_pseudo_inputs_of_the_labelled_class_only():
    prior = _vamp()
    z = torch.randn(3, DIM, dtype=torch.float64)
    prior(torch.Size([3]), z.device, z.dtype, labels=torch.tensor([1, 1, 1])).log_prob(z).sum() \
        .backward()
    grad = prior.pseudo_inputs.grad.abs().sum(1).reshape(CLASSES, PER_CLASS).sum(1)
    assert grad[1] > 0 and grad[0] == 0 and grad[2] == 0


def test_pseudo_inputs_start_at_images_of_their_own_class():
    prior = _vamp()
    images = torch.rand(30, PIXELS, dtype=torch.float64) * 0.8 + 0.1
    labels = torch.arange(30) % CLASSES
    images[:, 0] = 0.1 + 0.3 * labels.double()  # pixel 0 tells the class
    prior.initialize_from(images, labels)
    start = torch.sigmoid(prior.pseudo_inputs[:, 0]).reshape(CLASSES, PER_CLASS)
    assert torch.allclose(start, (0.1 + 0.3 * torch.arange(CLASSES)).double()[:, None]
                          .expand(CLASSES, PER_CLASS), atol=1e-9)
    with pytest.raises(DataError, match="have no labels"):
        prior.initialize_from(images)


def test_components_must_split_evenly_over_the_classes():
    with pytest.raises(ConfigError, match="multiple of 3"):
        LabelledVampPrior(DIM, _Encoder(), PIXELS, CLASSES, 10)
    with pytest.raises(ConfigError, match="multiple of 3"):
        LabelledMixturePrior(DIM, CLASSES, 2)


def _cvae(**model):
    return Config.from_dict({"model": {"kind": "cvae", **model}, "train": {"epochs": 1}})


def test_the_configuration_accepts_a_label_conditional_prior_and_refuses_the_rest():
    _cvae(prior="vamp", prior_components=50)
    _cvae(prior="mixture", prior_components=50)
    with pytest.raises(ConfigError, match="no label-conditional form"):
        _cvae(prior="flow")
    with pytest.raises(ConfigError, match="undo each other"):
        _cvae(prior="vamp", label_independence="mmd")


@pytest.mark.slow
def test_a_cvae_with_it_trains_scores_and_follows_the_label(tmp_path):
    """On the 8×8 digits: the run's fidelity is far above chance, the KL diagnostics take the
    labels (they once called q(z|x, y) without y), and the label grid has a row per label."""
    torch.set_num_threads(1)
    config = Config.from_dict({
        "model": {"kind": "cvae", "prior": "vamp", "prior_components": 100,
                  "hidden_dims": [64]},
        "train": {"epochs": 15, "batch_size": 64},
        "evaluate": {"num_samples": 20}})
    summary = train(config, tmp_path / "run")
    assert math.isfinite(summary["test_log_likelihood"])
    assert summary["label_fidelity"] > 0.6  # chance is 0.1
    _, vae, _ = load_trained(tmp_path / "run")
    x = torch.rand(40, 64).round()
    y = torch.arange(40) % 10
    assert math.isfinite(latent_activity(vae, x, y)["kl"])
    assert vae.label_grid(4).shape == (40, 64)
    rebuilt = build_vae(config.model, (1, 8, 8))
    assert rebuilt.prior.label_conditional and rebuilt.prior.per_class == 10


def test_a_cvae_takes_a_label_conditional_prior_unless_told_otherwise(tmp_path):
    """The kind's ``model_defaults`` hook: a recipe that names no prior gets p(z|y); one that
    names a prior, or asks for the MMD penalty (which needs N(0, I)), keeps what it says, and a
    saved run reads back what it trained with."""
    default = _cvae().model.prior
    assert "label_conditional" in PRIOR_REGISTRY.capabilities(default)
    assert _cvae(prior="normal").model.prior == "normal"
    assert _cvae(label_independence="mmd").model.prior == "normal"
    assert Config.from_dict({"model": {"kind": "vae"}}).model.prior == "normal"
    saved = tmp_path / "config.toml"
    saved.write_text(_cvae(prior="normal").to_toml())
    assert Config.from_toml(saved).model.prior == "normal"


def test_the_command_lines_model_flag_gets_the_kinds_default_prior():
    """``pyro-vae train --model cvae`` starts from the default recipe (kind "vae"): the prior it
    left at its default becomes the cvae's own, while one the recipe or a flag sets stays."""
    assert Config().with_overrides({"model": {"kind": "cvae"}}).model.prior == _cvae().model.prior
    assert Config().with_overrides({"model": {"kind": "cvae", "prior": "normal"}}) \
        .model.prior == "normal"
    mixture = Config.from_dict({"model": {"prior": "mixture"}})
    assert mixture.with_overrides({"model": {"kind": "cvae"}}).model.prior == "mixture"


def test_the_label_grid_draws_each_class_by_its_own_weights():
    """shared_draws picks every class's component by that class's weights: a component a
    class never uses (weight ~e^-30) never appears in its row."""
    prior = _mixture()
    with torch.no_grad():
        prior.logits.fill_(-30.0)
        prior.logits[:, 1] = 0.0          # class y uses only its component 1
        prior.raw_scale.fill_(-20.0)      # scales ~2e-9: a draw is its component's mean
    torch.manual_seed(0)
    grid = prior.shared_draws(50)
    assert grid.shape == (CLASSES, 50, DIM)
    _, loc, _ = prior.components()
    assert torch.allclose(grid, loc[:, 1:2].expand(CLASSES, 50, DIM), atol=1e-6)
