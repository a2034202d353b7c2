"""The learning-rate decay of ``[train] lr_decay_epochs``: its shape, what training records,
exact resume, its interplay with a rollback, and refusals of bad settings."""

import json
import math

import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.config import Config
from pyro_vae.errors import ConfigError
from pyro_vae.runs import load_checkpoint
from pyro_vae.training import LearningRateDecay, Progress, train

from helpers import poison_decoder


def small(**train_options):
    return Config().with_overrides({
        "model": {"hidden_dims": [16], "latent_dim": 2},
        "train": {"epochs": 4, "batch_size": 256, **train_options},
        "evaluate": {"num_samples": 4}})


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


def test_the_decay_is_a_half_cosine_over_the_last_epochs():
    decay = LearningRateDecay(epochs=10, decay_epochs=4, to=0.01)
    factors = [decay.factor(e) for e in range(10)]
    assert factors[:6] == [1.0] * 6  # constant before the last 4 epochs
    # f(e) = to + (1 - to)(1 + cos(pi (e - 6 + 1) / 4)) / 2, computed here by hand
    for e, expected in zip(range(6, 10), (0.01 + 0.99 * (1 + math.cos(math.pi * k / 4)) / 2
                                          for k in range(1, 5))):
        assert factors[e] == pytest.approx(expected, rel=1e-12)
    assert factors[-1] == pytest.approx(0.01)  # the last epoch runs at `to`
    assert all(a > b for a, b in zip(factors[5:], factors[6:]))  # strictly falling


def test_a_decay_longer_than_the_run_spans_the_whole_run():
    decay = LearningRateDecay(epochs=3, decay_epochs=50, to=0.1)
    assert decay.factor(0) < 1.0 and decay.factor(2) == pytest.approx(0.1)


def test_no_decay_leaves_the_optimizer_alone():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=0.123)
    LearningRateDecay(epochs=5).set_rate(optimizer, 4, base=1.0)
    LearningRateDecay(epochs=5, decay_epochs=3, to=1.0).set_rate(optimizer, 4, base=1.0)
    assert optimizer.param_groups[0]["lr"] == 0.123


@pytest.mark.slow
def test_training_records_the_decayed_rate_each_epoch(tmp_path):
    train(small(lr_decay_epochs=2, lr_decay_to=0.1), tmp_path / "run")
    rates = [row["learning_rate"] for row in rows(tmp_path / "run")]
    decay = LearningRateDecay(4, 2, 0.1)
    assert rates == pytest.approx([1e-3 * decay.factor(e) for e in range(4)], rel=1e-12)
    assert rates[0] == rates[1] == pytest.approx(1e-3) and rates[3] == pytest.approx(1e-4)


@pytest.mark.slow
def test_a_decayed_run_trains_differently_from_a_constant_one(tmp_path):
    constant = train(small(), tmp_path / "a")
    decayed = train(small(lr_decay_epochs=2, lr_decay_to=0.1), tmp_path / "b")
    assert constant["test_elbo"] != decayed["test_elbo"]


class _Interrupted(Exception):
    pass


class _StopAfter(Progress):
    """Interrupts training once ``epochs`` epochs are saved, as Ctrl-C would."""

    def __init__(self, epochs):
        self.epochs = epochs

    def end_epoch(self, metrics):
        if metrics["epoch"] == self.epochs:
            raise _Interrupted


@pytest.mark.slow
def test_an_interrupted_decaying_run_resumes_exactly(tmp_path):
    straight = small(lr_decay_epochs=3, lr_decay_to=0.05)
    train(straight, tmp_path / "straight")
    # Interrupted after 2 of its 4 epochs (mid-decay), then resumed to 4.
    with pytest.raises(_Interrupted):
        train(straight, tmp_path / "resumed", progress=_StopAfter(2))
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 2
    train(straight, tmp_path / "resumed", resume=True)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [r["learning_rate"] for r in rows(tmp_path / "straight")] == \
        [r["learning_rate"] for r in rows(tmp_path / "resumed")]


@pytest.mark.slow
def test_a_rollback_halves_the_rate_the_decay_starts_from(tmp_path, monkeypatch):
    poison_decoder(monkeypatch, at_call=10, times=1)  # epoch 2 (6 steps an epoch + checks)
    train(small(epochs=3, lr_decay_epochs=2, lr_decay_to=0.1, on_nan="rollback"),
          tmp_path / "run")
    recorded = rows(tmp_path / "run")
    assert [r["rollbacks"] for r in recorded] == [0, 1, 1]
    decay = LearningRateDecay(3, 2, 0.1)
    assert recorded[0]["learning_rate"] == pytest.approx(1e-3)
    assert recorded[1]["learning_rate"] == pytest.approx(5e-4 * decay.factor(1))
    assert recorded[2]["learning_rate"] == pytest.approx(5e-4 * 0.1)


@pytest.mark.parametrize("options, words", [
    ({"lr_decay_to": 0.0}, "lr_decay_to"),
    ({"lr_decay_to": 1.5}, "lr_decay_to"),
    ({"lr_decay_epochs": -1}, "lr_decay_epochs"),
])
def test_bad_decay_settings_are_refused(options, words):
    with pytest.raises(ConfigError, match=words):
        Config().with_overrides({"train": options})


def test_bad_decay_flag_is_exit_2_in_one_paragraph(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), "--lr-decay-to", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "lr_decay_to" in err
    assert not (tmp_path / "run").exists()


def test_the_budget_of_a_stopped_run_keeps_the_schedules_it_had_reached():
    """An extra model matching a 200-epoch run stopped early (anomaly's background model and
    ensemble members): its warm-up is the run's (``"auto"``: 200 // 10), not a tenth of the
    epochs it finished, and its learning rate follows the run's up to where it stopped."""
    from pyro_vae.config import Config
    from pyro_vae.training import budget_as_finished

    train = Config().with_overrides({"train": {"epochs": 200, "lr_decay_epochs": 50,
                                               "lr_decay_to": 0.01}}).train
    planned = LearningRateDecay(200, 50, 0.01)
    before = budget_as_finished(train, 120)  # stopped before the decay (from epoch 150)
    assert before == {"epochs": 120, "kl_warmup_epochs": 20, "lr_decay_epochs": 0}
    during = budget_as_finished(train, 170)
    assert during["epochs"] == 170 and during["kl_warmup_epochs"] == 20
    matched = Config().with_overrides({"train": {**during}}).train
    decay = LearningRateDecay(matched.epochs, matched.lr_decay_epochs, matched.lr_decay_to)
    assert decay.factor(149) == planned.factor(149) == 1.0  # the same start
    assert decay.factor(169) == pytest.approx(planned.factor(169))  # the same last rate
    assert all(decay.factor(e) <= decay.factor(e - 1) for e in range(151, 170))
    constant = Config().with_overrides({"train": {"epochs": 30}}).train
    assert budget_as_finished(constant, 7) == {"epochs": 7, "kl_warmup_epochs": 3}
