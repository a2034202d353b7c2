"""Structured output prediction: quadrant masks, masked likelihoods, vectorized particles."""

import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae.cli import main
from pyro_vae.config import Config, ModelConfig
from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import estimate_log_likelihood
from pyro_vae.models.quadrants import build_quadrant_model, given_mask
from pyro_vae.training import train
from helpers import model_config

SHAPE = (1, 4, 4)


def _model(kind, quadrants=1):
    config = model_config(kind=kind, quadrants=quadrants, latent_dim=3, hidden_dims=[16])
    return build_quadrant_model(config, SHAPE)


@pytest.mark.parametrize("quadrants", [1, 2, 3])
def test_given_quadrants(quadrants):
    given = given_mask(SHAPE, quadrants).reshape(4, 4)
    assert int(given.sum()) == 4 * quadrants
    assert bool(given[2:, :2].all())                     # bottom-left is always given
    assert bool(given[:2, :2].all()) == (quadrants > 1)  # then top-left
    assert bool(given[:2, 2:].all()) == (quadrants > 2)  # then top-right
    assert not bool(given[2:, 2:].any())                 # bottom-right is always predicted


def test_baseline_score_is_the_exact_likelihood_of_the_missing_pixels():
    baseline = _model("quadrant_baseline", 2)
    x = torch.rand(5, 16).round()
    logits = baseline.decoder(baseline.inputs(x))
    missing = ~baseline.given
    exact = torch.distributions.Bernoulli(logits=logits[:, missing]).log_prob(
        x[:, missing]).sum(-1)
    estimate = estimate_log_likelihood(baseline, x, num_samples=4)
    assert torch.allclose(estimate.log_likelihood, exact, atol=1e-5)
    # the given pixels are inputs, never scored: changing them only changes the prediction
    flipped = x.clone()
    flipped[:, missing] = 1 - flipped[:, missing]
    assert not torch.allclose(estimate_log_likelihood(baseline, flipped, 1).log_likelihood,
                              exact)


def test_cvae_trains_and_scores_with_vectorized_particles():
    cvae = _model("quadrant_cvae", 1)
    cvae.num_data = 100
    x = torch.rand(6, 16).round()
    elbo = Trace_ELBO(num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(cvae.model, cvae.guide, x)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in cvae.prior.parameters())
    cvae.num_data = None
    torch.manual_seed(0)
    estimate = estimate_log_likelihood(cvae, x, num_samples=200)
    assert estimate.log_likelihood.shape == (6,)
    assert bool((estimate.elbo <= estimate.log_likelihood).all())
    assert cvae.predict(x, 3).shape == (3, 6, 16)
    # completions keep the given pixels
    assert torch.equal(cvae.predict(x, 2)[:, :, cvae.given], x[:, cvae.given].expand(2, 6, -1))


@pytest.mark.slow
def test_quadrant_runs_write_completions(tmp_path):
    config = Config().with_overrides({"model": {"kind": "quadrant_cvae", "quadrants": 3},
                                      "train": {"epochs": 1}, "evaluate": {"num_samples": 5}})
    summary = train(config, tmp_path / "run")
    assert summary["score_name"] == "log p(y|x) of the missing quadrants"
    assert (tmp_path / "run" / "completions.png").exists()


def test_bad_quadrant_count(tmp_path, capsys):
    with pytest.raises(ConfigError, match="1, 2 or 3"):
        Config.from_dict({"model": {"kind": "quadrant_cvae", "quadrants": 0}})
    assert main(["train", "--model", "quadrant_cvae", "--quadrants", "4",
                 "--out", str(tmp_path / "r")]) == 2
    assert "give 1, 2 or 3 quadrants" in capsys.readouterr().err


