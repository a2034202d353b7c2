"""Interruptions: Ctrl-C, SIGTERM, SIGHUP, kill -9 at any moment (each rename of the first
epoch's files included) and a reader that goes away. Every completed epoch is kept, the
message says how to resume, and nothing is left half-written.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pyro_vae import runs
from pyro_vae.cli import main
from pyro_vae.runs import LOCK, load_checkpoint

from helpers import cli_process, one_epoch_config, run_cli


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


# --- the first epoch's files: every state a kill leaves is resumable or clearly empty -----------

@pytest.mark.slow
@pytest.mark.parametrize("moment,resumable", [
    ("after:1", False),   # config.toml renamed, no checkpoint yet
    ("after:2", True),    # checkpoint renamed, metrics.jsonl not yet
])
def test_a_kill_at_each_first_epoch_rename_leaves_a_usable_folder(fast, tmp_path, capsys,
                                                                 moment, resumable):
    run_dir = tmp_path / "run"
    process = cli_process("train", "--out", run_dir, *fast,
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


# --- signals -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_keeps_the_last_epoch_and_says_how_to_resume(fast, tmp_path):
    run_dir = tmp_path / "run"
    process = cli_process("train", *fast, "--out", run_dir, "--epochs", 2000,
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

    vae = build_vae(one_epoch_config().model, (1, 8, 8))
    calls = []

    def progress(done):
        calls.append(done)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        estimate_log_likelihood(vae, torch.zeros(3, 64), num_samples=10 ** 9, max_chunk=100,
                                progress=progress)
    assert calls == [0]  # after the first 100 of 10⁹ samples of the first datapoint


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly(trained):
    process = cli_process("evaluate", trained["vae"], "--json", "--num-samples", 2,
                           env={"OMP_NUM_THREADS": "1"})
    process.stdout.close()  # the reader went away, as `| head -1` does
    err = process.stderr.read()
    process.wait(timeout=300)
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert process.returncode == 128 + signal.SIGPIPE
