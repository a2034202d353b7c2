"""Resuming and reproducing runs: the same seed gives the same numbers, a resumed run gives
those of a straight one, and what may or may not change on resume (data folder, flags that
repeat the saved values, optimizer states of other parameters) is checked in the user's terms.
"""

import shutil

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.runs import load_checkpoint
from pyro_vae.training import train

from helpers import QUICK_TRAIN, QUICK_TRAIN_PCA, run_cli, three_epoch_config


@pytest.mark.slow
def test_same_seed_same_numbers(tmp_path):
    first = train(three_epoch_config(epochs=2), tmp_path / "a")
    second = train(three_epoch_config(epochs=2), tmp_path / "b")
    for key in ("test_elbo", "test_log_likelihood", "final_validation_elbo"):
        assert first[key] == second[key]
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_score_objective_resumes_exactly(tmp_path):
    straight = train(three_epoch_config(epochs=3, objective="score"), tmp_path / "a")
    train(three_epoch_config(epochs=2, objective="score"), tmp_path / "b")
    resumed = train(three_epoch_config(epochs=3, objective="score"), tmp_path / "b", resume=True)
    assert straight["test_elbo"] == resumed["test_elbo"]


@pytest.mark.slow
def test_resume_may_change_the_data_dir_but_not_go_back(tmp_path, capsys):
    run = tmp_path / "run"
    train(three_epoch_config(epochs=2), run)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3", "--data-dir",
                 str(tmp_path), "--eval-samples", "4"]) == 0
    assert main(["train", "--out", str(run), "--resume", "--epochs", "1"]) == 2
    assert "would go back" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_accepts_flags_that_repeat_the_saved_values(trained, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained["vae"], run_dir)
    assert run_cli(capsys, "train", "--out", run_dir, "--resume", "--seed", 0,
                   "--latent-dim", 2, "--epochs", 2)[0] == 0
    code, _, err = run_cli(capsys, "train", "--out", run_dir, "--resume", "--seed", 1)
    assert code == 2 and "--seed cannot change" in err


@pytest.mark.slow
def test_resuming_with_an_optimizer_state_for_other_parameters(tmp_path, capsys):
    """A checkpoint whose optimizer state names other parameters than the model has (a run of
    a release whose model had more, or one altered by hand) cannot be continued exactly: one
    paragraph and exit 2, and the run is left as it was."""
    run = tmp_path / "run"
    assert run_cli(capsys, "train", "--out", run, *QUICK_TRAIN)[0] == 0
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    checkpoint["optimizer"]["param_groups"][0]["params"].append(999)
    torch.save(checkpoint, run / "checkpoint.pt")
    before = (run / "checkpoint.pt").read_bytes()
    code, _, err = run_cli(capsys, "train", "--resume", "--out", run, "--epochs", "2")
    assert code == 2 and "optimizer state for other trainable parameters" in err
    assert (run / "checkpoint.pt").read_bytes() == before


# --- the quadrant CVAE's baseline run -----------------------------------------------------------

@pytest.mark.slow
def test_a_tutorial_cvae_resumes_after_its_baseline_run_is_gone(tmp_path, capsys, monkeypatch):
    """The CVAE's checkpoint holds the baseline's weights, so --resume needs no baseline run:
    not from another folder (baseline_run is a relative path) and not once it is deleted."""
    monkeypatch.chdir(tmp_path)
    quadrants = ["--quadrants", "2", "--batch-size", "256"]
    assert run_cli(capsys, "train", "--model", "quadrant_baseline", *quadrants, *QUICK_TRAIN_PCA,
                   "--out", "base")[0] == 0
    weights = load_checkpoint(tmp_path / "base" / "checkpoint.pt")["model"]
    assert run_cli(capsys, "train", "--model", "quadrant_cvae", *quadrants, "--baseline-run",
                   "base", "--quadrant-generation", "z", *QUICK_TRAIN_PCA, "--out", "cvae")[0] == 0
    shutil.rmtree(tmp_path / "base")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, _, err = run_cli(capsys, "train", "--resume", "--out", tmp_path / "cvae", *QUICK_TRAIN_PCA[2:],
                           "--epochs", "2")
    assert code == 0, err
    saved = load_checkpoint(tmp_path / "cvae" / "checkpoint.pt")
    assert saved["epoch"] == 2
    for name, tensor in weights.items():  # the frozen copy is still the baseline's
        if name.startswith("decoder."):
            assert torch.equal(saved["model"]["baseline." + name[len("decoder."):]], tensor)


# --- resume with a foreign optimizer state ------------------------------------------------------

@pytest.mark.slow
def test_resume_refuses_optimizer_moments_of_other_shapes(tmp_path, capsys):
    """torch's load_state_dict checks the number of parameters only; a moment of another
    shape went to the fused Adam kernel, which reads and writes it out of bounds."""
    run = tmp_path / "run"
    assert run_cli(capsys, "train", *QUICK_TRAIN_PCA, "--batch-size", "256", "--out", run)[0] == 0
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    state = payload["optimizer"]["state"]
    first = next(iter(state))
    state[first]["exp_avg"] = state[first]["exp_avg"][:1].clone()
    torch.save(payload, run / "checkpoint.pt")
    before = (run / "checkpoint.pt").read_bytes()
    code, _, err = run_cli(capsys, "train", "--resume", "--out", run, *QUICK_TRAIN_PCA[2:],
                           "--epochs", "2")
    assert code == 2
    assert "optimizer state for other trainable parameters" in err and "exp_avg" in err
    assert (run / "checkpoint.pt").read_bytes() == before