@pytest.mark.slow
def test_tutorial_cvae_reads_a_frozen_trained_baseline(tmp_path, capsys):
    """Pyro's tutorial CVAE: the prior network reads the given pixels with the trained
    baseline's prediction in the missing ones, the generation network reads z only. The
    baseline's weights are copied in when training starts, never trained, and saved with the
    CVAE, so the run scores without the baseline run."""
    from pyro_vae.runs import load_checkpoint, load_trained

    def config(kind, epochs=1, **model):
        return Config().with_overrides({
            "model": {"kind": kind, "quadrants": 2, "hidden_dims": [16], **model},
            "train": {"epochs": epochs}, "evaluate": {"num_samples": 5}})

    summary = train(config("quadrant_baseline"), tmp_path / "baseline")
    assert summary["active_units"] is None  # no latent code: nothing to count (was "0 of 8")
    assert main(["evaluate", str(tmp_path / "baseline"), "--num-samples", "1"]) == 0
    assert "active units: none (this model has no latent code)" in capsys.readouterr().out
    baseline_weights = load_checkpoint(tmp_path / "baseline" / "checkpoint.pt")["model"]
    tutorial = config("quadrant_cvae", epochs=2, quadrant_generation="z",
                      baseline_run=str(tmp_path / "baseline"))
    train(tutorial, tmp_path / "cvae")
    saved = load_checkpoint(tmp_path / "cvae" / "checkpoint.pt")["model"]
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        assert torch.equal(saved[f"baseline.{name}"], baseline_weights[f"decoder.{name}"]), name

    (tmp_path / "baseline" / "checkpoint.pt").unlink()  # the CVAE's run stands on its own
    _, cvae, _ = load_trained(tmp_path / "cvae")
    assert cvae.decoder.net[0].in_features == 8  # p(y|z): z only (latent_dim 8)
    x = torch.rand(4, 64).round()
    guess = torch.sigmoid(cvae.baseline(cvae.inputs(x)))
    expected = torch.where(cvae.given, x, guess)
    assert torch.equal(cvae.prior_inputs(x), expected)
    assert not torch.equal(cvae.prior_inputs(x), cvae.inputs(x))
    assert main(["evaluate", str(tmp_path / "cvae"), "--num-samples", "5"]) == 0


@pytest.mark.slow
def test_tutorial_cvae_options_are_checked(tmp_path, capsys):
    with pytest.raises(ConfigError, match="quadrant_generation is the option 'generation' of "
                                          "kind = \"quadrant_cvae\""):
        Config.from_dict({"model": {"kind": "vae", "quadrant_generation": "z"}})
    with pytest.raises(ConfigError, match=r"\[kind\] generation = 'x' is not one of"):
        Config.from_dict({"model": {"kind": "quadrant_cvae", "quadrant_generation": "x"}})
    with pytest.raises(ConfigError, match="not an option of the kind 'quadrant_baseline'"):
        Config.from_dict({"model": {"kind": "quadrant_baseline"}, "kind": {"generation": "z"}})
    run = tmp_path / "cvae"
    assert main(["train", "--model", "quadrant_cvae", "--baseline-run",
                 str(tmp_path / "nothing"), "--epochs", "1", "--out", str(run)]) == 2
    assert "holds no trained run" in capsys.readouterr().err
    assert not (run / "checkpoint.pt").exists()
    # A baseline for another number of quadrants, or of other widths, is refused by name.
    train(Config().with_overrides({"model": {"kind": "quadrant_baseline", "quadrants": 3},
                                   "train": {"epochs": 1}, "evaluate": {"num_samples": 2}}),
          tmp_path / "baseline3")
    assert main(["train", "--model", "quadrant_cvae", "--quadrants", "1", "--baseline-run",
                 str(tmp_path / "baseline3"), "--epochs", "1", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "quadrants 3 (this CVAE: 1)" in err and "Traceback" not in err
    (tmp_path / "baseline3" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["train", "--model", "quadrant_cvae", "--quadrants", "3", "--baseline-run",
                 str(tmp_path / "baseline3"), "--epochs", "1", "--out", str(run)]) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_only_the_generation_network_that_reads_the_given_pixels_starts_at_the_mean_image():
    """p(y|z) keeps its zero output bias: starting at the mean image collapsed it on MNIST."""
    x = (torch.rand(50, 16) < 0.2).float()
    for generation, starts in (("given_and_z", True), ("z", False)):
        cvae = build_quadrant_model(model_config(kind="quadrant_cvae", latent_dim=3,
                                                hidden_dims=[16],
                                                quadrant_generation=generation), SHAPE)
        bias = cvae.decoder.net[-1].bias
        before = bias.detach().clone()
        cvae.start_output_bias(x)
        assert torch.equal(bias, before) != starts, generation
