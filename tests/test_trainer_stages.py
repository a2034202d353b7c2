"""The training loop's stages one at a time (:class:`pyro_vae.training.Trainer`): setting up a
fresh or a resumed run, one epoch's steps, a non-finite step rolled back or stopped, the metrics
row, the checkpoint written and the collapse warning shown once; driven by hand, the stages give
the same run as :func:`~pyro_vae.training.train`.
"""

import json

import pyro
import pytest
import torch

from pyro_vae.errors import TrainingError
from pyro_vae.progress import Progress
from pyro_vae.runs import load_checkpoint
from pyro_vae.steps import NonFiniteStep
from pyro_vae.training import MAX_ROLLBACKS, Trainer, TrainingState, train

from helpers import one_epoch_config, poison_decoder


def tiny_config(epochs=1, **train_options):
    """A tiny VAE on the digits (hidden 16, latent 2; 13 steps an epoch), the latent map by
    principal components (t-SNE would cost most of the run's time)."""
    return one_epoch_config().with_overrides({"train": {"epochs": epochs, **train_options},
                                              "evaluate": {"latent_map": "pca"}})


class Warnings(Progress):
    """A progress display that keeps the warnings it is given."""

    def __init__(self):
        self.warnings = []

    def warn(self, message):
        self.warnings.append(message)


def weights(vae):
    return {name: tensor.clone() for name, tensor in vae.state_dict().items()}


def test_setting_up_a_fresh_run_trains_nothing_and_writes_nothing(tmp_path):
    trainer = Trainer(tiny_config(), tmp_path / "run", False, Progress())
    assert trainer.state == TrainingState() and trainer.start_epoch == 0
    assert list((tmp_path / "run").iterdir()) == []  # the folder is made, nothing written yet
    assert trainer.last_good is not None  # what a non-finite first epoch rolls back to
    assert trainer.batches_per_epoch == -(-len(trainer.data.train_x) // 128)


@pytest.mark.slow
def test_setting_up_a_resumed_run_restores_its_counters(tmp_path):
    train(tiny_config(), tmp_path / "run", progress=False)
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    trainer = Trainer(tiny_config(epochs=2), tmp_path / "run", True, Progress())
    assert (trainer.state.epoch, trainer.state.step, trainer.start_epoch) == (1, saved["step"], 1)
    assert trainer.state.history == saved["history"] and trainer.last_good is None
    assert all(torch.equal(trainer.vae.state_dict()[k], v) for k, v in saved["model"].items())


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_an_epoch_takes_its_steps_and_a_failed_one_leaves_the_count(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(), tmp_path / "run", False, Progress())
    elbo = trainer.train_epoch()
    assert trainer.state.step == trainer.batches_per_epoch and elbo < 0
    poison_decoder(monkeypatch, at_call=1)
    with pytest.raises(NonFiniteStep):
        trainer.train_epoch()
    assert trainer.state.step == trainer.batches_per_epoch
    assert trainer.state.epoch == 0 and trainer.state.history == []


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_a_non_finite_first_epoch_rolls_back_to_the_start_at_half_the_rate(tmp_path,
                                                                          monkeypatch):
    trainer = Trainer(tiny_config(on_nan="rollback"), tmp_path / "run", False, Progress())
    start, rate = weights(trainer.vae), trainer.optimizer.param_groups[0]["lr"]
    poison_decoder(monkeypatch, at_call=3)  # the third step: two good steps moved the weights
    with pytest.raises(NonFiniteStep) as caught:
        trainer.train_epoch()
    assert any(not torch.equal(start[k], v) for k, v in trainer.vae.state_dict().items())
    trainer.recover(caught.value)
    assert trainer.state.rollbacks == 1
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(rate / 2)
    assert all(torch.equal(start[k], v) for k, v in trainer.vae.state_dict().items())


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_a_non_finite_step_stops_the_run_unless_it_may_roll_back(tmp_path, monkeypatch):
    stops = Trainer(tiny_config(), tmp_path / "a", False, Progress())
    poison_decoder(monkeypatch, at_call=1)
    with pytest.raises(NonFiniteStep) as caught:
        stops.train_epoch()
    with pytest.raises(TrainingError, match="initial state"):
        stops.recover(caught.value)
    spent = Trainer(tiny_config(on_nan="rollback"), tmp_path / "b", False, Progress())
    spent.state.rollbacks = MAX_ROLLBACKS
    with pytest.raises(TrainingError):
        spent.recover(caught.value)


def test_the_end_of_an_epoch_is_its_metrics_row_and_its_checkpoint(tmp_path):
    trainer = Trainer(tiny_config(), tmp_path / "run", False, Progress())
    row = trainer.end_epoch(trainer.train_epoch())
    assert trainer.state.history == [row]
    assert (row["epoch"], row["step"]) == (1, trainer.batches_per_epoch)
    assert row["validation_elbo"] < 0 and row["active_units"] in (0, 1, 2)
    trainer.save_epoch(row)
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert (saved["epoch"], saved["step"], saved["history"]) == (1, row["step"], [row])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]
    assert (tmp_path / "run" / "config.toml").exists()


def test_a_collapse_warning_is_shown_when_collapse_starts_only(tmp_path):
    progress = Warnings()
    trainer = Trainer(tiny_config(epochs=3), tmp_path / "run", False, progress)
    rows = [{"epoch": e, "step": e, "validation_elbo": None, "collapse_warning": warning}
            for e, warning in ((1, "collapsed"), (2, "collapsed"), (3, None))]
    for row in rows:
        trainer.state.history.append(row)
        trainer.save_epoch(row)
        trainer.state.epoch += 1
    assert progress.warnings == ["collapsed"]


@pytest.mark.slow
def test_the_stages_driven_by_hand_are_the_loop(tmp_path):
    config = tiny_config(epochs=2)
    summary = train(config, tmp_path / "loop", progress=False)
    trainer = Trainer(config, tmp_path / "stages", False, Progress())
    with pyro.validation_enabled(False):
        while trainer.state.epoch < config.train.epochs:
            trainer.save_epoch(trainer.end_epoch(trainer.train_epoch()))
            trainer.state.epoch += 1
        by_hand = trainer.finish()
    assert by_hand["test_elbo"] == summary["test_elbo"]
    loop, stages = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in
                    ("loop", "stages"))
    assert all(torch.equal(loop["model"][k], stages["model"][k]) for k in loop["model"])
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in loop["history"]] == \
        [{k: v for k, v in row.items() if k != "seconds"} for row in stages["history"]]
