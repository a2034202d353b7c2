"""AIS and BDMC (pyro_vae.ais) against exact answers on the linear-Gaussian toy, the refusals,
and ``pyro-vae evaluate --estimator ais|bdmc`` on a tiny trained digits run.

Statistical checks use fixed seeds; their tolerances are the issue's (0.05 nats per datapoint)
or a few Monte Carlo standard errors that the estimate reports itself.
"""

from __future__ import annotations

import csv
import json

import pyro.distributions as dist
import pytest
import torch

from pyro_vae.ais import annealing_schedule
from pyro_vae.config import Config
from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import ais_log_likelihood, bdmc
from pyro_vae.models import build_vae
from pyro_vae.toy import SIGMA, LinearGaussian
from pyro_vae.training import train
from tests.helpers import run_cli


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a shared, busy CPU two threads made these runs 20 times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy() -> LinearGaussian:
    toy = LinearGaussian(num_points=40)
    toy.set_encoder(loc_error=0.5, scale_factor=2.0)  # q(z|x) off the posterior
    return toy


def exact_log_px(toy: LinearGaussian, x: torch.Tensor) -> torch.Tensor:
    covariance = toy.weight @ toy.weight.T + SIGMA ** 2 * torch.eye(len(toy.bias))
    return dist.MultivariateNormal(toy.bias, covariance).log_prob(x)


def test_the_schedule_runs_from_0_to_1_and_rises():
    for kind in ("sigmoid", "linear"):
        betas = annealing_schedule(50, kind)
        assert betas[0] == 0 and betas[-1] == 1 and bool((betas.diff() > 0).all())


@pytest.mark.slow
def test_ais_at_1000_steps_is_within_0_05_nats_of_the_exact_log_px(toy):
    torch.manual_seed(0)
    estimate = ais_log_likelihood(toy.vae, toy.x, steps=1000, chains=8, leapfrog_steps=5)
    error = estimate.log_likelihood - toy.log_px
    assert abs(float(error.mean())) <= 0.05
    # Each datapoint too, up to four of its own Monte Carlo standard errors.
    assert bool((error.abs() <= 0.05 + 4 * estimate.mc_variance.sqrt()).all())
    assert 0.4 < estimate.acceptance < 0.9  # the step size found the target (0.65)


def test_ais_from_the_posterior_start_is_exact_at_few_steps():
    """With q(z|x) = p(z|x) every weight is p(x): AIS from q is exact at any number of steps."""
    toy = LinearGaussian(num_points=10)
    toy.set_encoder()
    torch.manual_seed(0)
    estimate = ais_log_likelihood(toy.vae, toy.x, steps=5, chains=4, leapfrog_steps=2,
                                  initial="posterior")
    assert torch.allclose(estimate.log_likelihood, toy.log_px, atol=1e-3)


def test_ais_rises_toward_the_exact_value_as_steps_grow(toy):
    means, errors = [], []
    for steps in (3, 30, 300):
        torch.manual_seed(0)
        estimate = ais_log_likelihood(toy.vae, toy.x, steps=steps, chains=4, leapfrog_steps=3)
        means.append(float((estimate.log_likelihood - toy.log_px).mean()))
        errors.append(estimate.log_likelihood_mc_stderr)
    # A stochastic lower bound: below the truth (up to noise), and closer with more steps.
    assert means[0] < means[1] - 2 * (errors[0] + errors[1])
    assert means[1] < means[2] + 2 * (errors[1] + errors[2])
    assert means[2] <= 3 * errors[2] and abs(means[2]) < abs(means[1]) < abs(means[0])


@pytest.mark.slow
def test_the_bdmc_interval_contains_the_exact_log_px(toy):
    torch.manual_seed(1)
    result = bdmc(toy.vae, 40, steps=300, chains=4, example=toy.x, leapfrog_steps=5)
    exact = float(exact_log_px(toy, result.x).mean())
    lower, upper = result.lower, result.upper
    assert lower.mean_log_likelihood - 3 * lower.log_likelihood_mc_stderr <= exact
    assert exact <= upper.mean_log_likelihood + 3 * upper.log_likelihood_mc_stderr
    # The gap is ≥ 0 in expectation, and small at 300 steps (0.10 ± 0.06 at 100 steps and
    # 0.03 ± 0.02 at 1,000 in benchmarks/results/ais_linear_gaussian.json).
    gap, gap_stderr = float(result.gap.mean()), float(result.gap.std() / 40 ** 0.5)
    assert -3 * gap_stderr <= gap <= 0.1 + 3 * gap_stderr


