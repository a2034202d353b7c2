"""The third red-team round's reproducers other than the security cases (those are in
tests/test_security.py): each ends in one clear paragraph with exit status 2, or in a correct
result, with nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_cli

TINY = ["--epochs", 1, "--eval-samples", 2]


def one_paragraph(code: int, err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("pyro-vae: error:")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, err[-3000:]
    return errors[0]


# --- M: plugins named wrongly or broken --------------------------------------------------------

@pytest.mark.slow
def test_a_broken_installed_plugin_breaks_only_what_uses_it(tmp_path):
    """One installed package whose pyro_vae.plugins entry point fails on import made every
    command fail, --help and recipes included, without naming the package."""
    site = tmp_path / "site"
    info = site / "broken_vae_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-vae-plugin\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text("[pyro_vae.plugins]\nbroken = broken_vae_plugin\n")
    (site / "broken_vae_plugin.py").write_text("raise RuntimeError('half-installed')\n")
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}

    def pyro_vae(*argv):
        result = subprocess.run([sys.executable, "-m", "pyro_vae", *map(str, argv)],
                                cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=300)
        return result.returncode, result.stdout, result.stderr

    for argv in (["--help"], ["recipes"], ["train", "--help"]):
        code, out, err = pyro_vae(*argv)
        assert code == 0 and "Traceback" not in err and out, (argv, err[-2000:])
    code, _, err = pyro_vae("train", "--prior", "broken_prior", *TINY, "--out", "run")
    message = one_paragraph(code, err)
    assert "'broken-vae-plugin'" in message and "half-installed" in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("given", ["plugins/my_prior.py", "my_prior.py", "./my_prior.py"])
def test_a_plugin_given_as_a_file_is_told_to_give_a_module_name(capsys, given):
    code, _, err = run_cli(capsys, "recipes", "--plugin", given)
    message = one_paragraph(code, err)
    assert "not as a file" in message and "--plugin my_prior" in message
    assert "pip install" not in message


# --- T: a model factory that returns no model --------------------------------------------------

def test_a_factory_returning_none_is_refused_in_one_paragraph(tmp_path, capsys, monkeypatch):
    (tmp_path / "none_factory.py").write_text(
        "def build(config, image_shape, num_data=None):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = tmp_path / "r.toml"
    recipe.write_text('[model]\nkind = "none_factory:build"\n')
    code, _, err = run_cli(capsys, "train", recipe, *TINY, "--out", tmp_path / "run")
    message = one_paragraph(code, err)
    assert "returned NoneType, not a model" in message
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# --- M: a run that has not saved its first epoch ----------------------------------------------

def test_a_run_before_its_first_epoch_is_said_to_be_so(tmp_path, capsys):
    """pyro-vae train writes config.toml first; evaluate and sample on such a folder asked
    "is this a run directory written by pyro-vae train?"."""
    from pyro_vae.config import Config
    from pyro_vae.runs import CONFIG_HEADER

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(CONFIG_HEADER + Config().to_toml())
    for argv in (["evaluate", run], ["sample", run, "--out", tmp_path / "s.png"]):
        message = one_paragraph(*run_cli(capsys, *argv)[::2])
        assert "has not saved its first epoch" in message and "is it a run" not in message
    assert not (tmp_path / "s.png").exists()


# --- W and T: plugin priors checked on entry ---------------------------------------------------

BAD_PRIORS = '''
import pyro.distributions as dist
import torch

from pyro_vae.priors import Prior
from pyro_vae.registry import PRIORS


class SummedOverBatch(dist.Independent):
    def log_prob(self, value):
        return super().log_prob(value).sum()


class PerDimension(dist.Independent):
    def log_prob(self, value):
        return self.base_dist.log_prob(value)


class BadPrior(Prior):
    def __init__(self, latent_dim, how):
        super().__init__(latent_dim)
        self.how = how

    def forward(self, batch_shape, device, dtype):
        extra = 1 if self.how == "one_too_many" else 0
        loc = torch.zeros(*batch_shape, self.latent_dim + extra, device=device, dtype=dtype)
        normal = dist.Normal(loc, torch.ones_like(loc))
        if self.how == "summed":
            return SummedOverBatch(normal, 1)
        if self.how == "per_dimension":
            return PerDimension(normal, 1)
        if self.how == "no_event":
            return normal
        return normal.to_event(1)


for how in ("summed", "per_dimension", "no_event", "one_too_many", "good"):
    PRIORS.add(f"bad_{how}", lambda config, context, how=how: BadPrior(config.latent_dim, how))
'''


@pytest.fixture
def bad_priors(tmp_path, monkeypatch):
    (tmp_path / "bad_priors.py").write_text(BAD_PRIORS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "bad_priors"


@pytest.mark.parametrize("how, words", [
    ("summed", "summed over the batch"),
    ("per_dimension", "per latent dimension"),
    ("no_event", "Wrap it with .to_event(1)"),
    ("one_too_many", "event shape (9,)"),
])
def test_a_plugin_prior_of_the_wrong_shape_is_refused_before_training(tmp_path, capsys,
                                                                      bad_priors, how, words):
    """A prior whose log_prob summed over the batch trained to a test log p(x) of −17,855 nats
    with exit status 0; the other shapes ended in tracebacks."""
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--plugin", bad_priors, "--prior", f"bad_{how}",
                           "--latent-dim", 8, *TINY, "--out", run)
    message = one_paragraph(code, err)
    assert words in message and f'prior = "bad_{how}"' in message
    assert not (run / "checkpoint.pt").exists()


def test_a_plugin_prior_of_the_right_shape_trains(tmp_path, capsys, bad_priors):
    code, _, err = run_cli(capsys, "train", "--plugin", bad_priors, "--prior", "bad_good",
                           "--latent-dim", 8, *TINY, "--out", tmp_path / "run")
    assert code == 0, err


# --- W: fit's model checked on entry -----------------------------------------------------------

FIT_MODELS = '''
import contextlib

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class NoZGuide(nn.Module):
    """A model with a latent z and a guide that never samples it."""

    def __init__(self, latent_dim=2):
        super().__init__()
        self.latent_dim = latent_dim
        self.decoder = nn.Linear(latent_dim, 64)
        self.encoder = nn.Linear(64, latent_dim)
        self.kl_weight, self.num_data = 1.0, None

    def model(self, x, y=None):
        pyro.module("nozguide", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], self.latent_dim),
                                             1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, y=None):
        pyro.module("nozguide", self)
        self.encoder(x)  # computes a code, but samples nothing

    def scoring(self):
        return contextlib.nullcontext(self)


def build(config, image_shape, num_data=None):
    return NoZGuide(config.latent_dim)
'''


def test_fit_refuses_a_guide_that_never_samples_a_latent_site(tmp_path, monkeypatch):
    import pyro_vae
    from pyro_vae.errors import ConfigError

    (tmp_path / "fit_models.py").write_text(FIT_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import fit_models

    model = fit_models.build(pyro_vae.Config().model.__class__(latent_dim=2), (1, 8, 8))
    with pytest.raises(ConfigError, match="never samples the latent site.*'z'"):
        pyro_vae.fit(model, factory=fit_models.build, out=tmp_path / "run", epochs=1,
                     eval_samples=2, progress=False, options={"model": {"latent_dim": 2}})
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_fit_refuses_a_factory_that_rebuilds_another_model(tmp_path, monkeypatch):
    """latent_dim 4 trained, the default 8 recorded: every command would refuse the run."""
    import pyro_vae
    from pyro_vae.errors import ConfigError

    examples = Path(__file__).resolve().parents[1] / "examples" / "pyro_vae_example_plugin"
    monkeypatch.syspath_prepend(str(examples))
    from pyro_vae_example_plugin.models import build

    model = build(pyro_vae.Config().model.__class__(latent_dim=4, hidden_dims=[16]), (1, 8, 8))
    with pytest.raises(ConfigError, match="rebuilds a different model"):
        pyro_vae.fit(model, factory=build, out=tmp_path / "run", epochs=1, eval_samples=2,
                     progress=False, options={"model": {"hidden_dims": [16]}})
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# --- M/W: --resume --epochs after a finished learning-rate decay -------------------------------

@pytest.mark.slow
def test_resuming_past_a_finished_decay_does_not_jump_back_to_the_full_rate(tmp_path, capsys):
    import json

    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--epochs", 3, "--lr-decay-epochs", 2,
                           "--lr-decay-to", 0.01, "--eval-samples", 2, "--out", run)
    assert code == 0, err
    before = (run / "checkpoint.pt").read_bytes()
    code, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--epochs", 7)
    message = one_paragraph(code, err)
    assert "jump back up to 0.001" in message and "--lr 1e-05" in message
    assert (run / "checkpoint.pt").read_bytes() == before  # nothing changed
    # With the rate given, the added epochs start there and decay over the last 2.
    code, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--epochs", 7,
                           "--lr", "1e-5")
    assert code == 0, err
    rates = [json.loads(line)["learning_rate"]
             for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rates[2] == pytest.approx(1e-5) and max(rates[3:]) <= 1e-5 * (1 + 1e-9)


# --- T and fragile: commands that failed late or with a traceback ------------------------------

@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    from pyro_vae.cli import main

    run = tmp_path_factory.mktemp("digits") / "run"
    assert main([str(a) for a in ("train", *TINY, "--out", run)]) == 0
    return run


def test_gaps_with_too_few_draws_is_refused_before_the_slow_part(digits_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "gaps", digits_run, "--n", 2, "--num-samples", 8,
                           "--steps", 2, "--nuts-points", 1, "--chains", 2, "--draws", 3,
                           "--out", tmp_path / "gaps")
    assert "--draws 3" in one_paragraph(code, err) and "nuts" not in err
    assert not (tmp_path / "gaps").exists()


def test_compare_vimco_with_one_particle_is_refused_before_the_work(digits_run, tmp_path,
                                                                    capsys):
    code, _, err = run_cli(capsys, "compare", digits_run, "--objectives", "vimco",
                           "--particles", 1, "--repeats", 2, "--batch-size", 8,
                           "--out", tmp_path / "lab")
    assert "--particles of 2 or more" in one_paragraph(code, err)
    assert not (tmp_path / "lab").exists()


@pytest.mark.parametrize("command", ["compare", "probe"])
def test_an_unwritable_out_is_refused_before_the_work(digits_run, tmp_path, capsys, command):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    extra = ["--objectives", "elbo", "--particles", 2, "--repeats", 2, "--batch-size", 8] \
        if command == "compare" else []
    code, out, err = run_cli(capsys, command, digits_run, *extra, "--out", blocker / "out")
    assert "cannot be created" in one_paragraph(code, err)
    assert "accuracy" not in out and "[1]" not in err  # nothing was computed first
    assert blocker.read_text() == "not a folder\n"


def test_a_data_dir_whose_name_is_not_utf8_is_refused(tmp_path, capsys):
    folder = str(tmp_path) + "/data-\udcff"  # how Python passes an undecodable byte
    code, _, err = run_cli(capsys, "train", *TINY, "--data-dir", folder,
                           "--out", tmp_path / "run")
    assert "not valid UTF-8" in one_paragraph(code, err)
    assert not (tmp_path / "run").exists()


def test_an_integer_beyond_64_bits_is_refused(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", *TINY, "--lr-decay-epochs", 10 ** 20,
                           "--out", tmp_path / "run")
    assert "64-bit" in one_paragraph(code, err)
    assert not (tmp_path / "run").exists()


def test_fit_given_arrays_says_what_to_pass_in_a_short_message(tmp_path, monkeypatch):
    import torch

    import pyro_vae
    from pyro_vae.errors import ConfigError

    examples = Path(__file__).resolve().parents[1] / "examples" / "pyro_vae_example_plugin"
    monkeypatch.syspath_prepend(str(examples))
    from pyro_vae_example_plugin.models import build

    model = build(pyro_vae.Config().model.__class__(latent_dim=2, hidden_dims=[16]), (1, 8, 8))
    for data in (torch.rand(5000, 64), [[0.5] * 64] * 100):
        with pytest.raises(ConfigError, match="file:PATH.npz") as raised:
            pyro_vae.fit(model, data=data, factory=build, out=tmp_path / "run", epochs=1)
        assert len(str(raised.value)) < 600 and "0.5" not in str(raised.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_compare_on_a_discrete_run_leaves_out_an_enumeration_too_large(tmp_path, capsys):
    """The default discrete run has 10^20 codes: enumerate overflowed after the other
    objectives' work; asked for by name it is refused, by default it is left out."""
    run = tmp_path / "discrete"
    code, _, err = run_cli(capsys, "train", "--model", "discrete", "--objective", "concrete",
                           *TINY, "--out", run)
    assert code == 0, err
    code, _, err = run_cli(capsys, "compare", run, "--objectives", "enumerate",
                           "--particles", 2, "--repeats", 2, "--batch-size", 4,
                           "--out", tmp_path / "lab")
    assert "more than the 1024" in one_paragraph(code, err)
    assert not (tmp_path / "lab").exists()
    code, _, err = run_cli(capsys, "compare", run, "--particles", 2, "--repeats", 2,
                           "--batch-size", 4, "--out", tmp_path / "lab")
    assert code == 0 and "enumerate left out" in err, err[-2000:]
    assert "enumerate" not in (tmp_path / "lab" / "compare.csv").read_text()


