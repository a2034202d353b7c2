"""The transformation-prediction score (Golan & El-Yaniv 2018): its transformations, its
classifier and its score."""

import pytest
import torch

from pyro_vae.errors import ConfigError
from pyro_vae.transformation_score import (TransformationClassifier, check_image_shape,
                                           train_transformation_classifier,
                                           transformation_scores, transformations, translate)


def test_the_papers_72_transformations_are_distinct_and_start_with_the_identity():
    found = transformations(28)
    assert len(found) == 72
    assert {t.rows for t in found} == {0, -7, 7} == {t.columns for t in found}
    image = torch.rand(1, 1, 28, 28)
    assert torch.equal(found[0](image), image)
    outputs = torch.stack([t(image).flatten() for t in found])
    assert len(torch.unique(outputs, dim=0)) == 72


def test_a_translation_moves_the_image_and_reflects_at_the_border():
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    down = translate(image, 1, 0)[0, 0]
    assert torch.equal(down[1:], image[0, 0, :3])  # moved down by one row
    assert torch.equal(down[0], image[0, 0, 1])  # the uncovered row reflected
    left = translate(image, 0, -2)[0, 0]
    assert torch.equal(left[:, :2], image[0, 0, :, 2:])


def test_four_quarter_turns_and_two_flips_are_the_identity():
    image = torch.rand(3, 1, 8, 8)
    turn = next(t for t in transformations(8)
                if t.quarter_turns == 1 and not t.flip and not t.rows and not t.columns)
    flip = next(t for t in transformations(8)
                if t.flip and not t.quarter_turns and not t.rows and not t.columns)
    assert torch.equal(turn(turn(turn(turn(image)))), image)
    assert torch.equal(flip(flip(image)), image)
    assert not torch.equal(turn(image), image)


@pytest.mark.parametrize("shape", [(1, 28, 20), (1, 4, 4)])
def test_images_that_cannot_be_turned_are_refused_in_words(shape):
    with pytest.raises(ConfigError, match="square images"):
        check_image_shape(shape)
    with pytest.raises(ConfigError, match="square images"):
        train_transformation_classifier(torch.zeros(4, shape[1] * shape[2]), shape)


def _corner_shapes(count: int, generator: torch.Generator) -> torch.Tensor:
    """Images of an upright 'L' of random size and place: orientation and position show."""
    images = torch.zeros(count, 16, 16)
    for n in range(count):
        height, width = torch.randint(5, 9, (2,), generator=generator).tolist()
        row, column = torch.randint(3, 16 - 8, (2,), generator=generator).tolist()
        images[n, row: row + height, column] = 1.0
        images[n, row + height - 1, column: column + width] = 1.0
    return images.reshape(count, -1)


def test_the_classifier_learns_the_transformations_and_scores_other_shapes_higher():
    generator = torch.Generator().manual_seed(0)
    normal = _corner_shapes(1200, generator)
    classifier = train_transformation_classifier(normal[:1000], (1, 16, 16), epochs=10, seed=0)
    assert isinstance(classifier, TransformationClassifier) and classifier.count == 72
    held_out = transformation_scores(classifier, normal[1000:])
    # Other images: dots at random, whose orientation and position cannot be read.
    noise = (torch.rand(200, 256, generator=generator) < 0.05).float()
    anomalous = transformation_scores(classifier, noise)
    assert held_out.shape == (200,) and held_out.dtype == torch.float64
    assert torch.all((held_out <= 0) & (held_out >= -1))
    # Right far more often than by chance (1/72) on unseen in-distribution shapes...
    assert -held_out.mean() > 0.2
    # ... and the shapes' scores below the dots' for most pairs (AUROC of the score).
    auroc = (anomalous[:, None] > held_out[None, :]).double().mean()
    assert auroc > 0.9


def test_training_is_reproducible_by_seed():
    generator = torch.Generator().manual_seed(1)
    images = _corner_shapes(256, generator)
    first = train_transformation_classifier(images, (1, 16, 16), epochs=1, seed=3)
    second = train_transformation_classifier(images, (1, 16, 16), epochs=1, seed=3)
    assert torch.equal(transformation_scores(first, images[:20]),
                       transformation_scores(second, images[:20]))


