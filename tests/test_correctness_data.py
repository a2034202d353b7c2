"""Data follow the likelihood: binarization, ranges, standardization, vector and two-channel
data, refused layouts; honest error bars; which objectives are lower bounds."""

import math

import numpy as np
import pytest
import torch

from pyro_vae import plots
from pyro_vae.config import Config
from pyro_vae.data import is_vector_shape, load_dataset
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.evaluate import estimate_log_likelihood
from pyro_vae.lab import measure_estimator, reports_to_markdown
from pyro_vae.likelihoods import GaussianLikelihood
from pyro_vae.objectives import IWAE, RenyiBound, is_lower_bound
from pyro_vae.toy import LinearGaussian
from pyro_vae.training import prepare_data

from helpers import run_cli


def config_for(path, likelihood="bernoulli", binarize="auto"):
    config = Config()
    config.data.dataset, config.data.binarize = f"file:{path}", binarize
    config.model.likelihood = likelihood
    return config.validate()


# --- binarization follows the likelihood ------------------------------------------------------

def test_values_outside_unit_interval_with_default_binarization_are_a_clear_error(
        tmp_path, capsys):
    path = tmp_path / "wide.npz"
    np.savez(path, x=np.linspace(-1, 2, 40 * 6, dtype=np.float32).reshape(40, 6))
    code, _, err = run_cli(capsys, "train", "--dataset", f"file:{path}", "--epochs", "1",
                           "--out", tmp_path / "r")
    assert code == 2 and "[0, 1]" in err and "binarization" in err and "gaussian" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("likelihood", ["gaussian", "continuous_bernoulli"])
@pytest.mark.parametrize("binarize", ["dynamic", "static"])
def test_explicit_binarization_with_a_continuous_likelihood_is_refused(likelihood, binarize):
    config = Config()
    config.model.likelihood, config.data.binarize = likelihood, binarize
    with pytest.raises(ConfigError, match="coin flips"):
        config.validate()


def test_binarization_defaults_follow_the_likelihood(tmp_path):
    path = tmp_path / "grey.npz"
    values = np.random.default_rng(0).uniform(0.1, 0.9, size=(40, 6)).astype(np.float32)
    np.savez(path, x=values)
    assert config_for(path).binarization == "dynamic"
    for likelihood in ("gaussian", "continuous_bernoulli"):
        config = config_for(path, likelihood)
        assert config.binarization == "none"
        data = prepare_data(config)  # the data themselves, never coin flips
        together = torch.cat([data.train_x, data.valid_x, data.test_x])
        assert torch.equal(torch.sort(together.flatten()).values,
                           torch.sort(torch.from_numpy(values).flatten()).values)


def test_gaussian_accepts_real_values_outside_the_unit_interval(tmp_path):
    path = tmp_path / "real.npz"
    np.savez(path, x=np.random.default_rng(1).normal(5.0, 3.0, size=(40, 3)))
    data = prepare_data(config_for(path, "gaussian"))
    assert float(data.train_x.min()) < 0 and float(data.train_x.max()) > 1


# --- standardization: log p(x) in the data's own units ----------------------------------------

def test_standardized_gaussian_density_is_in_data_units():
    torch.manual_seed(0)
    x = torch.randn(30, 5) * 4 + 10
    loc = torch.randn(30, 5)
    likelihood = GaussianLikelihood(scale=0.5)
    likelihood.initialize_from(x)
    spread = float(likelihood.spread)
    expected = torch.distributions.Normal(likelihood.shift + spread * loc,
                                          0.5 * spread).log_prob(x).sum(-1)
    assert torch.allclose(likelihood(loc).log_prob(x), expected)
    # Rescaling the data by c rescales the density by the Jacobian: log p(cx) = log p(x) − P log c.
    scaled = GaussianLikelihood(scale=0.5)
    scaled.initialize_from(3.0 * x)
    assert torch.allclose(scaled(loc).log_prob(3.0 * x),
                          likelihood(loc).log_prob(x) - 5 * math.log(3.0), atol=1e-4)
    assert torch.allclose(likelihood.mean(loc), likelihood.shift + spread * loc)
    # The standardization is saved with the weights and restored into a fresh likelihood;
    # weights saved before it existed load as no standardization.
    restored = GaussianLikelihood(scale=0.5)
    restored.load_state_dict(likelihood.state_dict())
    assert torch.equal(restored.shift, likelihood.shift)
    old = GaussianLikelihood()
    old.load_state_dict({"raw_scale": torch.tensor(0.3)})
    assert float(old.spread) == 1.0 and float(old.shift) == 0.0


