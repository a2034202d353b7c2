"""Bad input ends in one clear message and exit status 2, never a traceback."""

import subprocess
import sys

import numpy as np
import pytest

from pyro_vae.cli import main
from pyro_vae.config import Config
from pyro_vae.training import train

from helpers import run_cli


@pytest.mark.slow
def test_unknown_dataset_from_a_real_process(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pyro_vae", "train", "--dataset", "mnsit",
                             "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Did you mean 'mnist'?" in result.stderr
    assert not (tmp_path / "r").exists()


def test_missing_data_dir(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--dataset", "mnist", "--data-dir",
                           str(tmp_path / "missing"), "--out", str(tmp_path / "r"))
    assert code == 2 and "--data-dir" in err and "--download" in err


def test_wrong_recipe_key(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text("[model]\nlatent_dims = 4\n")
    code, _, err = run_cli(capsys, "train", str(recipe), "--out", str(tmp_path / "r"))
    assert code == 2 and "latent_dims" in err and "latent_dim" in err


def test_pixels_outside_unit_interval_for_bernoulli(tmp_path, capsys):
    path = tmp_path / "big.npz"
    np.savez(path, x=np.linspace(0, 2, 40 * 16, dtype=np.float32).reshape(40, 16))
    code, _, err = run_cli(capsys, "train", "--dataset", f"file:{path}", "--binarize", "none",
                           "--out", str(tmp_path / "r"))
    assert code == 2 and "[0, 1]" in err and not (tmp_path / "r").exists()


def test_grey_pixels_for_bernoulli_without_binarization(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--binarize", "none", "--out", str(tmp_path / "r"))
    assert code == 2 and "binarize" in err and "continuous_bernoulli" in err


@pytest.fixture
def trained_run(tmp_path):
    config = Config().with_overrides({"model": {"hidden_dims": [16], "latent_dim": 2},
                                      "train": {"epochs": 1}, "evaluate": {"num_samples": 4}})
    train(config, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.slow
def test_corrupt_checkpoint(trained_run, capsys):
    checkpoint = trained_run / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    for argv in (["evaluate", str(trained_run)], ["sample", str(trained_run)],
                 ["train", "--out", str(trained_run), "--resume"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and "truncated, corrupt" in err


@pytest.mark.slow
def test_checkpoint_of_another_model(trained_run, capsys):
    config = trained_run / "config.toml"
    config.write_text(config.read_text().replace("latent_dim = 2", "latent_dim = 3"))
    code, _, err = run_cli(capsys, "evaluate", str(trained_run))
    assert code == 2 and "different [model]" in err


@pytest.mark.slow
def test_resume_cannot_change_the_model(trained_run, capsys):
    code, _, err = run_cli(capsys, "train", "--out", str(trained_run), "--resume",
                           "--latent-dim", "5")
    assert code == 2 and "cannot change when resuming" in err


@pytest.mark.slow
def test_evaluate_on_data_of_another_shape(trained_run, capsys, data_dir):
    code, _, err = run_cli(capsys, "evaluate", str(trained_run), "--dataset", "mnist",
                           "--data-dir", str(data_dir))
    assert code == 2 and "shape" in err


def test_not_a_run_directory(tmp_path, capsys):
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path))
    assert code == 2 and "config.toml" in err


def test_cuda_when_there_is_none(tmp_path, capsys, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(capsys, "train", "--device", "cuda", "--out", str(tmp_path / "r"))
    assert code == 2 and "--device cpu" in err


def test_nonpositive_flags(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--epochs", "0", "--out", str(tmp_path / "r"))
    assert code == 2 and "epochs" in err


def test_renyi_alpha_one_is_refused(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--objective", "renyi", "--alpha", "1",
                           "--out", str(tmp_path / "r"))
    assert code == 2 and "alpha = 1" in err


@pytest.mark.slow
def test_checkpoints_from_before_a_new_config_key_still_load(trained_run, capsys):
    """A key added to [model] later (with its default) must not orphan older runs."""
    import torch

    from pyro_vae.runs import load_checkpoint
    checkpoint = load_checkpoint(trained_run / "checkpoint.pt")
    for key in ("stochastic_layers", "top_latent_dim", "top_hidden_dims"):
        del checkpoint["config"]["kind"][key]
    torch.save(checkpoint, trained_run / "checkpoint.pt")
    code, _, err = run_cli(capsys, "evaluate", str(trained_run), "--num-samples", "4")
    assert code == 0, err


def test_the_help_of_pyro_vae_and_of_every_command_prints(capsys):
    """A "%" in a help text must be written "%%" (argparse formats help with it)."""
    import argparse

    from pyro_vae.cli import build_parser

    commands = next(a for a in build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    assert {"train", "evaluate", "sample", "anomaly", "gaps"} <= set(commands)
    for argv in (["--help"], *([name, "--help"] for name in commands)):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 0 and "usage:" in capsys.readouterr().out
