"""Fault injection, second round: stuck or shared run directories, signals, sizes beyond
memory, damaged checkpoints, applications on conditional runs, and the smaller cases.

Every case ends in one clear paragraph (exit 2 for user errors, 128 + signal for a stop) with
no traceback, and no file lost or half-written.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pyro_vae import runs
from pyro_vae.cli import main
from pyro_vae.config import Config
from pyro_vae.errors import CheckpointError, ConfigError
from pyro_vae.runs import CONFIG_HEADER, LOCK, RunLock, load_checkpoint
from pyro_vae.training import KLSchedule, train



def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def small(kind="vae", **model):
    return Config().with_overrides({
        "model": {"hidden_dims": [16], "latent_dim": 2, "kind": kind, **model},
        "train": {"epochs": 1, "batch_size": 128},
        "evaluate": {"num_samples": 2}})


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    """Arguments of a quick `pyro-vae train`: a small recipe, one epoch."""
    recipe = tmp_path_factory.mktemp("recipe") / "small.toml"
    recipe.write_text(small().to_toml())
    return [str(recipe)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small trained run of each kind, shared by the tests of this file."""
    root = tmp_path_factory.mktemp("runs")
    made = {}
    for kind in ("vae", "cvae", "m2", "quadrant_cvae"):
        made[kind] = root / kind
        train(small(kind), made[kind])
    return made


def _cli_process(*argv, env=None):
    return subprocess.Popen([sys.executable, "-m", "pyro_vae", *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


# --- the first epoch's files: every state a kill leaves is resumable or clearly empty -----------

@pytest.mark.slow
@pytest.mark.parametrize("moment,resumable", [
    ("after:1", False),   # config.toml renamed, no checkpoint yet
    ("after:2", True),    # checkpoint renamed, metrics.jsonl not yet
])
def test_a_kill_at_each_first_epoch_rename_leaves_a_usable_folder(fast, tmp_path, capsys,
                                                                 moment, resumable):
    run_dir = tmp_path / "run"
    process = _cli_process("train", "--out", run_dir, *fast,
                           env={runs.KILL_AT_RENAME: moment, "OMP_NUM_THREADS": "1"})
    process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL
    code, _, err = run_cli(capsys, "train", "--out", run_dir, "--resume", "--epochs", 2,
                           "--eval-samples", 4)
    if resumable:
        assert code == 0
        rows = (run_dir / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(r)["epoch"] for r in rows] == [1, 2]
    else:  # the resume message and the fresh-run message agree: start again
        assert code == 2 and "without --resume" in err
        assert run_cli(capsys, "train", "--out", run_dir, *fast)[0] == 0
        assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 1
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp") or p.name == LOCK]


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


def test_a_checkpoint_without_config_toml_resumes_from_the_config_it_carries(tmp_path,
                                                                             capsys):
    run_dir = tmp_path / "run"
    train(small(), run_dir)
    (run_dir / "config.toml").unlink()
    code, _, _ = run_cli(capsys, "train", "--out", run_dir, "--resume", "--epochs", 2)
    assert code == 0 and load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 2


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


# --- signals -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_keeps_the_last_epoch_and_says_how_to_resume(fast, tmp_path):
    run_dir = tmp_path / "run"
    process = _cli_process("train", *fast, "--out", run_dir, "--epochs", 2000,
                           env={"OMP_NUM_THREADS": "1"})
    deadline = time.time() + 240
    while not (run_dir / "metrics.jsonl").exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err
    last = err.splitlines()[-1]  # on its own line: the bars were closed first
    assert last.startswith("pyro-vae: stopped by SIGTERM") and "--resume" in last
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] >= 1
    assert not (run_dir / LOCK).exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_are_noted_like_ctrl_c(signum):
    from pyro_vae.progress import Interrupted, TqdmProgress

    before = signal.getsignal(signum)
    with TqdmProgress(quiet=True) as progress:
        os.kill(os.getpid(), signum)
        time.sleep(0.01)
        with pytest.raises(Interrupted) as caught:
            progress.step(-1.0)
    assert caught.value.signum == signum and isinstance(caught.value, KeyboardInterrupt)
    assert signal.getsignal(signum) is before


def test_an_evaluation_chunk_can_be_interrupted_inside_one_datapoint():
    from pyro_vae.evaluate import estimate_log_likelihood
    from pyro_vae.models import build_vae

    vae = build_vae(small().model, (1, 8, 8))
    calls = []

    def progress(done):
        calls.append(done)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        estimate_log_likelihood(vae, torch.zeros(3, 64), num_samples=10 ** 9, max_chunk=100,
                                progress=progress)
    assert calls == [0]  # after the first 100 of 10⁹ samples of the first datapoint


# --- sizes beyond memory -----------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["--latent-dim", 10 ** 12], ["--particles", 10 ** 12],
    ["--prior", "mixture", "--prior-components", 10 ** 12],
])
def test_training_sizes_beyond_memory_are_refused_with_the_figure(tmp_path, capsys, argv):
    code, _, err = run_cli(capsys, "train", *argv, "--out", tmp_path / "run")
    assert code == 2 and "needs at least" in err and "is available" in err
    assert not (tmp_path / "run").exists()