@pytest.mark.slow
def test_compare_plots_an_exact_enumeration_without_failing(tmp_path, capsys):
    """enumerate's gradient is exact (SNR infinite), which the log-scale plot could not show."""
    run = tmp_path / "small"
    code, _, err = run_cli(capsys, "train", "digits_discrete", *TINY, "--out", run)
    assert code == 0, err
    code, _, err = run_cli(capsys, "compare", run, "--objectives", "enumerate",
                           "--particles", "1,2", "--repeats", 2, "--batch-size", 4,
                           "--out", tmp_path / "lab")
    assert code == 0, err[-2000:]
    assert (tmp_path / "lab" / "snr_vs_k.png").stat().st_size > 0


# --- M and fragile: anomaly's background model and its data sets -----------------------------

@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing", "damaged"])
def test_an_interrupted_background_model_is_named_as_such(digits_run, tmp_path, capsys,
                                                          damage):
    """kill -9 after the background model's last checkpoint but before perturbation.json: the
    rerun said it was "trained with other settings (None)"."""
    out = tmp_path / "anomaly"
    argv = ["anomaly", digits_run, "--against", "digits", "--score", "likelihood-ratio",
            "--background-epochs", 1, "--limit", 20, "--num-samples", 2, "--out", out]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    stamp = out / "background" / "perturbation.json"
    if damage == "missing":
        stamp.unlink()
    else:
        stamp.write_text('{"dataset": "dig')
    message = one_paragraph(*run_cli(capsys, *argv)[::2])
    assert "did not finish" in message and "None" not in message


