"""Anomaly scores: metrics, compressed length, likelihood regret, perturbation, typicality, and
the hard direction (log p(x) inverted by construction) on a small synthetic pair."""

import io
import json
import math
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from pyro_vae.anomaly import (SCORES, compressed_length, detection_metrics, likelihood_regret,
                              perturb, typicality_test)
from pyro_vae.cli import build_parser, main
from pyro_vae.config import Config, ModelConfig
from pyro_vae.errors import ConfigError
from pyro_vae.models import build_vae
from pyro_vae.toy import LinearGaussian
from pyro_vae.training import train
from helpers import model_config


def test_metrics_on_hand_cases_and_against_sklearn():
    perfect = detection_metrics(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([3.0, 4.0]))
    assert (perfect.auroc, perfect.auprc, perfect.fpr_at_95_tpr) == (1.0, 1.0, 0.0)
    inverted = detection_metrics(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 1.0, 2.0]))
    assert inverted.auroc == 0.0 and inverted.fpr_at_95_tpr == 1.0
    # 20 anomalies: 95 % TPR needs the 19 highest, so the threshold is the 19th-highest anomaly
    # (value 1); normal scores 0.5, 1.5, 2.5, 3.5 → three of four at or above it.
    half = detection_metrics(torch.tensor([0.5, 1.5, 2.5, 3.5]), torch.arange(20.0))
    assert half.fpr_at_95_tpr == 0.75

    generator = torch.Generator().manual_seed(0)
    normal = torch.randn(500, generator=generator)
    anomalous = torch.randn(300, generator=generator) + 1.0
    metrics = detection_metrics(normal, anomalous)
    labels = np.r_[np.zeros(500), np.ones(300)]
    scores = np.r_[normal.numpy(), anomalous.numpy()]
    assert metrics.auroc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics.auprc == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(labels, scores)
    assert metrics.fpr_at_95_tpr == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12)


def test_compressed_length_is_the_compressed_size_in_nats():
    shape = (1, 28, 28)
    constant = torch.full((1, 784), 0.5)
    noise = torch.rand(1, 784, generator=torch.Generator().manual_seed(0))
    flat = np.full((28, 28), 128, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(flat).save(buffer, format="PNG", compress_level=9)
    expected = {"png": len(buffer.getvalue()), "zlib": len(zlib.compress(flat.tobytes(), 9))}
    for compressor in ("png", "zlib"):
        lengths = compressed_length(torch.cat([constant, noise]), shape, compressor)
        assert lengths[0] < 0.2 * lengths[1]  # a flat image compresses far better than noise
        assert float(lengths[0]) == pytest.approx(expected[compressor] * 8 * math.log(2))
    with pytest.raises(ConfigError):
        compressed_length(torch.zeros(1, 2 * 16), (2, 4, 4), "png")
    with pytest.raises(ConfigError):
        compressed_length(constant, shape, "gzip")


@pytest.mark.slow
def test_likelihood_regret_is_the_amortization_gap_on_the_linear_gaussian():
    toy = LinearGaussian()
    toy.set_encoder(loc_error=torch.tensor([1.0, -0.5]), scale_factor=1.5)
    with torch.no_grad():
        gap = toy.log_px - toy.exact_elbo(toy.x)  # the re-fit can reach the exact posterior
    torch.manual_seed(0)
    regret = likelihood_regret(toy.vae, toy.x, steps=100, draws=64, learning_rate=0.05)
    assert (regret >= 0).all()
    stderr = float(regret.std() / math.sqrt(len(regret)))
    assert abs(float(regret.mean() - gap.mean())) < 4 * stderr
    assert torch.equal(likelihood_regret(toy.vae, toy.x, steps=0), torch.zeros(len(toy.x)))
    toy.set_encoder()  # the encoder is the exact posterior: nothing left to gain
    regret = likelihood_regret(toy.vae, toy.x, steps=100, draws=64, learning_rate=0.05)
    assert (regret >= 0).all() and float(regret.mean()) < 0.1 * float(gap.mean())
    two_layers = build_vae(model_config(stochastic_layers=2, hidden_dims=[8], latent_dim=2,
                                        top_latent_dim=2, top_hidden_dims=[4]), (1, 4, 4))
    with pytest.raises(ConfigError, match="one latent site"):
        likelihood_regret(two_layers, torch.zeros(3, 16))


def test_perturbation_rate_and_support():
    generator = torch.Generator().manual_seed(0)
    binary = (torch.rand(200, 100, generator=generator) < 0.3).float()
    assert torch.equal(perturb(binary, 0.0, generator), binary)
    perturbed = perturb(binary, 0.4, generator)
    assert ((perturbed == 0) | (perturbed == 1)).all()
    changed = float((perturbed != binary).float().mean())  # a random bit differs half the time
    assert abs(changed - 0.2) < 4 * math.sqrt(0.2 * 0.8 / binary.numel())
    grey = perturb(torch.full((100, 100), 0.5), 0.3, generator)
    assert abs(float((grey != 0.5).float().mean()) - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 1e4)
    with pytest.raises(ConfigError):
        perturb(binary, 1.5)


def test_typicality_flags_batches_more_likely_than_typical():
    generator = torch.Generator().manual_seed(0)
    draw = lambda n, mean: mean + 10.0 * torch.randn(n, generator=generator)  # noqa: E731
    train_lp, valid_lp, test_lp = draw(2000, -100.0), draw(2000, -100.0), draw(2000, -100.0)
    result, normal, other = typicality_test(train_lp, valid_lp, test_lp, draw(500, -85.0),
                                            batch_size=10, alpha=0.01)
    assert len(normal) == 200 and len(other) == 50
    # 200 in-distribution batches, 1 % false alarms by design: binomial standard error.
    assert result.false_alarm_rate < 0.01 + 4 * math.sqrt(0.01 * 0.99 / 200)
    assert result.detection_rate > 0.9 and result.batch_auroc > 0.95  # shift of 4.7 SEs
    assert result.entropy_estimate == pytest.approx(100.0, abs=4 * 10 / math.sqrt(2000))


def test_every_score_is_named_in_the_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["anomaly", "--help"])
    help_text = "".join(capsys.readouterr().out.split())  # argparse wraps at hyphens
    assert all(name in help_text for name in SCORES)


