"""The commands met with runs of other model kinds: traverse on labelled runs, the applications
and anomaly scores refusing in the user's terms, evaluate --targets on a Gaussian run, M2 as an
anomaly background, and the quadrant CVAE's damaged baseline checkpoint.
"""

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from helpers import QUICK_TRAIN_PCA, run_cli


# --- applications on conditional and quadrant runs ---------------------------------------------

@pytest.mark.parametrize("kind", ["cvae", "m2"])
@pytest.mark.slow
def test_traverse_works_on_labelled_runs(trained, tmp_path, capsys, kind):
    code, out, _ = run_cli(capsys, "traverse", trained[kind], "--out", tmp_path / "t.png")
    assert code == 0 and "label" in out and (tmp_path / "t.png").stat().st_size > 0


@pytest.mark.parametrize("command,kind,needle", [
    ("probe", "cvae", "is given the label"), ("probe", "m2", "test_accuracy"),
    ("traverse", "quadrant_cvae", "completions.png"),
    ("impute", "quadrant_cvae", "completions.png"),
    ("impute", "cvae", "needs each image's label"), ("gaps", "cvae", "--model vae"),
])
@pytest.mark.slow
def test_applications_refuse_in_the_users_terms(trained, tmp_path, capsys, command, kind,
                                                needle):
    code, _, err = run_cli(capsys, command, trained[kind], "--out", tmp_path / "o.png")
    assert code == 2 and needle in err
    assert "model(x" not in err and "guide(x" not in err


@pytest.mark.parametrize("kind", ["cvae", "quadrant_cvae"])
@pytest.mark.slow
def test_anomaly_refuses_conditional_runs_in_the_users_terms(trained, tmp_path, capsys, kind):
    code, _, err = run_cli(capsys, "anomaly", trained[kind], "--against", "fashion-mnist",
                           "--out", tmp_path / "a")
    assert code == 2 and "plain VAE" in err
    assert "model(x" not in err and not (tmp_path / "a").exists()


# --- evaluate --targets -------------------------------------------------------------------------

@pytest.mark.slow
def test_targets_grey_on_a_gaussian_run_suggests_only_what_works(tmp_path, capsys):
    """The refusal of --targets grey pointed every run at --targets binary, which refuses all
    but runs trained on grey levels."""
    gaussian, grey = tmp_path / "gaussian", tmp_path / "grey"
    assert run_cli(capsys, "train", "--likelihood", "gaussian", *QUICK_TRAIN_PCA, "--batch-size", "256",
                   "--out", gaussian)[0] == 0
    code, _, err = run_cli(capsys, "evaluate", gaussian, "--targets", "grey", "--num-samples", 2)
    assert code == 2 and "Leave out --targets." in err and "--targets binary" not in err
    assert run_cli(capsys, "train", "--binarize", "grey", *QUICK_TRAIN_PCA, "--batch-size", "256",
                   "--out", grey)[0] == 0
    code, _, err = run_cli(capsys, "evaluate", grey, "--targets", "grey", "--num-samples", 2)
    assert code == 2 and "--targets binary" in err
    assert run_cli(capsys, "evaluate", grey, "--targets", "binary", "--num-samples", 2)[0] == 0


# --- M2 runs on unlabelled data -----------------------------------------------------------------

@pytest.mark.slow
def test_anomaly_background_of_an_m2_run(tmp_path, capsys):
    """The background model trains with the run's own recipe on perturbed training images;
    those were saved without their labels, so an M2 run's background was refused, naming a
    temporary file and asking for a labelled dataset the user had given."""
    np.savez(tmp_path / "x.npz", x=(load_digits().data[:200] / 16).astype(np.float32))
    run = tmp_path / "m2"
    assert run_cli(capsys, "train", "--model", "m2", "--num-labels", 100, *QUICK_TRAIN_PCA,
                   "--batch-size", "256", "--out", run)[0] == 0
    code, out, err = run_cli(capsys, "anomaly", run, "--against", f"file:{tmp_path / 'x.npz'}",
                             "--background", "--num-samples", 2, "--limit", 20)
    assert code == 0, err
    report = json.loads((run / "anomaly" / "anomaly.json").read_text())
    assert "likelihood-ratio" in out and report["background"]["run_dir"]
    background = json.loads((run / "anomaly" / "background" / "summary.json").read_text())
    assert "test_accuracy" in background  # an M2 background, scored on labelled images


@pytest.mark.slow
def test_a_baseline_checkpoint_with_a_damaged_model_table_is_refused(tmp_path, capsys):
    base, run = tmp_path / "base", tmp_path / "cvae"
    assert run_cli(capsys, "train", "--model", "quadrant_baseline", *QUICK_TRAIN_PCA, "--batch-size",
                   "256", "--out", base)[0] == 0
    payload = torch.load(base / "checkpoint.pt", weights_only=True)
    payload["config"]["model"] = "quadrant_baseline"
    torch.save(payload, base / "checkpoint.pt")
    code, _, err = run_cli(capsys, "train", "--model", "quadrant_cvae", "--baseline-run", base,
                           *QUICK_TRAIN_PCA, "--out", run)
    assert code == 2 and "not a table of settings" in err and "Retrain the baseline" in err
    assert not run.exists()


@pytest.mark.slow
def test_a_failed_background_model_leaves_no_folder_behind(tmp_path, capsys, monkeypatch):
    """anomaly --out NEW created the folder before training the background model; a failure
    there left an empty folder (and a half-trained background that blocked the next try)."""
    from pyro_vae import anomaly
    from pyro_vae.errors import TrainingError

    run = tmp_path / "vae"
    assert run_cli(capsys, "train", *QUICK_TRAIN_PCA, "--batch-size", "256", "--out", run)[0] == 0
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