def test_scoring_a_dataset_against_itself_warns(digits_run, tmp_path, capsys):
    import json

    out = tmp_path / "anomaly"
    code, _, err = run_cli(capsys, "anomaly", digits_run, "--against", "digits", "--score",
                           "log-likelihood", "--limit", 20, "--num-samples", 2, "--out", out)
    assert code == 0 and "run's own dataset" in err, err[-2000:]
    assert any("run's own dataset" in w
               for w in json.loads((out / "anomaly.json").read_text())["warnings"])


def test_a_discrete_code_too_large_to_build_is_refused_before_allocating(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--model", "discrete", "--objective", "concrete",
                           "--categorical-latents", 100000, "--categories", 100000, *TINY,
                           "--out", tmp_path / "run")
    message = one_paragraph(code, err)
    assert "100000 × 100000" in message and "out of memory" not in message
    assert not (tmp_path / "run").exists()


def test_a_half_trained_run_is_said_to_be_unfinished(digits_run, tmp_path, capsys):
    """A run stopped at epoch 1 of 3 was scored without a word about it."""
    import re
    import shutil

    import torch

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    text = (run / "config.toml").read_text()
    assert re.search(r"(?m)^epochs = 1$", text)
    (run / "config.toml").write_text(re.sub(r"(?m)^epochs = 1$", "epochs = 3", text))
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    checkpoint["config"]["train"]["epochs"] = 3
    torch.save(checkpoint, run / "checkpoint.pt")
    code, _, err = run_cli(capsys, "evaluate", run, "--num-samples", 2)
    assert code == 0 and "trained for 1 of its 3 epochs" in err, err[-2000:]
    assert f"pyro-vae train --out {run} --resume" in err
    code, _, err = run_cli(capsys, "evaluate", digits_run, "--num-samples", 2)
    assert code == 0 and "of its" not in err