def test_the_help_lists_every_shift_and_no_other():
    import re

    from pyro_vae.shifts import SHIFTS

    parser = build_parser()  # the help is written by hand, so that --help needs no torch
    against = next(a for a in parser._subparsers._group_actions[0].choices["anomaly"]._actions
                   if "--against" in a.option_strings)
    listed = re.search(r"NAME one of (.*)$", against.help).group(1).split(", ")
    assert listed == list(SHIFTS)


def _save_images(path, images):
    np.savez(path, x=(images.numpy() * 255).astype(np.uint8).reshape(-1, 10, 10))


@pytest.fixture(scope="module")
def speckle_run(tmp_path_factory):
    """A VAE trained on 10×10 speckle (each pixel on with probability 0.1), and two other
    datasets: near-blank images (one or two pixels on), which the model must find *more* likely
    than its own data, and dense noise (probability 0.5), which it finds less likely."""
    folder = tmp_path_factory.mktemp("speckle")
    generator = torch.Generator().manual_seed(0)
    _save_images(folder / "speckle.npz", (torch.rand(3000, 100, generator=generator) < 0.1)
                 .float())
    blank = torch.zeros(600, 100)
    blank[torch.arange(600), torch.randint(100, (600,), generator=generator)] = 1.0
    blank[torch.arange(0, 600, 2), torch.randint(100, (300,), generator=generator)] = 1.0
    _save_images(folder / "blank.npz", blank)
    _save_images(folder / "dense.npz", (torch.rand(600, 100, generator=generator) < 0.5).float())
    config = Config().with_overrides({
        "data": {"dataset": f"file:{folder / 'speckle.npz'}", "binarize": "none"},
        "model": {"hidden_dims": [32], "latent_dim": 2},
        "train": {"epochs": 3, "batch_size": 100}, "evaluate": {"num_samples": 2}})
    train(config, folder / "run")
    return folder


