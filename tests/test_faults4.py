"""Fault injection, fourth round: the quadrant CVAE's baseline run, evaluate's --targets, M2
runs on unlabelled data, and resume with a foreign optimizer state, met as a user meets them.

Every case ends in one clear paragraph (exit status 2, no traceback, nothing half-written) or
in an honest figure; none is silently ignored.
"""

import json
import shutil

import numpy as np
import torch
from sklearn.datasets import load_digits

from pyro_vae.runs import load_checkpoint

from helpers import run_cli

SMALL = ["--epochs", "1", "--eval-samples", "2", "--latent-map", "pca"]


# --- the quadrant CVAE's baseline run -----------------------------------------------------------

def test_a_tutorial_cvae_resumes_after_its_baseline_run_is_gone(tmp_path, capsys, monkeypatch):
    """The CVAE's checkpoint holds the baseline's weights, so --resume needs no baseline run:
    not from another folder (baseline_run is a relative path) and not once it is deleted."""
    monkeypatch.chdir(tmp_path)
    quadrants = ["--quadrants", "2", "--batch-size", "256"]
    assert run_cli(capsys, "train", "--model", "quadrant_baseline", *quadrants, *SMALL,
                   "--out", "base")[0] == 0
    weights = load_checkpoint(tmp_path / "base" / "checkpoint.pt")["model"]
    assert run_cli(capsys, "train", "--model", "quadrant_cvae", *quadrants, "--baseline-run",
                   "base", "--quadrant-generation", "z", *SMALL, "--out", "cvae")[0] == 0
    shutil.rmtree(tmp_path / "base")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, _, err = run_cli(capsys, "train", "--resume", "--out", tmp_path / "cvae", *SMALL[2:],
                           "--epochs", "2")
    assert code == 0, err
    saved = load_checkpoint(tmp_path / "cvae" / "checkpoint.pt")
    assert saved["epoch"] == 2
    for name, tensor in weights.items():  # the frozen copy is still the baseline's
        if name.startswith("decoder."):
            assert torch.equal(saved["model"]["baseline." + name[len("decoder."):]], tensor)


# --- resume with a foreign optimizer state ------------------------------------------------------

def test_resume_refuses_optimizer_moments_of_other_shapes(tmp_path, capsys):
    """torch's load_state_dict checks the number of parameters only; a moment of another
    shape went to the fused Adam kernel, which reads and writes it out of bounds."""
    run = tmp_path / "run"
    assert run_cli(capsys, "train", *SMALL, "--batch-size", "256", "--out", run)[0] == 0
    payload = torch.load(run / "checkpoint.pt", weights_only=True)
    state = payload["optimizer"]["state"]
    first = next(iter(state))
    state[first]["exp_avg"] = state[first]["exp_avg"][:1].clone()
    torch.save(payload, run / "checkpoint.pt")
    before = (run / "checkpoint.pt").read_bytes()
    code, _, err = run_cli(capsys, "train", "--resume", "--out", run, *SMALL[2:],
                           "--epochs", "2")
    assert code == 2
    assert "optimizer state for other trainable parameters" in err and "exp_avg" in err
    assert (run / "checkpoint.pt").read_bytes() == before


# --- evaluate --targets -------------------------------------------------------------------------

def test_targets_grey_on_a_gaussian_run_suggests_only_what_works(tmp_path, capsys):
    """The refusal of --targets grey pointed every run at --targets binary, which refuses all
    but runs trained on grey levels."""
    gaussian, grey = tmp_path / "gaussian", tmp_path / "grey"
    assert run_cli(capsys, "train", "--likelihood", "gaussian", *SMALL, "--batch-size", "256",
                   "--out", gaussian)[0] == 0
    code, _, err = run_cli(capsys, "evaluate", gaussian, "--targets", "grey", "--num-samples", 2)
    assert code == 2 and "Leave out --targets." in err and "--targets binary" not in err
    assert run_cli(capsys, "train", "--binarize", "grey", *SMALL, "--batch-size", "256",
                   "--out", grey)[0] == 0
    code, _, err = run_cli(capsys, "evaluate", grey, "--targets", "grey", "--num-samples", 2)
    assert code == 2 and "--targets binary" in err
    assert run_cli(capsys, "evaluate", grey, "--targets", "binary", "--num-samples", 2)[0] == 0