def test_a_half_trained_runs_background_model_matches_what_it_finished(digits_run, tmp_path,
                                                                        capsys):
    """The background model of a run stopped at epoch 1 of 3 trained 3 epochs: a likelihood
    ratio between models of other budgets than the validated recipe's (the run's own)."""
    import re
    import shutil

    import torch

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(re.sub(r"(?m)^epochs = 1$", "epochs = 3", text))
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    checkpoint["config"]["train"]["epochs"] = 3
    torch.save(checkpoint, run / "checkpoint.pt")
    out = tmp_path / "anomaly"
    code, _, err = run_cli(capsys, "anomaly", run, "--against", "digits", "--score",
                           "likelihood-ratio", "--limit", 20, "--num-samples", 2, "--out", out)
    assert code == 0, err[-2000:]
    assert "the background model train 1 epoch(s), as many as the run finished of the 3" in err
    assert "ensemble" not in err
    assert json.loads((out / "background" / "perturbation.json").read_text())["epochs"] == 1
    background = json.loads((out / "background" / "summary.json").read_text())
    assert background["epochs"] == 1
    # A budget given by hand is the user's: no note, and the kept model (1 epoch) is refused
    # by naming the setting that differs.
    code, _, err = run_cli(capsys, "anomaly", run, "--against", "digits", "--score",
                           "likelihood-ratio", "--background-epochs", 2, "--limit", 20,
                           "--num-samples", 2, "--out", out)
    message = one_paragraph(code, err)
    assert "epochs 1 there, 2 now" in message and "as many as the run finished" not in err


