"""Fault injection: every failure ends in a clear message, and no written result is lost."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import pyro_vae.networks as networks
from pyro_vae.cli import main
from pyro_vae.config import Config
from pyro_vae.errors import CheckpointError, PyroVAEError, TrainingError
from pyro_vae.runs import load_checkpoint
from pyro_vae.training import train


def small(**train_options):
    return Config().with_overrides({
        "model": {"hidden_dims": [32], "latent_dim": 4},
        "train": {"epochs": 3, "batch_size": 128, **train_options},
        "evaluate": {"num_samples": 16}})


def poison_decoder(monkeypatch, at_call, times=None):
    """Make the decoder output NaN from its ``at_call``-th call on (``times`` calls only)."""
    original = networks.MLPDecoder.forward
    calls = {"n": 0}

    def forward(self, z):
        calls["n"] += 1
        out = original(self, z)
        poisoned = calls["n"] >= at_call and (times is None or calls["n"] < at_call + times)
        return out * float("nan") if poisoned else out

    monkeypatch.setattr(networks.MLPDecoder, "forward", forward)


def test_nan_stops_with_step_term_and_last_good_checkpoint(tmp_path, monkeypatch):
    poison_decoder(monkeypatch, at_call=15)  # epoch 2 (12 steps per epoch, plus validation)
    with pytest.raises(TrainingError) as caught:
        train(small(), tmp_path / "run")
    message = str(caught.value)
    assert "epoch 2" in message and "step" in message
    assert "log p(x|z)" in message and "checkpoint of epoch 1" in message
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_nan_rollback_halves_the_rate_and_finishes(tmp_path, monkeypatch):
    poison_decoder(monkeypatch, at_call=15, times=1)
    summary = train(small(on_nan="rollback"), tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [row["rollbacks"] for row in rows] == [0, 1, 1]
    assert rows[1]["learning_rate"] == pytest.approx(rows[0]["learning_rate"] / 2)
    assert torch.isfinite(torch.tensor(summary["test_log_likelihood"]))


def test_nan_from_the_cli_is_exit_2_without_traceback(tmp_path, monkeypatch, capsys):
    poison_decoder(monkeypatch, at_call=1)
    code = main(["train", "--out", str(tmp_path / "run"), "--epochs", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "initial state" in err


def _start_training(run_dir, epochs=2000):
    return subprocess.Popen(
        [sys.executable, "-m", "pyro_vae", "train", "--out", str(run_dir), "--epochs",
         str(epochs), "--eval-samples", "8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_epochs(run_dir, count, process, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= count:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("training made no progress")


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_continues(tmp_path):
    run_dir = tmp_path / "run"
    process = _start_training(run_dir)
    _wait_for_epochs(run_dir, 3, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)  # generous: a loaded machine is slow
    assert process.returncode == 130
    assert "Traceback" not in err and "--resume" in err
    done = load_checkpoint(run_dir / "checkpoint.pt")["epoch"]
    assert done >= 3
    assert main(["train", "--out", str(run_dir), "--resume", "--epochs", str(done + 1),
                 "--eval-samples", "8"]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == done + 1


@pytest.mark.slow
def test_kill_9_never_leaves_a_corrupt_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    for attempt in range(3):
        process = _start_training(run_dir) if attempt == 0 else subprocess.Popen(
            [sys.executable, "-m", "pyro_vae", "train", "--out", str(run_dir), "--resume",
             "--eval-samples", "8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen = len((run_dir / "metrics.jsonl").read_text().splitlines()) \
            if (run_dir / "metrics.jsonl").exists() else 0
        _wait_for_epochs(run_dir, seen + 2, process)
        time.sleep(0.013 * (attempt + 1))  # a moment that falls anywhere in an epoch
        process.kill()
        process.wait()
        checkpoint = load_checkpoint(run_dir / "checkpoint.pt")  # complete, never torn
        rows = (run_dir / "metrics.jsonl").read_text().splitlines()
        assert checkpoint["epoch"] >= seen + 2 and len(rows) >= checkpoint["epoch"] - 1
    final = checkpoint["epoch"] + 1
    assert main(["train", "--out", str(run_dir), "--resume", "--epochs", str(final),
                 "--eval-samples", "8"]) == 0
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == list(range(1, final + 1))


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    train(small(epochs=1), run_dir)
    before = (run_dir / "checkpoint.pt").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(PyroVAEError, match="No space left"):
        train(small(epochs=2), run_dir, resume=True)
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["train", "--out", str(blocker / "run"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot create the output folder" in err and "Traceback" not in err


def test_checkpoint_of_another_version(tmp_path):
    run_dir = tmp_path / "run"
    train(small(epochs=1), run_dir)
    payload = load_checkpoint(run_dir / "checkpoint.pt")
    payload.pop("format"), payload.pop("version")
    torch.save({"format": "pyro-vae-checkpoint", "version": 99, **payload},
               run_dir / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        train(small(epochs=2), run_dir, resume=True)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_checkpoints_never_execute_pickled_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    train(small(epochs=1), run_dir)
    torch.save({"format": "pyro-vae-checkpoint", "version": 1, "model": Payload()},
               run_dir / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(run_dir / "checkpoint.pt")
    assert not (tmp_path / "pwned.txt").exists()


def test_same_seed_same_numbers(tmp_path):
    first = train(small(epochs=2), tmp_path / "a")
    second = train(small(epochs=2), tmp_path / "b")
    for key in ("test_elbo", "test_log_likelihood", "final_validation_elbo"):
        assert first[key] == second[key]
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("argv,field", [
    (["--epochs", "0"], "epochs"), (["--batch-size", "0"], "batch_size"),
    (["--latent-dim", "-2"], "latent_dim"), (["--particles", "0"], "particles"),
    (["--lr", "0"], "learning_rate"), (["--lr", "-0.1"], "learning_rate"),
    (["--beta", "0"], "beta"), (["--objective", "renyi", "--alpha", "1"], "alpha"),
    (["--eval-samples", "0"], "num_samples"), (["--kl-warmup-epochs", "-1"], "kl_warmup"),
])
def test_out_of_range_values_name_the_field(tmp_path, capsys, argv, field):
    code = main(["train", *argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and field in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_new_run_never_writes_into_a_folder_with_files(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.toml").write_text("precious")
    assert main(["train", "--out", str(folder), "--epochs", "1"]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert (folder / "config.toml").read_text() == "precious"


def test_meanfield_with_a_prior_that_has_no_closed_form_kl_falls_back_to_monte_carlo():
    import pyro.distributions as dist

    from pyro_vae.models import build_vae
    from pyro_vae.objectives import make_objective
    from pyro_vae.priors import Prior

    class LaplacePrior(Prior):
        def forward(self, batch_shape, device, dtype):
            zeros = torch.zeros(*batch_shape, self.latent_dim, device=device, dtype=dtype)
            return dist.Laplace(zeros, 1.0).to_event(1)

    vae = build_vae(Config().model, (1, 8, 8))
    vae.prior = LaplacePrior(vae.latent_dim)
    x = torch.bernoulli(torch.full((16, 64), 0.3))
    torch.manual_seed(0)
    meanfield = torch.stack([make_objective("meanfield").differentiable_loss(
        vae.model, vae.guide, x) for _ in range(200)]).detach()
    torch.manual_seed(1)
    trace = torch.stack([make_objective("elbo").differentiable_loss(
        vae.model, vae.guide, x) for _ in range(200)]).detach()
    stderr = (meanfield.var() / 200 + trace.var() / 200).sqrt()
    assert torch.isfinite(meanfield).all()
    assert abs(meanfield.mean() - trace.mean()) < 4 * stderr


def test_nan_in_the_first_epoch_leaves_the_folder_reusable(tmp_path, monkeypatch, capsys):
    poison_decoder(monkeypatch, at_call=1)
    assert main(["train", "--out", str(tmp_path / "run"), "--epochs", "1"]) == 2
    assert "train again with a smaller --lr" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["train", "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--eval-samples", "4"]) == 0


def test_resume_after_a_rollback_keeps_the_halved_rate(tmp_path, monkeypatch):
    poison_decoder(monkeypatch, at_call=15, times=1)
    straight = train(small(epochs=4, on_nan="rollback"), tmp_path / "a")
    monkeypatch.undo()
    poison_decoder(monkeypatch, at_call=15, times=1)
    train(small(epochs=3, on_nan="rollback"), tmp_path / "b")
    monkeypatch.undo()
    resumed = train(small(epochs=4, on_nan="rollback"), tmp_path / "b", resume=True)
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").open()]
    assert rows[-1]["rollbacks"] == 1 and rows[-1]["learning_rate"] == pytest.approx(5e-4)
    assert straight["test_elbo"] == resumed["test_elbo"]


def test_score_objective_resumes_exactly(tmp_path):
    straight = train(small(epochs=3, objective="score"), tmp_path / "a")
    train(small(epochs=2, objective="score"), tmp_path / "b")
    resumed = train(small(epochs=3, objective="score"), tmp_path / "b", resume=True)
    assert straight["test_elbo"] == resumed["test_elbo"]


def test_resume_may_change_the_data_dir_but_not_go_back(tmp_path, capsys):
    run = tmp_path / "run"
    train(small(epochs=2), run)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3", "--data-dir",
                 str(tmp_path), "--eval-samples", "4"]) == 0
    assert main(["train", "--out", str(run), "--resume", "--epochs", "1"]) == 2
    assert "would go back" in capsys.readouterr().err


def test_tiny_datasets_finish_with_strict_json(tmp_path):
    import numpy as np

    path = tmp_path / "tiny.npz"
    np.savez(path, x=(np.random.default_rng(0).random((6, 8, 8)) > 0.5).astype(np.float32))
    config = small(epochs=1).with_overrides({"data": {"dataset": f"file:{path}",
                                                      "binarize": "none"}})
    train(config, tmp_path / "run")
    text = (tmp_path / "run" / "summary.json").read_text()
    assert "NaN" not in text and json.loads(text)["num_test_datapoints"] == 1


@pytest.mark.parametrize("argv,needle", [
    (["train", "--seed", "5000000000"], "2**32"),
    (["compare", "--repeats", "1"], "at least 2"),
])
def test_more_bad_flags(tmp_path, capsys, argv, needle):
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert needle in capsys.readouterr().err


def test_unreadable_npz_contents(tmp_path):
    import numpy as np

    from pyro_vae.data import load_dataset
    from pyro_vae.errors import DataError

    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([{"a": 1}, {"b": 2}], dtype=object))
    with pytest.raises(DataError, match="cannot be read"):
        load_dataset(f"file:{objects}")
    single = tmp_path / "single.npz"
    with open(single, "wb") as handle:
        np.save(handle, np.zeros((4, 4)))
    with pytest.raises(DataError, match="single array"):
        load_dataset(f"file:{single}")
    two = tmp_path / "two.npz"
    np.savez(two, x=np.zeros((2, 4)))
    with pytest.raises(DataError, match="empty"):
        load_dataset(f"file:{two}")


def test_first_ctrl_c_is_raised_at_the_next_step_and_never_lost():
    """The CLI's progress owns Ctrl-C: the signal only sets a flag (so it cannot land in a
    __del__ or callback where Python would swallow it), and the next step raises."""
    import os
    import signal as signals

    from pyro_vae.progress import TqdmProgress

    before = signals.getsignal(signals.SIGINT)
    with TqdmProgress() as progress:
        os.kill(os.getpid(), signals.SIGINT)
        time.sleep(0.01)
        assert progress.stop_requested
        with pytest.raises(KeyboardInterrupt):
            progress.step(-1.0)
        assert not progress.stop_requested
    assert signals.getsignal(signals.SIGINT) is before
