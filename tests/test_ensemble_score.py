"""The ensemble's disagreement and −WAIC (Choi et al. 2018): the formulas, the scores as
``score_images`` computes them from the members' estimates, and ``pyro-vae anomaly --ensemble``."""

import json

import numpy as np
import pytest
import torch

from pyro_vae.anomaly import ScoreSettings, score_images
from pyro_vae.ensemble_score import check_members, disagreement, negative_waic
from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import estimate_log_likelihood
from pyro_vae.models import build_vae
from pyro_vae.runs import read_run_config, recipe_differences
from helpers import model_config, run_cli, three_epoch_config


def test_disagreement_and_waic_against_their_formulas():
    """Var_m is the unbiased variance over the members, and −WAIC = −mean + Var."""
    log_ps = torch.tensor([[-10.0, -100.0], [-12.0, -80.0], [-11.0, -120.0]], dtype=torch.float64)
    # Member values -10, -12, -11: mean -11, squared deviations 1, 1, 0 -> 2 / (3 - 1) = 1.
    # -100, -80, -120: mean -100, deviations 0, 400, 400 -> 800 / 2 = 400.
    assert torch.allclose(disagreement(log_ps), torch.tensor([1.0, 400.0], dtype=torch.float64))
    assert torch.allclose(negative_waic(log_ps),
                          torch.tensor([11.0 + 1.0, 100.0 + 400.0], dtype=torch.float64))


def test_one_member_cannot_disagree():
    with pytest.raises(ConfigError, match="at least 2 members"):
        check_members(1)
    with pytest.raises(ConfigError, match="at least 2 members"):
        disagreement(torch.zeros(1, 3))


