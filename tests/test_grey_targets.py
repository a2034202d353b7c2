"""``pyro-vae evaluate --targets grey``: the measure of Pyro's CVAE tutorial on grey levels."""

import json

import pytest
import torch
import torch.nn.functional as F

from pyro_vae.cli import main
from pyro_vae.config import ModelConfig
from pyro_vae.evaluate import estimate_log_likelihood
from pyro_vae.grey_targets import binary_targets
from pyro_vae.models.quadrants import build_quadrant_model
from pyro_vae.runs import load_trained
from pyro_vae.training import prepare_data
from helpers import model_config


def _tutorial_masked_bce(model, grey: torch.Tensor) -> torch.Tensor:
    """The tutorial's MaskedBCELoss per image: BCE of the grey missing pixels, given ones as
    the network's input (missing ones −1)."""
    inputs = torch.where(model.given, grey, torch.full_like(grey, -1.0))
    logits = model.decoder(inputs)
    bce = F.binary_cross_entropy_with_logits(logits, grey, reduction="none")
    return bce[:, ~model.given].sum(-1)


def test_baseline_grey_score_is_the_tutorials_masked_cross_entropy():
    config = model_config(kind="quadrant_baseline", quadrants=2, latent_dim=3, hidden_dims=[16])
    baseline = build_quadrant_model(config, (1, 4, 4))
    grey = torch.rand(7, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        score = estimate_log_likelihood(baseline, grey, num_samples=3)
        expected = -_tutorial_masked_bce(baseline, grey)
    assert torch.allclose(score.elbo, expected, atol=1e-5)
    assert torch.allclose(score.log_likelihood, expected, atol=1e-5)
    # grey targets are not binary draws: a binarization of them scores differently
    binary = torch.bernoulli(grey, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert not torch.allclose(estimate_log_likelihood(baseline, binary, 1).elbo, expected)


@pytest.mark.slow
def test_cli_grey_targets_on_a_quadrant_run_and_a_clear_error_elsewhere(tmp_path, capsys):
    run = tmp_path / "baseline"
    assert main(["train", "--model", "quadrant_baseline", "--quadrants", "1", "--epochs", "1",
                 "--eval-samples", "1", "--latent-map", "pca", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--num-samples", "2", "--targets", "grey",
                 "--json"]) == 0
    grey = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(run), "--num-samples", "2", "--json"]) == 0
    binary = json.loads(capsys.readouterr().out)
    assert grey["targets"] == "grey" and "not a likelihood" in grey["score_name"]
    assert binary["targets"] == "binary"
    config, model, _ = load_trained(run)
    data = prepare_data(config)
    with torch.no_grad():
        expected = -_tutorial_masked_bce(model, data.grey("test")).mean()
    assert abs(grey["test_elbo"] - float(expected)) < 1e-3
    assert abs(grey["test_elbo"] - binary["test_elbo"]) > 0.1

    gaussian = tmp_path / "gaussian"
    assert main(["train", "--likelihood", "gaussian", "--epochs", "1", "--eval-samples", "1",
                 "--latent-map", "pca", "--out", str(gaussian)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(gaussian), "--targets", "grey"]) == 2
    err = capsys.readouterr().err
    assert "--targets grey" in err and "'gaussian'" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_run_trained_on_grey_levels_is_scored_on_the_dynamic_runs_binary_test_set(
        tmp_path, capsys):
    """``--targets binary`` scores a grey-trained run on the fixed binary draw of the test
    images that a dynamically binarized run is scored on: a true log p(x), comparable."""
    grey_run, dynamic_run = tmp_path / "grey", tmp_path / "dynamic"
    common = ["--epochs", "1", "--eval-samples", "2", "--latent-map", "pca"]
    assert main(["train", "--binarize", "grey", *common, "--out", str(grey_run)]) == 0
    assert main(["train", *common, "--out", str(dynamic_run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(grey_run), "--num-samples", "2", "--json"]) == 0
    as_trained = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(grey_run), "--num-samples", "2", "--targets", "binary",
                 "--json"]) == 0
    binary = json.loads(capsys.readouterr().out)
    assert as_trained["targets"] == "grey" and "not a likelihood" in as_trained["score_name"]
    assert binary["targets"] == "binary" and binary["score_name"] == "log p(x)"

    # The targets are exactly the dynamic run's test images: score them with the grey model.
    config, model, _ = load_trained(grey_run)
    dynamic_test = prepare_data(load_trained(dynamic_run)[0]).test_x
    assert set(dynamic_test.unique().tolist()) == {0.0, 1.0}
    torch.manual_seed(0)
    with torch.no_grad():
        expected = estimate_log_likelihood(model, dynamic_test, 2)
    assert abs(binary["test_elbo"] - expected.mean_elbo) < 1e-4
    assert abs(binary["test_elbo"] - as_trained["test_elbo"]) > 0.1

    assert main(["evaluate", str(dynamic_run), "--targets", "binary", "--num-samples", "2"]) == 0
    capsys.readouterr()
    # A statically binarized run's own test draw comes after its training draw, so it is not
    # the dynamic runs' test set; --targets binary scores it on theirs.
    static_run = tmp_path / "static"
    assert main(["train", "--binarize", "static", *common, "--out", str(static_run)]) == 0
    static_config, static_model, _ = load_trained(static_run)
    static_data = prepare_data(static_config)
    assert not torch.equal(static_data.test_x, dynamic_test)
    assert torch.equal(binary_targets(static_config, static_data, "test"), dynamic_test)
    capsys.readouterr()
    assert main(["evaluate", str(static_run), "--num-samples", "2", "--targets", "binary",
                 "--json"]) == 0
    static_binary = json.loads(capsys.readouterr().out)
    torch.manual_seed(0)
    with torch.no_grad():
        expected = estimate_log_likelihood(static_model, dynamic_test, 2)
    assert abs(static_binary["test_elbo"] - expected.mean_elbo) < 1e-4
    gaussian = tmp_path / "gaussian"
    assert main(["train", "--likelihood", "gaussian", *common, "--out", str(gaussian)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(gaussian), "--targets", "binary"]) == 2
    assert "--targets binary" in capsys.readouterr().err
