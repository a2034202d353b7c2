"""Non-finite and vanishing numbers in training: a NaN or inf loss stops the run with the
step, the term and the last good checkpoint named (or rolls back at half the learning rate),
and the KL weight never underflows to zero.
"""

import json

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.errors import TrainingError
from pyro_vae.runs import load_checkpoint
from pyro_vae.training import KLSchedule, train

from helpers import QUICK_TRAIN, poison_decoder, run_cli, three_epoch_config


@pytest.mark.slow
def test_nan_stops_with_step_term_and_last_good_checkpoint(tmp_path, monkeypatch):
    poison_decoder(monkeypatch, at_call=15)  # epoch 2 (12 steps per epoch, plus validation)
    with pytest.raises(TrainingError) as caught:
        train(three_epoch_config(), tmp_path / "run")
    message = str(caught.value)
    assert "epoch 2" in message and "step" in message
    assert "log p(x|z)" in message and "checkpoint of epoch 1" in message
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow
def test_nan_rollback_halves_the_rate_and_finishes(tmp_path, monkeypatch):
    poison_decoder(monkeypatch, at_call=15, times=1)
    summary = train(three_epoch_config(on_nan="rollback"), tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [row["rollbacks"] for row in rows] == [0, 1, 1]
    assert rows[1]["learning_rate"] == pytest.approx(rows[0]["learning_rate"] / 2)
    assert torch.isfinite(torch.tensor(summary["test_log_likelihood"]))


def test_nan_from_the_cli_is_exit_2_without_traceback(tmp_path, monkeypatch, capsys):
    poison_decoder(monkeypatch, at_call=1)
    code = main(["train", "--out", str(tmp_path / "run"), "--epochs", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "initial state" in err


@pytest.mark.slow
def test_nan_in_the_first_epoch_leaves_the_folder_reusable(tmp_path, monkeypatch, capsys):
    poison_decoder(monkeypatch, at_call=1)
    assert main(["train", "--out", str(tmp_path / "run"), "--epochs", "1"]) == 2
    assert "train again with a smaller --lr" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["train", "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--eval-samples", "4"]) == 0


@pytest.mark.slow
def test_resume_after_a_rollback_keeps_the_halved_rate(tmp_path, monkeypatch):
    poison_decoder(monkeypatch, at_call=15, times=1)
    straight = train(three_epoch_config(epochs=4, on_nan="rollback"), tmp_path / "a")
    monkeypatch.undo()
    poison_decoder(monkeypatch, at_call=15, times=1)
    train(three_epoch_config(epochs=3, on_nan="rollback"), tmp_path / "b")
    monkeypatch.undo()
    resumed = train(three_epoch_config(epochs=4, on_nan="rollback"), tmp_path / "b", resume=True)
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").open()]
    assert rows[-1]["rollbacks"] == 1 and rows[-1]["learning_rate"] == pytest.approx(5e-4)
    assert straight["test_elbo"] == resumed["test_elbo"]

# --- a non-finite step of a labelled model ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["cvae", "m2"])
def test_a_labelled_models_nan_is_the_nan_paragraph(tmp_path, capsys, kind):
    """The diagnosis replayed the batch without its labels: the cvae said "call model(x, y)"
    instead of what went wrong, and M2 ended in a traceback sampling q(y|x) from NaN logits."""
    code, _, err = run_cli(capsys, "train", "--model", kind, "--lr", 1e38, *QUICK_TRAIN,
                           "--out", tmp_path / "run")
    assert code == 2 and " became " in err and "at epoch 1, step" in err
    assert "non-finite parameters" in err and "model(x, y)" not in err
    assert not (tmp_path / "run").exists()


def test_the_kl_weight_never_underflows_to_zero():
    assert KLSchedule(beta=1e-10, warmup_steps=10 ** 400).weight(0) > 0
