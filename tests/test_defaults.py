"""The library's defaults hold where students and Python users meet them: ``Config()`` anneals
the KL term in, and ``train()`` shows its progress and the collapse warning by default."""

from __future__ import annotations

import json

import numpy as np

from pyro_vae import Config, train
from pyro_vae.progress import Progress


def _identical_images(tmp_path) -> str:
    """A dataset whose images are all the same: E_q[z|x] cannot vary with x, so the code is
    unused (collapsed) from the first epoch on."""
    image = (np.arange(16) % 3 == 0).astype(np.float32)
    np.savez(tmp_path / "same.npz", x=np.tile(image, (200, 1)))
    return f"file:{tmp_path / 'same.npz'}"


def _config(dataset: str, epochs: int, **train_options) -> Config:
    return Config().with_overrides({
        "data": {"dataset": dataset}, "model": {"latent_dim": 2, "hidden_dims": [8]},
        "train": {"epochs": epochs, "batch_size": 100, **train_options},
        "evaluate": {"num_samples": 4}})


def test_config_anneals_the_kl_term_by_default():
    config = Config()
    assert config.train.kl_warmup_epochs == "auto" and config.train.warmup_epochs() == 20
    assert config.with_overrides({"train": {"epochs": 100}}).train.warmup_epochs() == 10


def test_train_shows_progress_and_the_collapse_warning_by_default(tmp_path, capsys):
    train(_config(_identical_images(tmp_path), 2), tmp_path / "run")
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err  # lines: stderr is not a terminal here
    assert err.count("warning: posterior collapse") == 1


def test_train_is_silent_when_asked(tmp_path, capsys):
    train(_config(_identical_images(tmp_path), 2), tmp_path / "run", progress=False)
    assert capsys.readouterr().err == ""


def test_no_collapse_warning_while_the_kl_warms_up(tmp_path, capsys):
    warned = []

    class Recorder(Progress):
        def warn(self, message: str) -> None:
            warned.append(message)

    run = tmp_path / "run"
    train(_config(_identical_images(tmp_path), 3, kl_warmup_epochs=2), run, progress=Recorder())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # Epoch 1 anneals; the weight reaches beta at the end of epoch 2, so the check starts there.
    assert [row["collapse_warning"] is None for row in rows] == [True, False, False]
    assert len(warned) == 1 and "after epoch 2" in warned[0]
