"""The final scoring of a training run costs about its training time or less (``[evaluate]
scoring = "auto"``) unless a recipe asks for every test image with K = 5000 (``"full"``, the
Burda recipes), whose time is said first; the pilot that times it changes no figure."""

import json
from pathlib import Path

import pytest

from pyro_vae import scoring
from pyro_vae.config import Config
from pyro_vae.errors import ConfigError
from pyro_vae.scoring import (MIN_AUTO_DATAPOINTS, MIN_AUTO_SAMPLES, ScoringPlan, duration,
                              plan_scoring)
from pyro_vae.training import train

from helpers import run_cli

MODELS = Path(__file__).resolve().parent.parent / "models"
SMALL = ["--epochs", "1", "--latent-dim", "2", "--batch-size", "256", "--latent-map", "pca"]


# --- the plan, a pure function of the sizes, the pilot's seconds per sample and the budget ---

def test_a_scoring_within_the_budget_is_left_whole():
    plan = plan_scoring(10_000, 5000, "auto", seconds_per_sample=1e-7, budget_seconds=30.0)
    assert (plan.num_datapoints, plan.num_samples, plan.reduced) == (10_000, 5000, False)
    assert plan.seconds() == pytest.approx(5.0)


def test_auto_lowers_k_first_to_fit_the_budget():
    # 10,000 images x 5000 samples at 2**-16 s (15 us): 763 s; 30 s pays for 196 per image.
    plan = plan_scoring(10_000, 5000, "auto", seconds_per_sample=2 ** -16, budget_seconds=30.0)
    assert (plan.num_datapoints, plan.num_samples) == (10_000, 196)
    assert plan.reduced and plan.seconds() <= 30.0


def test_auto_then_scores_the_first_images_only_and_keeps_its_floors():
    # 100x dearer: even the least K would take 2000 s on every image.
    plan = plan_scoring(10_000, 5000, "auto", seconds_per_sample=2e-3, budget_seconds=30.0)
    assert plan.num_samples == MIN_AUTO_SAMPLES
    assert plan.num_datapoints == MIN_AUTO_DATAPOINTS  # 30 s pays for 150 images: the floor
    cheap_enough = plan_scoring(10_000, 5000, "auto", seconds_per_sample=1e-5,
                                budget_seconds=30.0 * 50)
    assert cheap_enough.num_samples > MIN_AUTO_SAMPLES
    few = plan_scoring(300, 5000, "auto", seconds_per_sample=1.0, budget_seconds=30.0)
    assert (few.num_datapoints, few.num_samples) == (300, MIN_AUTO_SAMPLES)
    small_k = plan_scoring(10_000, 20, "auto", seconds_per_sample=1.0, budget_seconds=30.0)
    assert small_k.num_samples == 20  # never more samples than asked for


def test_full_never_reduces_and_says_how_long():
    plan = plan_scoring(10_000, 5000, "full", seconds_per_sample=2e-5, budget_seconds=30.0)
    assert (plan.num_datapoints, plan.num_samples, plan.reduced) == (10_000, 5000, False)
    message = plan.message(14.0, "runs/x")
    assert "all 10,000 test images with K = 5000" in message and "about 16.7 min" in message
    assert "the training took 14 s" in message


def test_the_message_of_a_reduced_plan_says_what_the_whole_would_cost():
    plan = plan_scoring(10_000, 5000, "auto", seconds_per_sample=2e-3, budget_seconds=30.0)
    message = plan.message(3.0, "runs/mnist-1")
    assert "the first 1,000 of 10,000 test images with K = 100" in message
    assert "pyro-vae evaluate runs/mnist-1 --num-samples 5000" in message
    assert "scoring = \"full\"" in message and "27.8 h" in message
    assert ScoringPlan("auto", 5, 5, 5, 5).message(1.0, "r") is None  # no pilot, no message


def test_durations_read_naturally():
    assert [duration(s) for s in (42, 210, 7200)] == ["42 s", "3.5 min", "2.0 h"]


def test_an_unknown_scoring_mode_is_refused():
    with pytest.raises(ConfigError, match="scoring"):
        Config().with_overrides({"evaluate": {"scoring": "some"}}).validate()


def test_the_burda_recipes_ask_for_the_papers_protocol_and_the_default_does_not():
    burda = sorted(MODELS.glob("*burda*.toml"))
    assert len(burda) >= 4
    for recipe in burda:
        config = Config.from_toml(recipe)
        assert (config.evaluate.scoring, config.evaluate.num_samples) == ("full", 5000), recipe
    assert Config().evaluate.scoring == "auto"


# --- a training run on the digits, its pilot forced on and its cost per sample made dear ---

def _force_pilot(monkeypatch, seconds_per_sample=None):
    """Time every scoring (not only large ones); with ``seconds_per_sample``, pretend each
    decoded sample costs that much."""
    monkeypatch.setattr(scoring, "PILOT_FREE_SAMPLES", 0)
    if seconds_per_sample is not None:
        monkeypatch.setattr(scoring, "seconds_per_sample", lambda *a, **k: seconds_per_sample)


def test_an_expensive_scoring_is_cut_to_the_budget_and_says_so(tmp_path, capsys, monkeypatch):
    _force_pilot(monkeypatch, seconds_per_sample=1e-3)  # 5000 samples: 5 s per image
    code, out, err = run_cli(capsys, "train", *SMALL, "--out", tmp_path / "run")
    assert code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    images = summary["scoring_requested_datapoints"]
    assert summary["scoring"] == "auto" and summary["scoring_reduced"] is True
    assert summary["num_importance_samples"] == MIN_AUTO_SAMPLES
    assert summary["num_test_datapoints"] == min(images, MIN_AUTO_DATAPOINTS) == images
    assert summary["scoring_requested_samples"] == 5000
    # Said before the scoring started, and in the summary with the Monte Carlo error.
    assert f"scoring all {images} test images with K = 100" in err
    assert "K = 5000 on all" in err and "--num-samples 5000" in err
    assert err.index("K = 100 importance samples") < err.index("scored in")
    assert "Monte Carlo error" in out and "instead of 5000" in out


def test_full_scoring_keeps_k_and_says_the_time_first(tmp_path, capsys, monkeypatch):
    _force_pilot(monkeypatch, seconds_per_sample=1e-3)
    code, out, err = run_cli(capsys, "train", *SMALL, "--scoring", "full", "--eval-samples",
                             "50", "--out", tmp_path / "run")
    assert code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["scoring"], summary["scoring_reduced"]) == ("full", False)
    assert summary["num_importance_samples"] == 50
    assert summary["num_test_datapoints"] == summary["scoring_requested_datapoints"]
    assert "with K = 50 importance samples: about" in err and "Monte Carlo error" in out


@pytest.mark.slow
def test_the_pilot_changes_no_figure(tmp_path, monkeypatch):
    config = Config().with_overrides({"model": {"hidden_dims": [32], "latent_dim": 2},
                                      "train": {"epochs": 1, "batch_size": 256},
                                      "evaluate": {"num_samples": 50, "latent_map": "pca"}})
    plain = train(config, tmp_path / "plain")
    _force_pilot(monkeypatch)  # a real pilot, on a machine fast enough to need no cut
    timed = train(config, tmp_path / "timed")
    assert timed["scoring_estimated_seconds"] is not None and not timed["scoring_reduced"]
    assert plain["scoring_estimated_seconds"] is None
    for key in ("test_elbo", "test_log_likelihood", "test_log_likelihood_mc_stderr"):
        assert timed[key] == plain[key], key