def test_the_command_lines_default_passes_are_the_modules():
    from pyro_vae.cli.anomaly import TRANSFORMATION_EPOCHS
    from pyro_vae.transformation_score import DEFAULT_EPOCHS

    assert TRANSFORMATION_EPOCHS == DEFAULT_EPOCHS


def test_score_images_needs_the_classifier():
    from pyro_vae.anomaly import ScoreSettings, score_images
    from pyro_vae.models import build_vae
    from helpers import model_config

    shape = (1, 8, 8)
    vae = build_vae(model_config(hidden_dims=[8], latent_dim=2), shape)
    with pytest.raises(ValueError, match="classifier"):
        score_images(vae, torch.zeros(2, 64), shape, ("transformations",),
                     ScoreSettings(num_samples=2))


def _noise_file(tmp_path, shape=(8, 8)):
    import numpy as np

    path = tmp_path / "noise.npz"
    np.savez(path, x=np.random.default_rng(0).random((60, *shape)).astype(np.float32))
    return path


@pytest.fixture
def digits_run(tmp_path):
    from pyro_vae.training import train
    from helpers import three_epoch_config

    run = tmp_path / "run"
    train(three_epoch_config(), run, progress=None)
    return run


@pytest.mark.slow
def test_anomaly_trains_the_classifier_once_and_the_verdict_combines_it(tmp_path, capsys,
                                                                         digits_run):
    """The default verdict trains the classifier into OUT/transformations (with progress
    lines), scores with it, combines it, and reuses it next time."""
    import json

    from helpers import run_cli

    noise = _noise_file(tmp_path)
    out = tmp_path / "anomaly"
    arguments = ("anomaly", digits_run, "--against", f"file:{noise}",
                 "--transformation-epochs", 2, "--score", "log-likelihood", "--score",
                 "fisher", "--limit", 60, "--num-samples", 2, "--regret-steps", 2,
                 "--regret-draws", 2, "--out", out)
    code, printed, err = run_cli(capsys, *arguments)
    assert code == 0, err
    assert "training the transformation classifier" in printed
    assert "pass 2/2, cross-entropy" in printed
    stamp = json.loads((out / "transformations" / "transformations.json").read_text())
    assert stamp["epochs"] == 2 and stamp["transformations"] == 72 and stamp["seed"] == 0
    assert stamp["image_shape"] == [1, 8, 8] and stamp["binarization"] == "dynamic"
    report = json.loads((out / "anomaly.json").read_text())
    for score in ("transformations", "features"):  # both read the classifier
        assert score in report["scores"] and score in report["fisher_parts"]
        assert 0.0 <= report["metrics"][f"file:{noise}"][score]["auroc"] <= 1.0
    assert report["transformations"]["epochs"] == 2
    kept = (out / "transformations" / "classifier.pt").read_bytes()
    code, printed, err = run_cli(capsys, *arguments)
    assert code == 0, err
    assert "reusing the transformation classifier" in printed
    assert (out / "transformations" / "classifier.pt").read_bytes() == kept
    again = json.loads((out / "anomaly.json").read_text())
    assert again["metrics"] == report["metrics"]  # the same classifier, the same scores


@pytest.mark.slow
def test_a_classifier_of_other_settings_or_a_file_in_its_place_is_refused(tmp_path, capsys,
                                                                         digits_run):
    from helpers import run_cli

    noise = _noise_file(tmp_path)
    out = tmp_path / "anomaly"
    common = ("anomaly", digits_run, "--against", f"file:{noise}", "--score", "transformations",
              "--limit", 60, "--num-samples", 2, "--out", out)
    code, _, err = run_cli(capsys, *common, "--transformation-epochs", 1)
    assert code == 0, err
    kept = (out / "transformations" / "classifier.pt").read_bytes()
    code, printed, err = run_cli(capsys, *common, "--transformation-epochs", 2)
    assert code == 2 and "other settings (epochs 1 there, 2 now)" in err
    assert "training the transformation classifier" not in printed
    assert (out / "transformations" / "classifier.pt").read_bytes() == kept
    # An interrupted training (no stamp) and a file in the folder's place.
    (out / "transformations" / "transformations.json").unlink()
    code, _, err = run_cli(capsys, *common, "--transformation-epochs", 1)
    assert code == 2 and "interrupted" in err
    other = tmp_path / "other"
    other.mkdir()
    (other / "transformations").write_text("not a classifier")
    code, _, err = run_cli(capsys, "anomaly", digits_run, "--against", f"file:{noise}",
                           "--score", "fisher", "--limit", 60, "--out", other)
    assert code == 2 and "is a file" in err
    assert (other / "transformations").read_text() == "not a classifier"


