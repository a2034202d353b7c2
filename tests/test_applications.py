"""Applications: anomaly scores, imputation, linear probe and traversals, on a quick MNIST VAE."""

import json

import pytest
import torch

from pyro_vae.applications import (auroc, impute, imputation_error, linear_probe_accuracy,
                                   make_mask)
from pyro_vae.cli import main
from pyro_vae.config import Config
from pyro_vae.errors import ConfigError
from pyro_vae.training import prepare_data, train


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory, data_dir):
    run_dir = tmp_path_factory.mktemp("apps") / "mnist"
    config = Config.from_toml("models/mnist_vae_burda.toml").with_overrides({
        "data": {"data_dir": str(data_dir)}, "train": {"epochs": 1, "batch_size": 100},
        "evaluate": {"num_samples": 2}})
    train(config, run_dir)
    return run_dir


def test_auroc_and_masks_mechanics():
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 0.0
    for kind in ("box", "random", "bottom"):
        mask = make_mask(200, (1, 28, 28), kind, 0.25)
        assert mask.shape == (200, 784)
        assert abs(float((~mask).float().mean()) - 0.25) < 0.03
    with pytest.raises(ConfigError):
        make_mask(2, (1, 28, 28), "box", 1.5)


@pytest.mark.slow
def test_anomaly_auroc_mnist_against_fashion(mnist_run, data_dir, capsys):
    assert main(["anomaly", str(mnist_run), "--against", "fashion-mnist", "--data-dir",
                 str(data_dir), "--limit", "300", "--num-samples", "20",
                 "--score", "log-likelihood", "--score", "elbo"]) == 0
    report = json.loads((mnist_run / "anomaly" / "anomaly.json").read_text())
    metrics = report["metrics"]["fashion-mnist"]
    assert metrics["log-likelihood"]["auroc"] > 0.9 and metrics["elbo"]["auroc"] > 0.9
    assert (mnist_run / "anomaly" / "anomaly.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["random", "bottom"])
def test_imputation_beats_the_mean_image(mnist_run, data_dir, kind):
    from pyro_vae.runs import load_trained

    config, vae, _ = load_trained(mnist_run)
    data = prepare_data(config.with_overrides({"data": {"data_dir": str(data_dir)}}))
    x = data.test_x[:200]
    observed = make_mask(len(x), data.image_shape, kind, 0.25)
    mean_image = data.train_x.mean(0)
    torch.manual_seed(0)
    imputed = impute(vae, x, observed, mean_image, num_samples=200)
    assert torch.equal(imputed[observed], x[observed])  # observed pixels are kept
    report = imputation_error(x, observed, imputed, mean_image)
    assert report.model_mse < 0.9 * report.baseline_mse


@pytest.mark.slow
def test_probe_and_traversals_from_the_cli(mnist_run, data_dir, tmp_path, capsys):
    assert main(["probe", str(mnist_run), "--data-dir", str(data_dir),
                 "--out", str(tmp_path / "probe")]) == 0
    rows = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert rows[0]["latent_dim"] == 50 and rows[0]["test_accuracy"] > 0.7  # chance: 0.1
    assert main(["traverse", str(mnist_run), "--data-dir", str(data_dir),
                 "--out", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t.png").stat().st_size > 0
    assert main(["impute", str(mnist_run), "--data-dir", str(data_dir), "--limit", "20",
                 "--num-samples", "20", "--out", str(tmp_path / "imp")]) == 0
    assert (tmp_path / "imp" / "imputation.png").stat().st_size > 0


@pytest.mark.slow
def test_probe_needs_labels_and_anomaly_needs_the_same_shape(tmp_path, capsys, data_dir):
    run = tmp_path / "digits"
    train(Config().with_overrides({"model": {"hidden_dims": [16], "latent_dim": 2},
                                   "train": {"epochs": 1}, "evaluate": {"num_samples": 2}}),
          run)
    assert main(["anomaly", str(run), "--against", "mnist", "--data-dir", str(data_dir)]) == 2
    assert "shape" in capsys.readouterr().err
    assert main(["traverse", str(run), "--index", "100000"]) == 2
    assert "outside" in capsys.readouterr().err


def test_linear_probe_on_digits_beats_chance():
    from pyro_vae.data import load_dataset
    from pyro_vae.models import build_vae

    data = load_dataset("digits")
    torch.manual_seed(0)
    vae = build_vae(Config().model, data.image_shape)  # even random features beat chance
    accuracy = linear_probe_accuracy(vae, data.train_x, data.train_y, data.test_x, data.test_y)
    assert accuracy > 0.3
