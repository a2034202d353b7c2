"""Fitting the ecosystem: threads, output modes, packaged recipes, experiment loggers."""

import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_vae.cli import apply_threads, main
from pyro_vae.config import Config
from pyro_vae.errors import ConfigError
from pyro_vae.progress import TqdmProgress, output_mode

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--epochs", "2", "--latent-dim", "2", "--eval-samples", "4"]


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_flag_env_and_default(monkeypatch, restore_threads):
    assert apply_threads(3) == 3 and torch.get_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert apply_threads(None) == 2 and torch.get_num_threads() == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert apply_threads(0) == 1 and torch.get_num_threads() == 1


def test_threads_recipe_key_is_applied_before_training(tmp_path, monkeypatch, restore_threads):
    seen = {}

    def fake_train(config, run_dir, **options):
        seen["threads"], seen["config"] = torch.get_num_threads(), config
        raise RuntimeError("stop here")

    monkeypatch.setattr(sys.modules["pyro_vae.training"], "train", fake_train)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    recipe = tmp_path / "r.toml"
    recipe.write_text("[train]\nthreads = 3\n")
    with pytest.raises(RuntimeError, match="stop here"):
        main(["train", str(recipe), "--out", str(tmp_path / "run")])
    assert seen["threads"] == 3 and seen["config"].train.threads == 3
    with pytest.raises(RuntimeError, match="stop here"):  # the flag overrides the recipe
        main(["train", str(recipe), "--threads", "2", "--out", str(tmp_path / "run")])
    assert seen["threads"] == 2 and seen["config"].train.threads == 2
    with pytest.raises(RuntimeError, match="stop here"):  # default: 1 when OMP is not set
        main(["train", "--out", str(tmp_path / "run")])
    assert seen["threads"] == 1


def test_negative_threads_is_a_clear_error(tmp_path, capsys):
    assert main(["sample", str(tmp_path), "--threads", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--threads -1" in err and "Traceback" not in err


def test_output_mode_follows_the_stream():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert output_mode(io.StringIO()) == "lines"
    assert output_mode(Terminal()) == "bars"
    assert TqdmProgress(stream=Terminal()).mode == "bars"


@pytest.mark.slow
def test_piped_output_is_one_line_per_epoch(tmp_path):
    """A log file or CI gets plain lines: no carriage returns, one line per epoch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "pyro_vae", "train", *TINY, "--threads", "1",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr + result.stdout
    epoch_lines = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert [re.match(r"epoch (\d+)/2: train_elbo -?\d", line).group(1)
            for line in epoch_lines] == ["1", "2"]


@pytest.mark.slow
def test_recipes_are_listed_and_found_by_name(tmp_path, capsys):
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out.split("\n")
    names = sorted(line.split()[0] for line in listed if line.strip())
    assert names == sorted(p.stem for p in (ROOT / "models").glob("*.toml"))
    assert "mnist_vae_burda" in names
    assert main(["train", "mnist_vae_burd", "--out", str(tmp_path / "r")]) == 2
    assert "Did you mean 'mnist_vae_burda'?" in capsys.readouterr().err


@pytest.mark.slow
def test_a_wheel_installed_outside_the_repository_trains_a_packaged_recipe(tmp_path):
    """Build a wheel from a copy of the project, install it into a fresh virtualenv (which
    borrows this environment's packages through a .pth file: torch is not installed again)
    and train a recipe by name in a folder with no models/ beside it."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    for name in ("pyro_vae", "models"):
        shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIP_NO_INDEX": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "wheels"), str(source)],
                   check=True, env=env, cwd=tmp_path)
    wheel, = (tmp_path / "wheels").glob("pyro_vae-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    new_site = subprocess.run([str(python), "-c", "import sysconfig; "
                               "print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    borrowed = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    Path(new_site, "borrowed.pth").write_text("\n".join(borrowed) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", str(wheel)], check=True, env=env, cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(python), "-c", "import pyro_vae; print(pyro_vae.__file__)"],
                           capture_output=True, text=True, check=True, cwd=work).stdout
    assert Path(where.strip()).is_relative_to(venv)
    result = subprocess.run([str(venv / "bin" / "pyro-vae"), "train", "digits_vae", "--epochs",
                             "1", "--eval-samples", "2", "--out", "run"],
                            capture_output=True, text=True, env=env, cwd=work)
    assert result.returncode == 0, result.stderr
    assert (work / "run" / "summary.json").is_file()