@pytest.mark.slow
def test_regret_of_a_non_diagonal_guide_says_what_it_measures(tmp_path, capsys):
    """Audit: regret of lowrank and IAF guides is measured from the encoder's diagonal base."""
    run = tmp_path / "lowrank"
    code, _, err = run_cli(capsys, "train", "--guide", "lowrank", *TINY, "--out", run)
    assert code == 0, err
    code, _, err = run_cli(capsys, "anomaly", run, "--against", "digits", "--score", "regret",
                           "--limit", 10, "--num-samples", 2, "--regret-steps", 2,
                           "--regret-draws", 2, "--out", tmp_path / "anomaly")
    assert code == 0 and "diagonal Gaussian (the base its guide transforms)" in err, err[-2000:]


def test_a_failing_netcdf_write_is_one_paragraph_and_leaves_no_temporary_file(tmp_path,
                                                                              monkeypatch):
    """gaps on a full disk ended in an h5py traceback (the writer's errors are not all
    OSError); simulated here by a writer that fails the way h5py does."""
    import arviz as az
    import numpy as np

    from pyro_vae.diagnostics import save_inference_data
    from pyro_vae.errors import PyroVAEError

    data = az.from_dict(posterior={"z": np.zeros((1, 4, 2))})

    def full_disk(self, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("Can't write data (file write failed: errno = 28, No space left)")

    monkeypatch.setattr(az.InferenceData, "to_netcdf", full_disk)
    with pytest.raises(PyroVAEError, match="No space left"):
        save_inference_data(data, tmp_path / "posterior.nc")
    assert list(tmp_path.iterdir()) == []


def test_a_disk_without_room_is_refused_before_the_netcdf_write(tmp_path, monkeypatch):
    """On a full disk the HDF5 library could crash the process (exit 139) mid-write, leaving a
    temporary file; the free space is checked first."""
    import shutil

    import arviz as az
    import numpy as np

    from pyro_vae import diagnostics
    from pyro_vae.errors import PyroVAEError

    data = az.from_dict(posterior={"z": np.zeros((1, 4, 2))})
    wrote = []
    monkeypatch.setattr(az.InferenceData, "to_netcdf",
                        lambda self, path, *a, **k: wrote.append(path))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(diagnostics.shutil, "disk_usage",
                        lambda folder: usage._replace(free=2 ** 20))
    with pytest.raises(PyroVAEError, match="MB free"):
        diagnostics.save_inference_data(data, tmp_path / "posterior.nc")
    assert wrote == [] and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(diagnostics.shutil, "disk_usage", lambda folder: usage)
    diagnostics.save_inference_data(data, tmp_path / "posterior.nc")  # room enough: written
    assert len(wrote) == 1


def _speckle_run(tmp_path, capsys, count: int, seed: int) -> tuple[Path, str]:
    """A one-epoch run on ``count`` 10×10 speckle images (30 % of pixels on) kept in a
    ``.npz``; returns the run and the data's ``file:`` name."""
    import numpy as np

    images = (np.random.default_rng(seed).random((count, 10, 10)) < 0.3).astype(np.uint8)
    np.savez(tmp_path / "speckle.npz", x=images * 255)
    data, run = f"file:{tmp_path / 'speckle.npz'}", tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--dataset", data, *TINY, "--out", run)
    assert code == 0, err[-2000:]
    return run, data


def test_too_few_held_out_images_for_the_verdict_say_which_limit_binds(tmp_path, capsys):
    """A dataset with 32 validation images was told to raise --limit (already 100), and
    --score fisher failed only after the transformation classifier had been trained."""
    run, data = _speckle_run(tmp_path, capsys, 400, seed=0)
    out = tmp_path / "anomaly"
    against = ("--against", data, "--num-samples", 2)
    code, _, err = run_cli(capsys, "anomaly", run, *against, "--score", "fisher",
                           "--limit", 100, "--out", out)
    message = one_paragraph(code, err)
    assert "--score fisher: it is fitted" in message and "at least 39 (fisher)" in message
    assert "only 32 validation images" in message and "--limit" not in message
    assert not out.exists()  # refused before the classifier was trained
    # DoSE needs 20 and knn 4 (their halves), Fisher 39: the limit binds, and says so.
    code, _, err = run_cli(capsys, "anomaly", run, *against, "--score", "dose",
                           "--limit", 16, "--out", out)
    assert "20 (dose)" in one_paragraph(code, err) and "Give --limit 20 or more" in err
    code, _, err = run_cli(capsys, "anomaly", run, *against, "--score", "dose", "--score",
                           "knn", "--limit", 30, "--out", out)
    assert code == 0, err[-2000:]
    assert {"dose", "knn"} <= set(json.loads((out / "anomaly.json").read_text())["scores"])
    code, _, err = run_cli(capsys, "anomaly", run, *against, "--no-transformations",
                           "--limit", 10, "--regret-steps", 1, "--regret-draws", 1,
                           "--typicality-batch", 5, "--out", out)
    assert code == 0, err[-2000:]
    assert "note: no dose, fisher (fisher is the default verdict)" in err
    assert "need at least 20 (dose), 39 (fisher), and this run scores 10" in err
    assert "only 32 validation images" in err
    report = json.loads((out / "anomaly.json").read_text())
    assert "knn" in report["scores"] and not {"dose", "fisher"} & set(report["scores"])


def test_a_test_set_smaller_than_a_typicality_batch_leaves_the_test_out_with_a_note(
        tmp_path, capsys):
    """30 images (6 test images) failed the whole command after scoring, telling the user to
    raise --limit, which was 1,000 already."""
    run, data = _speckle_run(tmp_path, capsys, 30, seed=1)
    out = tmp_path / "anomaly"
    against = ("--against", data, "--num-samples", 2)
    code, _, err = run_cli(capsys, "anomaly", run, *against, "--score", "typicality",
                           "--out", out)
    message = one_paragraph(code, err)
    assert "has only 6 to score; give --typicality-batch 6 or less" in message
    assert not out.exists()
    code, _, err = run_cli(capsys, "anomaly", run, *against, "--score", "log-likelihood",
                           "--score", "typicality", "--typicality-batch", 3, "--out", out)
    assert code == 0, err[-2000:]
    assert json.loads((out / "anomaly.json").read_text())["typicality"]
    code, _, err = run_cli(capsys, "anomaly", run, *against, "--no-transformations",
                           "--regret-steps", 1, "--regret-draws", 1, "--out", out)
    assert code == 0 and "note: no typicality test" in err, err[-2000:]
    # A progress line before each set is scored: its test images, the other set, the
    # validation images.
    assert "scoring 1/3: the run's test images (6 images; log-likelihood, elbo" in err
    assert "scoring 3/3: the validation images" in err and "s so far" in err
    assert json.loads((out / "anomaly.json").read_text())["typicality"] == {}


def test_a_typicality_batch_larger_than_the_limit_asks_for_a_larger_limit(digits_run, tmp_path,
                                                                          capsys):
    code, _, err = run_cli(capsys, "anomaly", digits_run, "--against", "digits", "--score",
                           "typicality", "--limit", 5, "--num-samples", 2,
                           "--out", tmp_path / "anomaly")
    assert "raise --limit to 10 or more" in one_paragraph(code, err)
    assert not (tmp_path / "anomaly").exists()