def test_a_memory_limit_is_respected(tmp_path, capsys, monkeypatch):
    from pyro_vae import faults

    monkeypatch.setattr(faults, "available_memory", lambda device="cpu": 8 * 10 ** 9)
    code, _, err = run_cli(capsys, "train", "--latent-dim", 10 ** 6, "--out", tmp_path / "r")
    assert code == 2 and "8 GB is available" in err


def test_sample_and_compare_sizes_beyond_memory(trained, tmp_path, capsys):
    code, _, err = run_cli(capsys, "sample", trained["vae"], "--n", 10 ** 12)
    assert code == 2 and "sample --n" in err and "needs at least" in err
    code, _, err = run_cli(capsys, "compare", trained["vae"], "--particles", f"1,{10 ** 12}",
                           "--out", tmp_path / "c")
    assert code == 2 and "compare --particles" in err and not (tmp_path / "c").exists()


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                 "memory: you tried to allocate 4000000000000 bytes."),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
])
def test_an_allocation_failure_anywhere_is_one_paragraph(fast, tmp_path, capsys,
                                                         monkeypatch, failure):
    training = sys.modules["pyro_vae.training"]

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(training, "build_vae", fail)
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "run", *fast)
    assert code == 2 and "ran out of memory" in err and len(err.strip().splitlines()) == 2


def test_an_evaluation_chunk_too_big_for_memory_is_refused(tmp_path):
    config = small().with_overrides({"evaluate": {"max_chunk": 10 ** 15,
                                                  "num_samples": 10 ** 12}})
    with pytest.raises(ConfigError, match="max_chunk"):
        train(config, tmp_path / "run")


# --- checkpoints of the wrong structure --------------------------------------------------------

@pytest.mark.parametrize("key,value", [
    ("image_shape", None), ("image_shape", "abc"), ("image_shape", [1, 8]),
    ("model", None), ("model", [1, 2]), ("rng", None), ("rng", {"torch": 1}),
    ("epoch", "three"), ("history", {"a": 1}),
])
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


# --- applications on conditional and quadrant runs ---------------------------------------------

@pytest.mark.parametrize("kind", ["cvae", "m2"])
def test_traverse_works_on_labelled_runs(trained, tmp_path, capsys, kind):
    code, out, _ = run_cli(capsys, "traverse", trained[kind], "--out", tmp_path / "t.png")
    assert code == 0 and "label" in out and (tmp_path / "t.png").stat().st_size > 0


@pytest.mark.parametrize("command,kind,needle", [
    ("probe", "cvae", "is given the label"), ("probe", "m2", "test_accuracy"),
    ("traverse", "quadrant_cvae", "completions.png"),
    ("impute", "quadrant_cvae", "completions.png"),
    ("impute", "cvae", "needs each image's label"), ("gaps", "cvae", "--model vae"),
])
def test_applications_refuse_in_the_users_terms(trained, tmp_path, capsys, command, kind,
                                                needle):
    code, _, err = run_cli(capsys, command, trained[kind], "--out", tmp_path / "o.png")
    assert code == 2 and needle in err
    assert "model(x" not in err and "guide(x" not in err


