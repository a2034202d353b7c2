"""Run directories and checkpoints: a run never writes into a folder of someone else's files,
two writers never share one (a lock, taken over from a dead owner), a full disk keeps the
previous checkpoint, and a checkpoint of another version, structure or with pickled code is
refused without running anything.
"""

import errno
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from pyro_vae import runs
from pyro_vae.cli import main
from pyro_vae.config import Config
from pyro_vae.errors import CheckpointError, ConfigError, PyroVAEError
from pyro_vae.runs import CONFIG_HEADER, LOCK, RunLock, load_checkpoint
from pyro_vae.training import train

from helpers import one_epoch_config, run_cli, three_epoch_config


@pytest.mark.slow
def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    train(three_epoch_config(epochs=1), run_dir)
    before = (run_dir / "checkpoint.pt").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(PyroVAEError, match="No space left"):
        train(three_epoch_config(epochs=2), run_dir, resume=True)
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["train", "--out", str(blocker / "run"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot create the output folder" in err and "Traceback" not in err


@pytest.mark.slow
def test_checkpoint_of_another_version(tmp_path):
    run_dir = tmp_path / "run"
    train(three_epoch_config(epochs=1), run_dir)
    payload = load_checkpoint(run_dir / "checkpoint.pt")
    payload.pop("format"), payload.pop("version")
    torch.save({"format": "pyro-vae-checkpoint", "version": 99, **payload},
               run_dir / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        train(three_epoch_config(epochs=2), run_dir, resume=True)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


@pytest.mark.slow
def test_checkpoints_never_execute_pickled_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    train(three_epoch_config(epochs=1), run_dir)
    torch.save({"format": "pyro-vae-checkpoint", "version": 1, "model": Payload()},
               run_dir / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(run_dir / "checkpoint.pt")
    assert not (tmp_path / "pwned.txt").exists()


def test_a_new_run_never_writes_into_a_folder_with_files(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.toml").write_text("precious")
    assert main(["train", "--out", str(folder), "--epochs", "1"]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert (folder / "config.toml").read_text() == "precious"


@pytest.mark.slow
def test_stray_temporary_files_are_ignored_and_removed(fast, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in (".config.tomlab12cd34.tmp", ".metrics.jsonlzz99yy88.tmp"):
        (run_dir / name).write_bytes(b"half")  # a process killed before its first rename
    code, _, err = run_cli(capsys, "train", "--out", run_dir, "--resume")
    assert code == 2 and "without --resume" in err
    assert run_cli(capsys, "train", "--out", run_dir, *fast)[0] == 0
    (run_dir / ".metrics.jsonlqq11ww22.tmp").write_bytes(b"half")
    assert run_cli(capsys, "train", "--out", run_dir, "--resume", "--epochs", 2,
                   "--eval-samples", 4)[0] == 0
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_a_checkpoint_without_config_toml_resumes_from_the_config_it_carries(tmp_path,
                                                                             capsys):
    run_dir = tmp_path / "run"
    train(one_epoch_config(), run_dir)
    (run_dir / "config.toml").unlink()
    code, _, _ = run_cli(capsys, "train", "--out", run_dir, "--resume", "--epochs", 2)
    assert code == 0 and load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 2


@pytest.mark.slow
def test_an_emptied_or_cut_config_toml_is_refused_not_replaced_by_the_defaults(tmp_path,
                                                                              capsys):
    # It was read as a recipe: the run was scored on the default dataset, exit 0.
    run_dir = tmp_path / "run"
    train(one_epoch_config().with_overrides({"data": {"dataset": "digits"},
                                             "evaluate": {"num_samples": 2}}), run_dir)
    text = (run_dir / "config.toml").read_text()
    for damaged, missing in (("", "[data], [model], [train], [evaluate]"),
                             (text[text.index("[model]"):], "[data]")):
        (run_dir / "config.toml").write_text(damaged)
        code, out, err = run_cli(capsys, "evaluate", run_dir, "--num-samples", 2)
        assert code == 2 and "lacks the table" in err and missing in err, err
        assert "checkpoint.pt is then read instead" in err and out == ""
    (run_dir / "config.toml").unlink()  # the remedy it names: the checkpoint's own copy
    assert run_cli(capsys, "evaluate", run_dir, "--num-samples", 2)[0] == 0


@pytest.mark.slow
def test_a_users_own_config_toml_is_never_replaced(fast, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.toml").write_text(Config().to_toml())  # valid, but not ours
    code, _, err = run_cli(capsys, "train", "--out", folder, *fast)
    assert code == 2 and "already holds files" in err
    assert (folder / "config.toml").read_text() == Config().to_toml()
    (folder / "config.toml").write_text(CONFIG_HEADER + Config().to_toml())  # a killed start
    assert run_cli(capsys, "train", "--out", folder, *fast)[0] == 0


# --- one writer per run directory --------------------------------------------------------------

def test_a_second_writer_is_refused_at_once(fast, tmp_path, capsys):
    run_dir = tmp_path / "run"
    with RunLock(run_dir):
        owner = json.loads((run_dir / LOCK).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        code, _, err = run_cli(capsys, "train", "--out", run_dir, *fast)
        assert code == 2 and "is in use" in err and str(os.getpid()) in err
        assert [p.name for p in run_dir.iterdir()] == [LOCK]  # nothing written beside it
    assert not run_dir.exists()  # the folder the lock made is gone again


@pytest.mark.slow
def test_a_stale_lock_of_a_dead_process_is_taken_over(fast, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    assert run_cli(capsys, "train", "--out", run_dir, *fast)[0] == 0
    assert not (run_dir / LOCK).exists()


def test_without_flock_the_owner_pid_decides(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "fcntl", None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with RunLock(tmp_path):
        pass
    (tmp_path / LOCK).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(ConfigError, match="is in use"):
        RunLock(tmp_path).acquire()


# --- checkpoints of the wrong structure --------------------------------------------------------

@pytest.mark.parametrize("key,value", [
    ("image_shape", None), ("image_shape", "abc"), ("image_shape", [1, 8]),
    ("model", None), ("model", [1, 2]), ("rng", None), ("rng", {"torch": 1}),
    ("epoch", "three"), ("history", {"a": 1}),
])
@pytest.mark.slow
def test_a_checkpoint_of_the_wrong_structure_is_refused(trained, tmp_path, capsys, key,
                                                        value):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained["vae"], run_dir)
    payload = load_checkpoint(run_dir / "checkpoint.pt")
    if value is None:
        payload.pop(key)
    else:
        payload[key] = value
    torch.save(payload, run_dir / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=f"not a complete pyro-vae checkpoint.*'{key}'"):
        load_checkpoint(run_dir / "checkpoint.pt")
    code, _, err = run_cli(capsys, "sample", run_dir, "--n", 4)
    assert code == 2 and "not a complete" in err


def test_recipe_differences_name_what_changes_the_model_and_nothing_else():
    """Seed, budget, device, evaluation and the data's location do not make another recipe;
    the networks, the training settings and the binarization (``auto`` read as what it means
    for the likelihood) do."""
    base = Config().with_overrides({"data": {"dataset": "mnist"}})
    same = base.with_overrides({"data": {"data_dir": "elsewhere", "binarize": "dynamic"},
                                "train": {"seed": 7, "epochs": 99, "threads": 1},
                                "evaluate": {"num_samples": 3}})
    assert runs.recipe_differences(base, same) == []
    other = base.with_overrides({"model": {"hidden_dims": [64]},
                                 "train": {"batch_size": 32}, "data": {"binarize": "static"}})
    assert runs.recipe_differences(base, other) == ["data.binarize", "model.hidden_dims",
                                               "train.batch_size"]