@pytest.mark.slow
def test_hard_direction_is_detected_where_log_likelihood_is_inverted(speckle_run, capsys):
    run, out = speckle_run / "run", speckle_run / "out"
    blank, dense = f"file:{speckle_run / 'blank.npz'}", f"file:{speckle_run / 'dense.npz'}"
    assert main(["anomaly", str(run), "--against", blank, dense, "--limit", "300",
                 "--num-samples", "20", "--regret-steps", "20", "--regret-draws", "8",
                 "--background",
                 "--background-epochs", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    report = json.loads((out / "anomaly.json").read_text())
    assert report["scores"] == [s for s in SCORES if s not in ("ensemble", "waic")]
    hard, easy = report["metrics"][blank], report["metrics"][dense]
    assert hard["log-likelihood"]["auroc"] < 0.5  # the construction: blank images look likely
    assert "warning" in captured.err and blank in report["warnings"][0]
    assert hard["complexity"]["auroc"] > 0.9  # the compressed length corrects it
    assert report["typicality"][blank]["detection_rate"] > 0.9
    assert easy["log-likelihood"]["auroc"] > 0.9  # dense noise: the easy direction
    for score in ("log-likelihood", "elbo", "regret", "complexity", "likelihood-ratio"):
        assert set(hard[score]) == {"auroc", "auprc", "fpr_at_95_tpr"}
        assert score in captured.out
    assert (out / "anomaly.png").stat().st_size > 0
    assert json.loads((out / "background" / "perturbation.json").read_text())["rate"] == 0.2

    # One score, the background model reused rather than trained again (the same settings:
    # without --background-epochs it would be the run's own epochs, and refused as other).
    assert main(["anomaly", str(run), "--against", blank, "--score", "likelihood-ratio",
                 "--background-epochs", "1", "--limit", "100", "--num-samples", "5",
                 "--out", str(out)]) == 0
    assert "reusing the background model" in capsys.readouterr().out
    report = json.loads((out / "anomaly.json").read_text())
    assert report["scores"] == ["likelihood-ratio"] and report["typicality"] == {}
    assert list(report["metrics"][blank]) == ["likelihood-ratio"]


@pytest.mark.slow
def test_bad_score_settings_are_refused(speckle_run, capsys):
    run = str(speckle_run / "run")
    blank = f"file:{speckle_run / 'blank.npz'}"
    for flags in (["--score", "lof"], ["--background-rate", "1.5"], ["--compressor", "gzip"],
                  ["--regret-steps", "0"]):
        assert main(["anomaly", run, "--against", blank, *flags,
                     "--out", str(speckle_run / "refused")]) == 2
    assert main(["anomaly", run, "--against", blank, blank]) == 2
    err = capsys.readouterr().err
    assert "is not a score" in err and "Traceback" not in err
    assert not (speckle_run / "refused").exists()  # nothing written


@pytest.mark.slow
def test_no_held_out_images_is_refused_before_anything_is_trained(speckle_run, capsys):
    blank = f"file:{speckle_run / 'blank.npz'}"
    for limit in ("0", "-3"):
        assert main(["anomaly", str(speckle_run / "run"), "--against", blank, "--limit", limit,
                     "--out", str(speckle_run / "refused")]) == 2
        assert "--limit must be a positive integer" in capsys.readouterr().err
    # A run with no validation images: every score's tail is read from them. It failed with a
    # raw traceback after the classifier had been trained and every set scored.
    config = Config().with_overrides({
        "data": {"dataset": f"file:{speckle_run / 'speckle.npz'}", "binarize": "none",
                 "validation_fraction": 0.0},
        "model": {"hidden_dims": [16], "latent_dim": 2},
        "train": {"epochs": 1, "batch_size": 500}, "evaluate": {"num_samples": 2}})
    train(config, speckle_run / "no-validation")
    assert main(["anomaly", str(speckle_run / "no-validation"), "--against", blank,
                 "--out", str(speckle_run / "refused")]) == 2
    err = capsys.readouterr().err
    assert "validation_fraction = 0" in err and "Traceback" not in err
    assert not (speckle_run / "refused").exists()
    assert not (speckle_run / "no-validation" / "transformations").exists()  # nothing trained


def test_the_printed_table_keeps_a_long_dataset_name_apart_from_its_neighbour():
    """`--against mnist file:/a/long/path.npz` ran the header's columns together."""
    from pyro_vae.cli.anomaly import _anomaly_table

    names = ["mnist", "file:/data/handwritten/characters-of-a-long-name.npz"]
    metric = {"auroc": 0.5, "auprc": 0.5, "fpr_at_95_tpr": 0.95}
    report = {"against": names, "num_images": 10, "num_samples": 2, "scores": ["elbo"],
              "metrics": {name: {"elbo": metric} for name in names}, "typicality": {}}
    header, row = _anomaly_table("digits", report).splitlines()[1:3]
    assert "FPR95  vs file:" in header
    assert header.endswith("AUROC AUPRC FPR95") and len(row) == len(header)
    assert row.split() == ["elbo", "0.5000", "0.5000", "0.950", "0.5000", "0.5000", "0.950"]


def test_the_printed_table_says_how_many_images_each_set_gave():
    """A 600-image --against set was reported as "1000 images each"."""
    from pyro_vae.cli.anomaly import _anomaly_table

    metric = {"auroc": 0.5, "auprc": 0.5, "fpr_at_95_tpr": 0.95}
    report = {"against": ["mnist", "file:chars.npz"], "num_images": 1000, "num_samples": 2,
              "num_images_against": {"mnist": 1000, "file:chars.npz": 600},
              "scores": ["elbo"], "typicality": {},
              "metrics": {"mnist": {"elbo": metric}, "file:chars.npz": {"elbo": metric}}}
    assert _anomaly_table("fashion-mnist", report).splitlines()[0] == (
        "fashion-mnist (in) against mnist (1000 images), file:chars.npz (600 images); 1000 of "
        "its own, K=2")
    report["num_images_against"]["file:chars.npz"] = 1000
    assert "against mnist, file:chars.npz, 1000 images each" in _anomaly_table("x", report)


def test_fewest_reference_images_are_what_each_fitted_score_needs_of_its_half():
    from pyro_vae.anomaly import FITTED_SCORES, fewest_reference_images, reference_halves
    from pyro_vae.feature_score import MIN_FIT_IMAGES
    from pyro_vae.fisher import MIN_CALIBRATION_IMAGES

    assert set(FITTED_SCORES) == {"features", "dose", "knn", "fisher"}
    assert MIN_FIT_IMAGES == 3  # two images give Ledoit-Wolf no shrinkage: Σ of rank one
    for score, fit_needs, read_needs in (("dose", 10, 0), ("knn", 2, 0),
                                         ("features", MIN_FIT_IMAGES, 0),
                                         ("fisher", 0, MIN_CALIBRATION_IMAGES)):
        n = fewest_reference_images(score)
        fit, read = reference_halves(n)
        assert len(fit) >= fit_needs and len(read) >= read_needs
        fit, read = reference_halves(n - 1)  # one fewer is too few
        assert len(fit) < fit_needs or len(read) < read_needs


@pytest.mark.parametrize("content", ["null", "[]", "1", "{not json"])
def test_a_kept_models_stamp_that_is_not_a_table_is_refused_in_words(tmp_path, content):
    from pyro_vae.cli.anomaly import ExtraModel
    from pyro_vae.errors import ConfigError

    (tmp_path / "checkpoint.pt").write_bytes(b"")
    (tmp_path / "perturbation.json").write_text(content)
    kept = ExtraModel(tmp_path, "perturbation.json", {"rate": 0.2}, None, "background model",
                      "", lambda: None)
    with pytest.raises(ConfigError, match="missing or damaged"):
        kept.reusable()


def test_scores_that_are_not_finite_are_refused_naming_the_score_and_the_set():
    from pyro_vae.cli.anomaly import _refuse_non_finite
    from pyro_vae.errors import TrainingError

    fine = {"log-likelihood": torch.zeros(5), "_labels": torch.arange(5)}
    _refuse_non_finite({"the run's test images": fine, "mnist": fine})
    broken = {"regret": torch.tensor([0.0, float("nan"), float("inf"), 1.0])}
    with pytest.raises(TrainingError, match="regret on 2 of 4 images of mnist"):
        _refuse_non_finite({"the run's test images": fine, "mnist": broken})


@pytest.mark.slow
def test_an_interrupt_while_scoring_leaves_no_empty_output_folder(speckle_run, capsys,
                                                                   monkeypatch):
    from pyro_vae import anomaly

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(anomaly, "score_with_reference", interrupted)
    out = speckle_run / "interrupted"
    code = main(["anomaly", str(speckle_run / "run"), "--against",
                 f"file:{speckle_run / 'blank.npz'}", "--no-transformations", "--limit", "100",
                 "--out", str(out)])
    assert code != 0 and "Traceback" not in capsys.readouterr().err
    assert not out.exists()


def test_calibration_is_not_judged_where_a_score_that_never_flags_would_pass():
    from pyro_vae.anomaly import Reference, calibration

    generator = torch.Generator().manual_seed(0)
    for count, judged in ((4, False), (2000, True)):
        reference = Reference(None, None, {"s": torch.randn(count, generator=generator)})
        never = {"s": torch.full((count,), -1e9)}  # below every reference value: never flagged
        result = calibration(reference, never, 0.05)["s"]
        assert result["false_positive_rate"] == 0.0
        assert result["reliable"] is (False if judged else None)