def test_bdmc_on_given_data_sandwiches_the_exact_value():
    """Simulated pairs given: the reverse chain starts at the exact z (fast, few steps)."""
    toy = LinearGaussian(num_points=20, seed=3)
    torch.manual_seed(0)
    z = torch.randn(20, 2)
    x = z @ toy.weight.T + toy.bias + SIGMA * torch.randn(20, len(toy.bias))
    result = bdmc(toy.vae, 20, steps=100, chains=4, example=x, leapfrog_steps=3,
                  data=(x, {"z": z}))
    exact = float(exact_log_px(toy, x).mean())
    noise = 3 * (result.lower.log_likelihood_mc_stderr + result.upper.log_likelihood_mc_stderr)
    assert result.lower.mean_log_likelihood <= exact + noise
    assert result.upper.mean_log_likelihood >= exact - noise
    assert float(result.gap.mean()) < 0.2


def test_the_step_size_comes_only_from_the_adaptation_chains(toy):
    """With no adaptation chains the step size stays where it started."""
    torch.manual_seed(0)
    estimate = ais_log_likelihood(toy.vae, toy.x[:3], steps=10, chains=2, adapt_chains=0,
                                  initial_step_size=0.3, leapfrog_steps=1)
    assert torch.allclose(estimate.step_sizes, torch.full_like(estimate.step_sizes, 0.3))
    adapted = ais_log_likelihood(toy.vae, toy.x[:3], steps=10, chains=2, adapt_chains=2,
                                 initial_step_size=0.3, leapfrog_steps=1)
    assert not torch.allclose(adapted.step_sizes[-1], torch.tensor(0.3))


def test_the_ais_weights_are_unbiased_for_p_x():
    """E[w] = p(x): the mean of w / p(x) over 2,000 datapoints (one chain each, 50 steps) is
    1 within three standard errors. Adapting a chain's step size from its own acceptances
    would bias it upward (+0.06 nats in log p̂ measured at 50 steps, one chain per datapoint)."""
    toy = LinearGaussian(num_points=2000, seed=2)
    torch.manual_seed(0)
    estimate = ais_log_likelihood(toy.vae, toy.x, steps=50, chains=1, adapt_chains=2,
                                  leapfrog_steps=5)
    ratio = (estimate.log_likelihood - toy.log_px).exp()
    stderr = float(ratio.std() / len(ratio) ** 0.5)
    assert abs(float(ratio.mean()) - 1) <= 3 * stderr and stderr < 0.03


def small_model(train=None, **model):
    config = Config().with_overrides({"model": {"hidden_dims": [8], "latent_dim": 2, **model},
                                      "train": train or {}})
    return build_vae(config.model, (1, 8, 8))


@pytest.mark.parametrize("model", [{"stochastic_layers": 2}, {"prior": "mixture"},
                                   {"kind": "cvae"}])
def test_every_continuous_kind_is_scored_through_its_pyro_program(model):
    torch.manual_seed(0)
    vae = small_model(**model)
    x = (torch.rand(4, 64) < 0.3).float()
    y = torch.arange(4) if model.get("kind") == "cvae" else None
    estimate = ais_log_likelihood(vae, x, steps=10, chains=2, leapfrog_steps=2, y=y)
    assert estimate.log_likelihood.shape == (4,)
    assert bool(torch.isfinite(estimate.log_likelihood).all())
    assert bool((estimate.log_likelihood < 0).all())  # binary pixels: log p(x) < 0


def test_a_discrete_code_is_refused_in_words():
    vae = small_model(kind="discrete", categorical_latents=2, train={"objective": "score"})
    with pytest.raises(ConfigError, match="discrete latent variable"):
        ais_log_likelihood(vae, torch.zeros(2, 64), steps=2, chains=1)


def test_a_global_latent_site_is_refused_in_words():
    vae = small_model(bayesian_decoder="last")
    with pytest.raises(ConfigError, match="global latent variable"):
        ais_log_likelihood(vae, torch.zeros(2, 64), steps=2, chains=1)