# --- M2 runs on unlabelled data -----------------------------------------------------------------

def test_anomaly_background_of_an_m2_run(tmp_path, capsys):
    """The background model trains with the run's own recipe on perturbed training images;
    those were saved without their labels, so an M2 run's background was refused, naming a
    temporary file and asking for a labelled dataset the user had given."""
    np.savez(tmp_path / "x.npz", x=(load_digits().data[:200] / 16).astype(np.float32))
    run = tmp_path / "m2"
    assert run_cli(capsys, "train", "--model", "m2", "--num-labels", 100, *SMALL,
                   "--batch-size", "256", "--out", run)[0] == 0
    code, out, err = run_cli(capsys, "anomaly", run, "--against", f"file:{tmp_path / 'x.npz'}",
                             "--background", "--num-samples", 2, "--limit", 20)
    assert code == 0, err
    report = json.loads((run / "anomaly" / "anomaly.json").read_text())
    assert "likelihood-ratio" in out and report["background"]["run_dir"]
    background = json.loads((run / "anomaly" / "background" / "summary.json").read_text())
    assert "test_accuracy" in background  # an M2 background, scored on labelled images


def test_evaluating_a_cvae_on_unlabelled_images_says_what_to_do(tmp_path, capsys):
    """The refusal told a user who evaluates to *train* on a labelled dataset."""
    np.savez(tmp_path / "x.npz", x=(load_digits().data[:200] / 16).astype(np.float32))
    run = tmp_path / "cvae"
    assert run_cli(capsys, "train", "--model", "cvae", *SMALL, "--batch-size", "256",
                   "--out", run)[0] == 0
    code, _, err = run_cli(capsys, "evaluate", run, "--dataset", f"file:{tmp_path / 'x.npz'}",
                           "--num-samples", 2)
    assert code == 2 and "Train it" not in err
    assert "label-conditional VAE" in err and "Evaluate it on labelled images" in err


def test_a_baseline_checkpoint_with_a_damaged_model_table_is_refused(tmp_path, capsys):
    base, run = tmp_path / "base", tmp_path / "cvae"
    assert run_cli(capsys, "train", "--model", "quadrant_baseline", *SMALL, "--batch-size",
                   "256", "--out", base)[0] == 0
    payload = torch.load(base / "checkpoint.pt", weights_only=True)
    payload["config"]["model"] = "quadrant_baseline"
    torch.save(payload, base / "checkpoint.pt")
    code, _, err = run_cli(capsys, "train", "--model", "quadrant_cvae", "--baseline-run", base,
                           *SMALL, "--out", run)
    assert code == 2 and "not a table of settings" in err and "Retrain the baseline" in err
    assert not run.exists()


def test_a_failed_background_model_leaves_no_folder_behind(tmp_path, capsys, monkeypatch):
    """anomaly --out NEW created the folder before training the background model; a failure
    there left an empty folder (and a half-trained background that blocked the next try)."""
    from pyro_vae import anomaly
    from pyro_vae.errors import TrainingError

    run = tmp_path / "vae"
    assert run_cli(capsys, "train", *SMALL, "--batch-size", "256", "--out", run)[0] == 0
    np.savez(tmp_path / "x.npz", x=(load_digits().data[:50] / 16).astype(np.float32))
    other = f"file:{tmp_path / 'x.npz'}"

    def fail(config, data, run_dir, settings, seed):
        (run_dir / "checkpoint.pt.tmp").parent.mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoint.pt.tmp").write_bytes(b"half")
        raise TrainingError("the background model's loss became NaN at step 3.")

    monkeypatch.setattr(anomaly, "train_background", fail)
    code, _, err = run_cli(capsys, "anomaly", run, "--against", other, "--background",
                           "--num-samples", 2, "--limit", 20, "--out", tmp_path / "new")
    assert code == 2 and "NaN" in err
    assert not (tmp_path / "new").exists()
    # In the run's own anomaly folder (made earlier by another command) only the background
    # goes, so the next try trains it again instead of refusing a half-trained one.
    (run / "anomaly").mkdir()
    (run / "anomaly" / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "anomaly", run, "--against", other, "--background",
                           "--num-samples", 2, "--limit", 20)
    assert code == 2 and (run / "anomaly" / "keep.txt").exists()
    assert not (run / "anomaly" / "background").exists()
