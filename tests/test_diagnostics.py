"""Posterior diagnostics: ArviZ export, NUTS against the exact posterior, held-out model
comparison and the inference-gap decomposition, checked on the linear-Gaussian toy."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch.distributions import kl_divergence

import pyro.distributions as dist
from pyro_vae.cli import main
from pyro_vae.config import Config
from pyro_vae.diagnostics import (amortized_posterior_draws, exact_posterior_draws,
                                  heldout_elpd, inference_data_from_draws, inference_gaps,
                                  log_likelihood_inference_data, optimize_local_posterior,
                                  save_inference_data, save_posterior_comparison)
from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import estimate_log_likelihood
from pyro_vae.toy import LATENT, SIGMA, LinearGaussian
from pyro_vae.training import train

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

LOC_ERROR, SCALE_FACTOR = torch.tensor([0.4, -0.3]), 1.6


def exact_posterior_mean(lg: LinearGaussian, x: torch.Tensor) -> torch.Tensor:
    """E[z|x] = Σ Wᵀ(x − b)/σ² for the toy."""
    return (x - lg.bias) @ (lg.post_cov @ lg.weight.T / SIGMA ** 2).T


def assert_same_inference_data(a: az.InferenceData, b: az.InferenceData) -> None:
    assert set(a.groups()) == set(b.groups())
    for group in a.groups():
        first, second = a[group], b[group]
        assert set(first.data_vars) == set(second.data_vars)
        for name in first.data_vars:
            assert first[name].dims == second[name].dims
            np.testing.assert_array_equal(first[name].values, second[name].values)
        for dim in first.dims:
            np.testing.assert_array_equal(first[dim].values, second[dim].values)


@pytest.fixture(scope="module")
def nuts_on_toy():
    """4 chains of NUTS on three datapoints of the toy, whose encoder is moved off p(z|x)."""
    lg = LinearGaussian()
    lg.set_encoder(loc_error=LOC_ERROR, scale_factor=SCALE_FACTOR)
    x = lg.x[:3]
    posterior = exact_posterior_draws(lg.vae, x, num_chains=4, num_draws=250, warmup_steps=150,
                                      seed=0, datapoints=[10, 11, 12])
    return lg, x, posterior


# --- ArviZ export -------------------------------------------------------------------------------

@pytest.mark.slow
def test_inference_data_round_trips_through_netcdf(tmp_path, nuts_on_toy):
    lg, x, posterior = nuts_on_toy
    amortized = amortized_posterior_draws(lg.vae, x, 200, datapoints=[10, 11, 12])
    assert amortized.posterior["z"].dims == ("chain", "draw", "datapoint", "z_dim")
    assert list(amortized.posterior["datapoint"].values) == [10, 11, 12]
    generic = inference_data_from_draws(
        {"w": torch.randn(2, 5, 3, 4), "b": np.zeros((2, 5))},
        dims={"w": ["row", "column"]}, coords={"row": ["a", "b", "c"]})
    for name, data in (("nuts", posterior), ("q", amortized), ("generic", generic)):
        path = tmp_path / f"{name}.nc"
        save_inference_data(data, path)
        assert_same_inference_data(data, az.from_netcdf(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generic.nc", "nuts.nc", "q.nc"]
    assert list(generic.posterior["row"].values) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="chain, draw"):
        inference_data_from_draws({"w": torch.zeros(2, 5), "b": torch.zeros(3, 5)})


# --- NUTS against the exact posterior -----------------------------------------------------------

@pytest.mark.slow
def test_nuts_matches_the_exact_posterior_within_monte_carlo_error(nuts_on_toy):
    lg, x, posterior = nuts_on_toy
    summary = az.summary(posterior, var_names=["z"])
    # Split-R̂ of 4 chains of 250 draws from a stationary sampler has sampling noise of about
    # 1/sqrt(total ESS) ≈ 0.02 above 1; 1.05 fails chains that have not mixed (Gelman et al.).
    assert (summary["r_hat"] < 1.05).all(), summary
    assert int(posterior.sample_stats["diverging"].sum()) == 0
    mean = torch.tensor(summary["mean"].to_numpy(), dtype=torch.float32).reshape(3, LATENT)
    sd = torch.tensor(summary["sd"].to_numpy(), dtype=torch.float32).reshape(3, LATENT)
    mcse_mean = torch.tensor(summary["mcse_mean"].to_numpy(), dtype=torch.float32).reshape(3, 2)
    mcse_sd = torch.tensor(summary["mcse_sd"].to_numpy(), dtype=torch.float32).reshape(3, 2)
    exact_mean = exact_posterior_mean(lg, x)
    exact_sd = lg.post_std.expand(3, LATENT)
    # az.summary rounds to 3 decimals: allow that rounding on top of 4.5 Monte Carlo errors.
    assert ((mean - exact_mean).abs() < 4.5 * mcse_mean + 1e-3).all(), (mean, exact_mean)
    assert ((sd - exact_sd).abs() < 4.5 * mcse_sd + 1e-3).all(), (sd, exact_sd)
    # The encoder is off by LOC_ERROR: had NUTS returned q(z|x), the check above would fail.
    q_mean = lg.vae.encoder(x)[0].detach()
    assert ((q_mean - exact_mean).abs() > 10 * mcse_mean).all()


@pytest.mark.slow
def test_posterior_comparison_picture(tmp_path, nuts_on_toy):
    lg, x, posterior = nuts_on_toy
    amortized = amortized_posterior_draws(lg.vae, x, 500, datapoints=[10, 11, 12])
    save_posterior_comparison(tmp_path / "comparison.png", amortized, posterior, datapoint=11)
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_two_layer_model_is_sampled_at_both_sites_and_refused_for_gaps():
    from pyro_vae.models import build_vae

    config = Config().with_overrides({"model": {
        "stochastic_layers": 2, "hidden_dims": [8], "latent_dim": 3,
        "top_hidden_dims": [4], "top_latent_dim": 2}})
    vae = build_vae(config.model, (1, 8, 8))
    x = torch.bernoulli(torch.full((2, 64), 0.3))
    amortized = amortized_posterior_draws(vae, x, 10)
    posterior = exact_posterior_draws(vae, x, num_chains=2, num_draws=10, warmup_steps=10)
    for data in (amortized, posterior):
        assert data.posterior["z1"].shape == (data.posterior.sizes["chain"],
                                              data.posterior.sizes["draw"], 2, 3)
        assert data.posterior["z2"].dims[-1] == "z2_dim"
    with pytest.raises(ConfigError, match="single latent site"):
        optimize_local_posterior(vae, x, steps=1)


# --- inference gaps -----------------------------------------------------------------------------

@pytest.mark.slow
def test_gaps_vanish_when_the_encoder_is_the_exact_posterior():
    lg = LinearGaussian()
    lg.set_encoder()
    gaps = inference_gaps(lg.vae, lg.x, num_samples=200, steps=50)
    summary = gaps.summary()
    # q = p(z|x) makes every weight p(x): estimates are exact, and the sticking-the-landing
    # gradient is exactly zero there, so q* does not move.
    assert torch.allclose(gaps.log_likelihood, lg.log_px, atol=1e-3)
    for gap in ("approximation_gap", "amortization_gap"):
        assert abs(summary[gap]) < 4 * summary[f"{gap}_stderr"] + 1e-4, summary


@pytest.mark.slow
def test_optimized_q_recovers_the_posterior_and_the_amortization_gap_is_the_kl():
    lg = LinearGaussian()
    lg.set_encoder(loc_error=LOC_ERROR, scale_factor=SCALE_FACTOR)
    torch.manual_seed(1)
    gaps = inference_gaps(lg.vae, lg.x, num_samples=500, steps=300, learning_rate=0.02)
    summary = gaps.summary()
    # q* is the exact posterior (the toy's posterior is a diagonal Gaussian).
    assert torch.allclose(gaps.optimized_loc, exact_posterior_mean(lg, lg.x), atol=0.01)
    assert torch.allclose(gaps.optimized_scale, lg.post_std.expand_as(gaps.optimized_scale),
                          rtol=0.01)
    assert abs(summary["approximation_gap"]) < 4 * summary["approximation_gap_stderr"] + 1e-3
    assert torch.allclose(gaps.log_likelihood, lg.log_px, atol=1e-2)
    # The amortization gap is KL(q(z|x) ‖ p(z|x)), the same for every x here.
    q = dist.Normal(LOC_ERROR, lg.post_std * SCALE_FACTOR).to_event(1)
    p = dist.Normal(torch.zeros(LATENT), lg.post_std).to_event(1)
    kl = float(kl_divergence(q, p))
    assert summary["amortization_gap"] > 10 * summary["amortization_gap_stderr"]
    assert abs(summary["amortization_gap"] - kl) < 4 * summary["amortization_gap_stderr"], \
        (summary, kl)
    exact_elbo = lg.exact_elbo(lg.x).detach()
    assert abs(summary["elbo_amortized"] - float(exact_elbo.mean())) < \
        4 * float((gaps.elbo_amortized - exact_elbo).std() / math.sqrt(len(lg.x))) + 1e-4


# --- held-out model comparison ------------------------------------------------------------------

def test_compare_ranks_models_by_heldout_elpd_with_paired_standard_errors(tmp_path):
    true_model = LinearGaussian()
    true_model.set_encoder()
    shifted = LinearGaussian()
    shifted.set_encoder()
    with torch.no_grad():
        shifted.vae.decoder.net[0].bias.add_(0.3)
    x = true_model.x  # drawn from the true model, used to fit neither
    torch.manual_seed(2)
    a = estimate_log_likelihood(true_model.vae, x, 200).log_likelihood
    b = estimate_log_likelihood(shifted.vae, x, 200).log_likelihood
    data = {"true": log_likelihood_inference_data(a), "shifted": log_likelihood_inference_data(b)}
    save_inference_data(data["shifted"], tmp_path / "ll.nc")
    assert_same_inference_data(data["shifted"], az.from_netcdf(tmp_path / "ll.nc"))
    table = az.compare({name: heldout_elpd(d) for name, d in data.items()})
    n = len(x)
    assert list(table.index) == ["true", "shifted"]
    assert table.loc["true", "elpd_loo"] == pytest.approx(float(a.sum()), rel=1e-6)
    assert table.loc["shifted", "elpd_loo"] == pytest.approx(float(b.sum()), rel=1e-6)
    assert table.loc["true", "se"] == pytest.approx(math.sqrt(n) * float(a.std(unbiased=False)),
                                                    rel=1e-5)
    diff = (a - b).double()
    assert table.loc["shifted", "elpd_diff"] == pytest.approx(float(diff.sum()), rel=1e-6)
    assert table.loc["shifted", "dse"] == pytest.approx(
        math.sqrt(n) * float(diff.std(unbiased=False)), rel=1e-5)
    assert (table["p_loo"] == 0).all() and not table["warning"].any()
    # A shift of 0.3 in every pixel's mean is detected: the difference is 2 paired s.e. or more.
    assert table.loc["shifted", "elpd_diff"] > 2 * table.loc["shifted", "dse"]


def test_heldout_elpd_averages_predictive_densities_over_draws():
    log_lik = torch.randn(2, 3, 5)
    elpd = heldout_elpd(log_likelihood_inference_data(log_lik))
    expected = torch.logsumexp(log_lik.reshape(6, 5), 0) - math.log(6)
    np.testing.assert_allclose(elpd["loo_i"].values, expected.numpy(), rtol=1e-5)
    assert elpd["n_samples"] == 6 and elpd["elpd_loo"] == pytest.approx(float(expected.sum()))


# --- the command --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("gaps") / "run"
    config = Config().with_overrides({"model": {"hidden_dims": [16], "latent_dim": 2},
                                      "train": {"epochs": 1}, "evaluate": {"num_samples": 4}})
    train(config, run)
    return run


FAST = ["--n", "6", "--num-samples", "50", "--steps", "20", "--nuts-points", "2",
        "--chains", "2", "--draws", "30"]


@pytest.mark.slow
def test_gaps_command_writes_its_files(tiny_run, tmp_path, capsys):
    out = tmp_path / "gaps"
    assert main(["gaps", str(tiny_run), *FAST, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "approximation gap" in printed and "amortization gap" in printed
    report = json.loads((out / "gaps.json").read_text())
    assert report["num_test_images"] == 6 and report["nuts"]["chains"] == 2
    assert report["inference_gap"] == pytest.approx(
        report["approximation_gap"] + report["amortization_gap"], abs=1e-4)
    nuts = az.from_netcdf(out / "posterior_nuts.nc")
    assert nuts.posterior["z"].shape == (2, 30, 2, 2)
    assert az.from_netcdf(out / "posterior_q.nc").posterior["z"].shape == (1, 60, 2, 2)
    assert az.from_netcdf(out / "log_likelihood.nc").log_likelihood["x"].shape == (1, 1, 6)
    assert (out / "posterior_comparison.png").stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "--n must be a positive integer"),
    (["--chains", "1"], "at least 2"),
    (["--nuts-points", "7", "--n", "6"], "more than the 6 test images"),
    (["--lr", "0"], "--lr 0"),
])
@pytest.mark.slow
def test_gaps_command_refuses_bad_counts(tiny_run, tmp_path, capsys, argv, message):
    assert main(["gaps", str(tiny_run), *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_gaps_command_on_a_missing_or_corrupt_run(tiny_run, tmp_path, capsys):
    assert main(["gaps", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.toml").write_text((tiny_run / "config.toml").read_text())
    (broken / "checkpoint.pt").write_bytes((tiny_run / "checkpoint.pt").read_bytes()[:500])
    assert main(["gaps", str(broken)]) == 2
    assert "truncated, corrupt" in capsys.readouterr().err