def test_bad_settings_are_refused(toy):
    for options in ({"steps": 0}, {"chains": 0}, {"initial": "uniform"},
                    {"target_acceptance": 1.5}, {"schedule": "cosine"}):
        with pytest.raises(ConfigError):
            ais_log_likelihood(toy.vae, toy.x[:2], **{"steps": 2, "chains": 1, **options})


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ais") / "run"
    config = Config().with_overrides({"model": {"hidden_dims": [16], "latent_dim": 2},
                                      "train": {"epochs": 1}, "evaluate": {"num_samples": 4}})
    train(config, run_dir)
    return run_dir


def test_cli_ais_writes_its_keys_and_a_per_datapoint_file(digits_run, capsys):
    code, out, _ = run_cli(capsys, "evaluate", digits_run, "--estimator", "ais", "--limit", 4,
                           "--ais-steps", 10, "--ais-chains", 3, "--ais-leapfrog", 2, "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["num_test_datapoints"] == 4
    for key in ("test_log_likelihood_ais", "test_log_likelihood_ais_stderr",
                "test_log_likelihood_ais_mc_stderr"):
        assert isinstance(summary[key], float)
    with open(summary["per_datapoint_file"]) as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 4
    mean = sum(float(row["log_likelihood"]) for row in rows) / 4
    assert mean == pytest.approx(summary["test_log_likelihood_ais"], abs=1e-4)


def test_cli_bdmc_and_limit_for_importance_sampling(digits_run, capsys, tmp_path):
    target = tmp_path / "bdmc.csv"
    code, out, err = run_cli(capsys, "evaluate", digits_run, "--estimator", "bdmc", "--limit",
                             3, "--ais-steps", 10, "--ais-chains", 2, "--ais-leapfrog", 2,
                             "--per-datapoint", target, "--json")
    assert code == 0 and "BDMC" in err and "s left" in err  # the progress report, with ETA
    summary = json.loads(out)
    assert summary["num_simulated_datapoints"] == 3 and summary["bdmc_lower"] < 0
    assert summary["bdmc_gap"] == pytest.approx(summary["bdmc_upper"] - summary["bdmc_lower"],
                                                abs=1e-4)
    assert len(target.read_text().splitlines()) == 4
    code, out, _ = run_cli(capsys, "evaluate", digits_run, "--limit", 7, "--num-samples", 5,
                           "--json")
    assert code == 0 and json.loads(out)["num_test_datapoints"] == 7


def test_cli_refuses_bad_flags_in_one_paragraph(digits_run, capsys):
    code, _, err = run_cli(capsys, "evaluate", digits_run, "--estimator", "ais",
                           "--ais-steps", 0)
    assert code == 2 and "--ais-steps must be a positive integer" in err
    code, _, err = run_cli(capsys, "evaluate", digits_run, "--limit", -1)
    assert code == 2 and "--limit" in err
    # --per-datapoint was silently ignored under importance sampling (nothing written, exit 0),
    # and an unwritable path failed only after the annealing.
    for flags, said in ((["--per-datapoint", "x.csv"], "writes the per-datapoint values of "
                                                        "--estimator ais or bdmc"),
                        (["--estimator", "ais", "--per-datapoint", digits_run], "is a folder"),
                        (["--estimator", "ais", "--per-datapoint",
                          digits_run / "checkpoint.pt" / "x.csv"], "does not exist")):
        code, _, err = run_cli(capsys, "evaluate", digits_run, *flags)
        assert code == 2 and said in err, err


def test_cli_ctrl_c_stops_cleanly_and_writes_nothing(digits_run, capsys, monkeypatch, tmp_path):
    from pyro_vae.cli import evaluate as command

    def interrupt(self, datapoint_steps):
        raise KeyboardInterrupt
    monkeypatch.setattr(command.AnnealingProgress, "advance", interrupt)
    target = tmp_path / "never.csv"
    code, _, err = run_cli(capsys, "evaluate", digits_run, "--estimator", "ais", "--limit", 2,
                           "--ais-steps", 5, "--per-datapoint", target)
    assert code == 130 and "interrupted" in err and not target.exists()