def test_bad_passes_are_refused_in_words(tmp_path, capsys):
    from helpers import run_cli

    code, _, err = run_cli(capsys, "anomaly", tmp_path / "missing", "--against", "noise",
                           "--transformation-epochs", 0)
    assert code == 2 and "--transformation-epochs must be a positive integer" in err
    code, _, err = run_cli(capsys, "anomaly", tmp_path / "missing", "--against", "noise",
                           "--score", "transformations", "--no-transformations")
    assert code == 2 and "contradict" in err
    code, _, err = run_cli(capsys, "anomaly", tmp_path / "missing", "--against", "noise",
                           "--score", "features", "--no-transformations")
    assert code == 2 and "--score features reads the transformation classifier" in err
    code, _, err = run_cli(capsys, "anomaly", tmp_path / "missing", "--against", "noise",
                           "--transformation-epochs", 3, "--no-transformations")
    assert code == 2 and "give one of them" in err


@pytest.mark.slow
def test_no_transformations_leaves_the_score_and_its_classifier_out(tmp_path, capsys,
                                                                     digits_run):
    import json

    from helpers import run_cli

    noise = _noise_file(tmp_path)
    out = tmp_path / "anomaly"
    code, printed, err = run_cli(capsys, "anomaly", digits_run, "--against", f"file:{noise}",
                                 "--score", "fisher", "--no-transformations", "--limit", 60,
                                 "--num-samples", 2, "--regret-steps", 2, "--regret-draws", 2,
                                 "--out", out)
    assert code == 0, err
    report = json.loads((out / "anomaly.json").read_text())
    assert not {"transformations", "features"} & set(report["scores"])
    assert not {"transformations", "features"} & set(report["fisher_parts"])
    assert report["transformations"] is None and not (out / "transformations").exists()


@pytest.mark.parametrize("content", [b"", b"garbage, not a checkpoint", "list"])
def test_a_damaged_classifier_file_is_refused_with_what_is_wrong(tmp_path, content):
    from pyro_vae.transformation_score import load_classifier

    path = tmp_path / "classifier.pt"
    if content == "list":
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="not a saved classifier"):
        load_classifier(path)


def test_a_saved_classifier_scores_as_before_and_seeds_leave_the_global_stream_alone():
    from pyro_vae.transformation_score import load_classifier, save_classifier

    generator = torch.Generator().manual_seed(2)
    images = _corner_shapes(128, generator)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    classifier = train_transformation_classifier(images, (1, 16, 16), epochs=1, seed=5)
    assert torch.equal(torch.rand(3), expected)  # training drew nothing from the global stream
    other = train_transformation_classifier(images, (1, 16, 16), epochs=1, seed=6)
    assert not torch.equal(transformation_scores(classifier, images[:20]),
                           transformation_scores(other, images[:20]))
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "classifier.pt"
        save_classifier(classifier, path)
        assert torch.equal(transformation_scores(load_classifier(path), images[:20]),
                           transformation_scores(classifier, images[:20]))


@pytest.mark.slow
def test_a_damaged_kept_classifier_or_stamp_is_refused_in_words(tmp_path, capsys, digits_run):
    from helpers import run_cli

    noise = _noise_file(tmp_path)
    out = tmp_path / "anomaly"
    common = ("anomaly", digits_run, "--against", f"file:{noise}", "--score", "transformations",
              "--limit", 60, "--num-samples", 2, "--transformation-epochs", 1, "--out", out)
    code, _, err = run_cli(capsys, *common)
    assert code == 0, err
    kept = out / "transformations"
    stamp = (kept / "transformations.json").read_text()
    (kept / "classifier.pt").write_bytes(b"")
    code, _, err = run_cli(capsys, *common)
    assert code == 2 and "cannot be read" in err and "remove" in err
    (kept / "transformations.json").write_text("[1, 2]")
    code, _, err = run_cli(capsys, *common)
    assert code == 2 and "is damaged" in err
    assert (kept / "transformations.json").read_text() == "[1, 2]"  # nothing overwritten
    assert stamp  # the first call wrote one