def _tiny_recipe(tmp_path: Path) -> Path:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text("[model]\nhidden_dims = [8]\nlatent_dim = 2\n"
                      "[train]\nepochs = 2\n[evaluate]\nnum_samples = 2\n")
    return recipe


@pytest.mark.parametrize("uri", ["bogus://nowhere", "http://127.0.0.1:9"])
def test_an_mlflow_store_that_cannot_be_reached_is_refused_before_training(tmp_path, monkeypatch,
                                                                          capsys, uri):
    # It failed after the first epoch with a traceback (after minutes of retries for a server
    # that does not answer), leaving a run without its summary.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code = main(["train", str(_tiny_recipe(tmp_path)), "--out", "run", "--logger", "mlflow"])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot use the tracking store {uri}" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the check's own settings undone


@pytest.mark.slow
def test_loggers_write_what_tensorboard_and_mlflow_read_back(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    recipe = _tiny_recipe(tmp_path)
    assert main(["train", str(recipe), "--out", "plain"]) == 0
    assert main(["train", str(recipe), "--out", "logged", "--logger", "tensorboard",
                 "--logger", "mlflow"]) == 0
    rows = [json.loads(line) for line in Path("logged/metrics.jsonl").read_text().splitlines()]
    plain = [json.loads(line) for line in Path("plain/metrics.jsonl").read_text().splitlines()]
    # Logging (pictures drawn each epoch) leaves the training run exactly as it was.
    assert [r["train_elbo"] for r in rows] == [r["train_elbo"] for r in plain]

    events = EventAccumulator("logged/tensorboard", size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    for tag in ("elbo/train", "elbo/validation", "kl/total", "kl/dim_00", "kl/dim_01",
                "active_units", "learning_rate", "time/step_seconds"):
        assert [e.step for e in events.Scalars(tag)] == [1, 2], tag
    assert [e.value for e in events.Scalars("elbo/train")] == pytest.approx(
        [r["train_elbo"] for r in rows], rel=1e-6)
    assert [e.value for e in events.Scalars("kl/dim_01")] == pytest.approx(
        [r["kl_per_dim"][1] for r in rows], rel=1e-6)
    assert [e.step for e in events.Images("samples")] == [1, 2]
    assert [e.step for e in events.Images("reconstructions")] == [1, 2]
    hparams = EventAccumulator("logged/tensorboard/hparams")
    hparams.Reload()
    assert "_hparams_/session_start_info" in hparams.PluginTagToContent("hparams")
    summary = json.loads(Path("logged/summary.json").read_text())
    assert hparams.Scalars("test/elbo")[0].value == pytest.approx(summary["test_elbo"], rel=1e-6)

    client = MlflowClient((tmp_path / "mlruns").as_uri())
    run, = client.search_runs([client.get_experiment_by_name("pyro-vae").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.latent_dim"] == "2"
    history = client.get_metric_history(run.info.run_id, "elbo_train")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], pytest.approx(r["train_elbo"]))
                                                    for r in rows]
    assert run.data.metrics["test_log_likelihood"] == pytest.approx(
        summary["test_log_likelihood"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "config.toml", "samples.png", "elbo.png"} <= artifacts


def test_a_logger_whose_package_is_missing_is_a_clear_error(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert main(["train", "--logger", "mlflow", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert 'pip install "pyro-vae[mlflow]"' in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_tsne_map_separates_clusters_that_pca_overlaps():
    """Ten clusters at the corners of a 10-d simplex: no 2-d linear projection keeps them
    apart, t-SNE does. Measured by 5-nearest-neighbour label agreement in the 2-d map."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    from pyro_vae.plots import project_2d, tsne_2d

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(40)
    points = 4 * torch.eye(10)[labels] + 0.5 * torch.randn(400, 10, generator=generator)

    def agreement(xy):
        return cross_val_score(KNeighborsClassifier(5), xy, labels.numpy(), cv=5).mean()

    assert agreement(tsne_2d(points)[0]) > 0.95
    assert agreement(project_2d(points)[0]) < 0.8


def test_latent_map_setting_is_checked():
    assert Config().with_overrides({"evaluate": {"latent_map": "pca"}}).evaluate.latent_map \
        == "pca"
    with pytest.raises(ConfigError, match="latent_map"):
        Config().with_overrides({"evaluate": {"latent_map": "umap"}})