# --- layouts: vectors, two channels, refused arrays --------------------------------------------

@pytest.mark.parametrize("array,match", [
    (np.zeros((10, 0), dtype=np.float32), "no values per datapoint"),
    (np.zeros((10, 2, 0, 3), dtype=np.float32), "no values per datapoint"),
    (np.full((10, 4), 0.5 + 0.5j), "complex"),
])
def test_refused_npz_layouts(tmp_path, array, match):
    path = tmp_path / "bad.npz"
    np.savez(path, x=array)
    with pytest.raises(DataError, match=match):
        load_dataset(f"file:{path}")


def test_two_channel_pictures_show_channels_side_by_side(tmp_path):
    images = torch.rand(6, 2 * 5 * 7)
    grid = plots.image_grid(images, (2, 5, 7), columns=3)
    assert grid.ndim == 2 and grid.shape == (2 * 6 + 1, 3 * (2 * 7 + 1) + 1)
    # The first channel fills the left half of the first cell, the second the right half.
    first = images[0].reshape(2, 5, 7)
    assert np.allclose(grid[1:6, 1:8], first[0].numpy())
    assert np.allclose(grid[1:6, 8:15], first[1].numpy())
    plots.save_image_grid(tmp_path / "two.png", images, (2, 5, 7), 3, "two channels")
    assert (tmp_path / "two.png").stat().st_size > 0