# --- smaller cases -----------------------------------------------------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["compare", "--alpha", "nan", "--objectives", "renyi"], "finite"),
    (["gaps", "RUN", "--lr", "inf"], "finite positive"),
    (["impute", "RUN", "--fraction", "0.001"], "hides no pixel"),
    (["traverse", "RUN", "--out", "x.txt"], "ending in .png"),
    (["train", "--beta", "1e-320", "--kl-warmup-epochs", "1000"], "below 1e-10"),
])
def test_more_bad_values(trained, tmp_path, capsys, argv, needle):
    names = {"RUN": str(trained["vae"]), "x.txt": str(tmp_path / "x.txt")}
    argv = [names.get(a, a) for a in argv]
    if argv[0] in ("compare", "train"):
        argv += ["--out", str(tmp_path / "o")]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and needle in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "x.txt").exists()


def test_the_kl_weight_never_underflows_to_zero():
    assert KLSchedule(beta=1e-10, warmup_steps=10 ** 400).weight(0) > 0


def test_resume_accepts_flags_that_repeat_the_saved_values(trained, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained["vae"], run_dir)
    assert run_cli(capsys, "train", "--out", run_dir, "--resume", "--seed", 0,
                   "--latent-dim", 2, "--epochs", 2)[0] == 0
    code, _, err = run_cli(capsys, "train", "--out", run_dir, "--resume", "--seed", 1)
    assert code == 2 and "--seed cannot change" in err


def test_a_recipe_with_a_byte_order_mark(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_bytes("\ufeff[model]\nlatent_dim = 3\n".encode("utf-8"))
    assert Config.from_toml(recipe).model.latent_dim == 3


def test_sample_n_on_a_labelled_run_writes_n_images(trained, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "sample", trained["cvae"], "--n", 5, "--out",
                           tmp_path / "five.png")
    assert code == 0 and "wrote 5 samples" in out
    code, out, _ = run_cli(capsys, "sample", trained["cvae"], "--n", 25, "--out",
                           tmp_path / "grid.png")
    assert code == 0 and "wrote 20 samples" in out and "rounded down" in out


def test_evaluate_json_of_a_one_image_split_is_strict_json(tmp_path, capsys):
    path = tmp_path / "tiny.npz"
    np.savez(path, x=(np.random.default_rng(0).random((10, 4, 4)) > 0.5).astype(np.float32))
    config = small().with_overrides({"data": {"dataset": f"file:{path}", "binarize": "none"}})
    train(config, tmp_path / "run")
    code, out, _ = run_cli(capsys, "evaluate", tmp_path / "run", "--split", "validation",
                           "--json", "--num-samples", 2)
    summary = json.loads(out, parse_constant=lambda name: pytest.fail(f"bare {name}"))
    assert code == 0 and summary["num_test_datapoints"] == 1
    assert summary["test_elbo_stderr"] is None


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly(trained):
    process = _cli_process("evaluate", trained["vae"], "--json", "--num-samples", 2,
                           env={"OMP_NUM_THREADS": "1"})
    process.stdout.close()  # the reader went away, as `| head -1` does
    err = process.stderr.read()
    process.wait(timeout=300)
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert process.returncode == 128 + signal.SIGPIPE


@pytest.mark.parametrize("kind", ["cvae", "quadrant_cvae"])
def test_anomaly_refuses_conditional_runs_in_the_users_terms(trained, tmp_path, capsys, kind):
    code, _, err = run_cli(capsys, "anomaly", trained[kind], "--against", "fashion-mnist",
                           "--out", tmp_path / "a")
    assert code == 2 and "plain VAE" in err
    assert "model(x" not in err and not (tmp_path / "a").exists()