def test_a_failed_training_leaves_no_half_written_classifier(tmp_path, capsys, digits_run,
                                                             monkeypatch):
    import pyro_vae.transformation_score as module
    from helpers import run_cli

    def fail(*args, **kwargs):
        raise ConfigError("the classifier could not be trained (a test's failure)")

    monkeypatch.setattr(module, "train_transformation_classifier", fail)
    noise = _noise_file(tmp_path)
    out = tmp_path / "anomaly"
    code, _, err = run_cli(capsys, "anomaly", digits_run, "--against", f"file:{noise}",
                           "--score", "transformations", "--limit", 60, "--out", out)
    assert code == 2 and "could not be trained" in err
    assert not (out / "transformations").exists()


@pytest.mark.slow
def test_images_that_cannot_be_turned_leave_the_score_out_or_are_refused_by_name(tmp_path,
                                                                              capsys):
    """A run on 8×6 images: the default scores go on without the transformation score (a
    note says why); asked for by name, it is refused in words."""
    import json

    import numpy as np

    from pyro_vae.config import Config
    from pyro_vae.training import train
    from helpers import run_cli

    rng = np.random.default_rng(0)
    wide = tmp_path / "wide.npz"
    np.savez(wide, x=(rng.random((800, 8, 6)) < 0.3).astype(np.float32),
             x_test=(rng.random((80, 8, 6)) < 0.3).astype(np.float32))
    run = tmp_path / "run"
    train(Config().with_overrides({
        "data": {"dataset": f"file:{wide}"},
        "model": {"hidden_dims": [16], "latent_dim": 2},
        "train": {"epochs": 1, "batch_size": 64},
        "evaluate": {"num_samples": 2, "latent_map": "pca"}}), run, progress=None)
    other = tmp_path / "other.npz"
    np.savez(other, x=rng.random((60, 8, 6)).astype(np.float32))
    common = ("anomaly", run, "--against", f"file:{other}", "--limit", 60, "--num-samples", 2,
              "--regret-steps", 2, "--regret-draws", 2)
    code, _, err = run_cli(capsys, *common, "--out", tmp_path / "out")
    assert code == 0, err
    assert "no transformation or feature score for these images" in err and "8×6" in err
    report = json.loads((tmp_path / "out" / "anomaly.json").read_text())
    assert not {"transformations", "features"} & set(report["scores"])
    assert "fisher" in report["scores"]
    code, _, err = run_cli(capsys, *common, "--score", "transformations", "--out",
                           tmp_path / "refused")
    assert code == 2 and "square images" in err and "Leave out --score transformations" in err
    assert not (tmp_path / "refused").exists()
    code, _, err = run_cli(capsys, *common, "--score", "features", "--out",
                           tmp_path / "refused")
    assert code == 2 and "Leave out --score features" in err
    assert not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_the_feature_score_alone_trains_the_classifier_it_reads(tmp_path, capsys, digits_run):
    import json

    from helpers import run_cli

    noise = _noise_file(tmp_path)
    out = tmp_path / "anomaly"
    code, printed, err = run_cli(capsys, "anomaly", digits_run, "--against", f"file:{noise}",
                                 "--score", "features", "--transformation-epochs", 1,
                                 "--limit", 60, "--num-samples", 2, "--out", out)
    assert code == 0, err
    assert "training the transformation classifier" in printed
    report = json.loads((out / "anomaly.json").read_text())
    assert report["scores"] == ["features"]
    assert report["features"] == {"fit_images": 30, "dimensions": 128}
    assert 0.0 <= report["metrics"][f"file:{noise}"]["features"]["auroc"] <= 1.0


def test_a_loss_that_is_not_finite_stops_the_classifier_in_words():
    from pyro_vae.errors import TrainingError

    images = torch.rand(64, 64)
    images[3] = float("nan")  # a whole image: no translation moves it out of view
    with pytest.raises(TrainingError, match="loss became nan in pass 1"):
        train_transformation_classifier(images, (1, 8, 8), epochs=1)