@pytest.mark.slow
def test_vector_data_stay_vectors(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(2)
    path = tmp_path / "vectors.npz"
    np.savez(path, x=rng.normal(size=(60, 4)).astype(np.float32))
    data = load_dataset(f"file:{path}")
    assert is_vector_shape(data.image_shape) and data.image_shape == (1, 1, 4)
    grids = []
    # where the picture functions look it up (pyro_vae.plots re-exports it)
    monkeypatch.setattr(plots.core, "save_image_grid", lambda *a, **k: grids.append(a))
    code, _, _ = run_cli(capsys, "train", "--dataset", f"file:{path}", "--likelihood",
                         "gaussian", "--latent-dim", "2", "--epochs", "1", "--eval-samples",
                         "10", "--out", tmp_path / "r")
    assert code == 0 and not grids  # scatter plots, no image grids
    for name in ("samples.png", "reconstructions.png", "interpolation.png", "latent.png"):
        assert (tmp_path / "r" / name).stat().st_size > 0
    code, _, _ = run_cli(capsys, "sample", tmp_path / "r", "--n", "7", "--out",
                         tmp_path / "draws.npz")
    assert code == 0
    draws = np.load(tmp_path / "draws.npz")
    assert draws["x"].shape == (7, 4) and draws["mean"].shape == (7, 4)
    code, _, _ = run_cli(capsys, "sample", tmp_path / "r", "--n", "7", "--out",
                         tmp_path / "draws.png")
    assert code == 0 and not grids and (tmp_path / "draws.png").stat().st_size > 0


# --- honest error bars ------------------------------------------------------------------------

@pytest.mark.slow
def test_monte_carlo_error_of_log_px_matches_the_spread_of_repeated_estimates():
    lg = LinearGaussian(num_points=40)
    lg.set_encoder(loc_error=torch.tensor([0.5, -0.4]), scale_factor=1.7)
    torch.manual_seed(0)
    runs = [estimate_log_likelihood(lg.vae, lg.x, num_samples=20) for _ in range(30)]
    means = torch.tensor([run.mean_log_likelihood for run in runs])
    reported = torch.tensor([run.log_likelihood_mc_stderr for run in runs])
    # The Monte Carlo error on these points is the spread of the repeated means, well below
    # the spread over test points (another question: another test set).
    assert 0.6 < float(reported.mean() / means.std()) < 1.6
    assert float(reported.mean()) < 0.5 * runs[0].log_likelihood_stderr
    assert math.isnan(estimate_log_likelihood(lg.vae, lg.x, num_samples=1).mc_stderr)


# --- lower bounds, and what is not one --------------------------------------------------------

def per_datapoint_mean(objective, lg, repeats):
    with torch.no_grad():
        draws = torch.stack([objective.per_datapoint(lg.vae.model, lg.vae.guide, lg.x)[0]
                             for _ in range(repeats)]).mean(1)
    return float(draws.mean()), float(draws.std() / math.sqrt(repeats))


@pytest.mark.slow
def test_orderings_that_hold_and_objectives_that_exceed_log_px():
    lg = LinearGaussian(num_points=8)
    lg.set_encoder(loc_error=torch.tensor([0.4, -0.3]), scale_factor=1.6)
    log_px = float(lg.log_px.mean())
    elbo = float(lg.exact_elbo(lg.x).detach().mean())
    torch.manual_seed(11)
    iwae, iwae_se = per_datapoint_mean(IWAE(20), lg, 50)
    assert elbo < iwae - 4 * iwae_se and iwae < log_px + 4 * iwae_se  # ELBO ≤ IWAE_K ≤ log p
    renyi, renyi_se = per_datapoint_mean(RenyiBound(-1.0, 100), lg, 20)
    assert renyi > log_px + 0.1 + 4 * renyi_se  # α < 0: above log p(x)
    lg.vae.kl_weight = 0.3  # β < 1: the β-weighted bound also exceeds log p(x)
    beta_iwae, beta_se = per_datapoint_mean(IWAE(100), lg, 20)
    assert beta_iwae > log_px + 0.1 + 4 * beta_se
    assert is_lower_bound("iwae") and is_lower_bound("renyi", alpha=0.5)
    assert not is_lower_bound("renyi", alpha=-1.0)
    assert not is_lower_bound("elbo", beta=0.3) and not is_lower_bound("iwae", beta=2.0)


def test_compare_table_marks_what_is_not_a_lower_bound():
    lg = LinearGaussian(num_points=4)
    reports = [measure_estimator(lg.vae, lg.x, "renyi", 3, repeats=2, alpha=alpha)
               for alpha in (-1.0, 0.5)]
    assert [r.lower_bound for r in reports] == [False, True]
    rows = reports_to_markdown(reports).splitlines()[2:]
    assert "not a lower bound" in rows[0] and "not a lower bound" not in rows[1]


@pytest.mark.slow
def test_monte_carlo_error_with_a_bayesian_decoder_carries_the_shared_weight_draws():
    from pyro_vae.models.bayesian import BayesianVAE

    lg = LinearGaussian(num_points=40)
    lg.set_encoder()
    vae = BayesianVAE(lg.vae.encoder, lg.vae.decoder, lg.vae.prior, lg.vae.likelihood,
                      layers="last")
    with torch.no_grad():  # a wide posterior on the decoder bias, shared by every datapoint
        vae.weight_posterior.raw_scale[1].fill_(math.log(math.expm1(0.3)))
    torch.manual_seed(1)
    runs = [estimate_log_likelihood(vae, lg.x, num_samples=200) for _ in range(10)]
    means = torch.tensor([run.mean_log_likelihood for run in runs])
    reported = torch.tensor([run.log_likelihood_mc_stderr for run in runs])
    # Jackknife over the 10 shared draws: the spread of repeated means, within its own noise.
    assert 0.4 < float(reported.mean() / means.std()) < 2.5