def test_score_images_uses_the_run_as_the_first_member():
    """The scores are read from the run's own log p̂(x) and each other member's, estimated in
    that order on the same random stream; identical models with common draws agree exactly."""
    shape = (1, 4, 4)
    torch.manual_seed(0)
    vae = build_vae(model_config(hidden_dims=[8], latent_dim=2), shape)
    other = build_vae(model_config(hidden_dims=[8], latent_dim=2), shape)
    x = (torch.rand(30, 16, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    settings = ScoreSettings(num_samples=20)

    torch.manual_seed(5)
    scored = score_images(vae, x, shape, ("ensemble", "waic"), settings, members=[other])
    torch.manual_seed(5)
    log_ps = torch.stack([estimate_log_likelihood(m, x, 20).log_likelihood.double()
                          for m in (vae, other)])
    assert torch.allclose(scored["ensemble"], log_ps.var(dim=0), atol=1e-9)
    assert torch.allclose(scored["waic"], -log_ps.mean(dim=0) + log_ps.var(dim=0), atol=1e-9)
    assert float(scored["ensemble"].mean()) > 1e-3  # two initializations do disagree

    torch.manual_seed(5)
    first = score_images(vae, x, shape, ("ensemble",), settings, members=[vae])["ensemble"]
    assert float(first.max()) > 0  # independent draws: only importance-sampling noise
    assert float(first.mean()) < float(scored["ensemble"].mean())


def test_the_ensemble_scores_need_members():
    shape = (1, 4, 4)
    vae = build_vae(model_config(hidden_dims=[8], latent_dim=2), shape)
    with pytest.raises(ValueError, match="other members"):
        score_images(vae, torch.zeros(2, 16), shape, ("waic",), ScoreSettings(num_samples=2))


@pytest.mark.slow
def test_anomaly_trains_the_members_once_and_reuses_them(tmp_path, capsys):
    """``--ensemble 2`` trains one more model of the run's recipe and budget with the next
    seed into OUT/ensemble, reports the two scores, and reuses the member on the next call."""
    from pyro_vae.training import train

    run = tmp_path / "run"
    config = three_epoch_config()
    train(config, run, progress=None)
    noise = tmp_path / "noise.npz"
    np.savez(noise, x=np.random.default_rng(0).random((60, 8, 8)).astype(np.float32))
    out = tmp_path / "anomaly"
    arguments = ("anomaly", run, "--against", f"file:{noise}", "--ensemble", 2, "--score",
                 "log-likelihood", "--limit", 60, "--num-samples", 2, "--out", out)
    code, printed, err = run_cli(capsys, *arguments)
    assert code == 0, err
    member = read_run_config(out / "ensemble" / "seed-1")
    assert member.train.seed == 1 and member.train.epochs == 3
    assert recipe_differences(member, read_run_config(run)) == []  # the run's recipe
    assert (out / "ensemble" / "seed-1" / "member.json").exists()  # finished: stamped
    report = json.loads((out / "anomaly.json").read_text())
    assert {"ensemble", "waic"} <= set(report["scores"])
    assert set(report["metrics"][f"file:{noise}"]["ensemble"]) == {"auroc", "auprc",
                                                                   "fpr_at_95_tpr"}
    assert report["ensemble"][0]["seed"] == 1 and "training ensemble member 2 of 2" in printed
    code, printed, err = run_cli(capsys, *arguments)
    assert code == 0, err
    assert "reusing the ensemble member" in printed


def test_anomaly_refuses_an_ensemble_of_one_and_the_scores_without_one(tmp_path, capsys):
    code, _, err = run_cli(capsys, "anomaly", tmp_path / "missing", "--against", "noise",
                           "--ensemble", 1)
    assert code == 2 and "at least 2 members" in err
    code, _, err = run_cli(capsys, "anomaly", tmp_path / "missing", "--against", "noise",
                           "--score", "waic")
    assert code == 2 and "--ensemble M" in err


@pytest.mark.slow
def test_members_of_another_recipe_are_refused_before_anything_is_trained(tmp_path, capsys):
    """A member kept in --out by a run of another recipe is not reused for this one: refused in
    words (exit 2) before the background model is trained, and the member is left as it was."""
    from pyro_vae.training import train

    noise = tmp_path / "noise.npz"
    np.savez(noise, x=np.random.default_rng(0).random((60, 8, 8)).astype(np.float32))
    out = tmp_path / "anomaly"
    small, wide = tmp_path / "small", tmp_path / "wide"
    train(three_epoch_config(), small, progress=None)
    train(three_epoch_config().with_overrides({"model": {"hidden_dims": [48]}}), wide,
          progress=None)
    common = ("--against", f"file:{noise}", "--ensemble", 2, "--score", "log-likelihood",
              "--limit", 60, "--num-samples", 2, "--out", out)
    code, _, err = run_cli(capsys, "anomaly", small, *common)
    assert code == 0, err
    kept = (out / "ensemble" / "seed-1" / "checkpoint.pt").read_bytes()
    code, printed, err = run_cli(capsys, "anomaly", wide, *common, "--background")
    assert code == 2 and "another recipe" in err and "model.hidden_dims" in err
    assert "Traceback" not in err and "training the background model" not in printed
    assert not (out / "background").exists()
    assert (out / "ensemble" / "seed-1" / "checkpoint.pt").read_bytes() == kept


def test_a_file_where_a_member_is_kept_is_refused_in_words(tmp_path, capsys):
    from pyro_vae.training import train

    run = tmp_path / "run"
    train(three_epoch_config(), run, progress=None)
    out = tmp_path / "anomaly"
    (out / "ensemble").mkdir(parents=True)
    (out / "ensemble" / "seed-1").write_text("not a model")
    noise = tmp_path / "noise.npz"
    np.savez(noise, x=np.random.default_rng(0).random((60, 8, 8)).astype(np.float32))
    code, _, err = run_cli(capsys, "anomaly", run, "--against", f"file:{noise}", "--ensemble", 2,
                           "--score", "log-likelihood", "--limit", 60, "--out", out)
    assert code == 2 and "is a file" in err and "Traceback" not in err
    assert (out / "ensemble" / "seed-1").read_text() == "not a model"
