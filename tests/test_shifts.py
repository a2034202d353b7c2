"""Shifted copies of a run's own test images (pyro_vae.shifts, `anomaly --against shift:NAME`):
each shift does what its name says on hand-made images, stays in [0, 1], is the same set every
time, and a shift these images cannot take is refused in words."""

import json

import numpy as np
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.errors import ConfigError
from pyro_vae.shifts import SHIFTS, shift_name, shifted

from helpers import QUICK_TRAIN, run_cli


def _images(count=6, shape=(1, 8, 8), seed=1):  # not the shifts' own seed (noise)
    return torch.rand(count, int(np.prod(shape)), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(SHIFTS))
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 10, 10)])
def test_every_shift_keeps_the_shape_stays_in_the_unit_interval_and_repeats(name, shape):
    x = _images(shape=shape)
    once = shifted(name, x, shape)
    assert once.shape == x.shape and once.min() >= 0 and once.max() <= 1
    assert torch.equal(once, shifted(name, x, shape))  # the same set every time
    assert not torch.equal(once, x)


def test_the_geometric_shifts_on_hand_made_images():
    shape = (1, 4, 4)
    x = torch.arange(16.0).reshape(1, 16) / 15
    square = x.reshape(4, 4)
    assert torch.equal(shifted("upside-down", x, shape).reshape(4, 4), square.flip(0))
    assert torch.equal(shifted("mirrored", x, shape).reshape(4, 4), square.flip(1))
    turned = x
    for _ in range(4):
        turned = shifted("rotated", turned, shape)
    assert torch.equal(turned, x)  # four quarter turns
    assert torch.equal(shifted("inverted", x, shape), 1 - x)
    assert torch.equal(shifted("faint", x, shape), x / 2)
    assert sorted(shifted("pixel-shuffled", x, shape)[0].tolist()) == sorted(x[0].tolist())


def test_translation_moves_by_a_seventh_of_the_side_and_fills_with_blank():
    shape = (1, 28, 28)
    x = torch.zeros(40, 784)
    x.reshape(40, 28, 28)[:, 12:16, 12:16] = 1.0  # a square in the middle
    moved = shifted("translated", x, shape).reshape(40, 28, 28)
    for image in moved:
        rows, columns = torch.nonzero(image, as_tuple=True)
        assert image.sum() == 16
        assert {int(rows.min()) - 12, int(columns.min()) - 12} <= {-4, 0, 4}
        assert (int(rows.min()), int(columns.min())) != (12, 12)


def test_mixtures_average_two_images_and_constant_images_are_all_zero_or_one():
    x = _images()
    mixed = shifted("mixtures", x, (1, 8, 8))
    assert torch.allclose(mixed.mean(), x.mean(), atol=1e-6)  # a permutation of partners
    constant = shifted("constant", x, (1, 8, 8))
    assert [set(row.tolist()) for row in constant] == [{0.0}, {1.0}] * 3


def test_shifts_these_images_cannot_take_are_refused_in_words():
    assert shift_name("shift:rotated") == "rotated" and shift_name("mnist") is None
    with pytest.raises(ConfigError, match="not square"):
        shifted("rotated", torch.zeros(2, 8 * 12), (1, 8, 12))
    with pytest.raises(ConfigError, match="even sides"):
        shifted("crops", torch.zeros(2, 49), (1, 7, 7))
    with pytest.raises(ConfigError, match="is not a shift; choose from shift:rotated"):
        shifted("upsidedown", torch.zeros(2, 64), (1, 8, 8))
    with pytest.raises(ConfigError, match="'shift:' is not a shift"):
        shifted("", torch.zeros(2, 64), (1, 8, 8))
    # A shift that changes nothing would score a set against itself (AUROC 0.5, silently).
    with pytest.raises(ConfigError, match="leaves these 1×10 images as they are"):
        shifted("upside-down", torch.rand(4, 10), (1, 1, 10))
    # Real values: the shift's clamp to [0, 1] would be all the difference.
    with pytest.raises(ConfigError, match="real-valued data"):
        shifted("mirrored", torch.randn(4, 64), (1, 8, 8))


@pytest.mark.slow
def test_anomaly_scores_the_runs_test_images_against_their_shifted_copies(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "out"
    assert main(["train", "--out", str(run), *QUICK_TRAIN]) == 0
    code, printed, _ = run_cli(capsys, "anomaly", run, "--against", "shift:inverted",
                               "shift:upside-down", "--no-transformations", "--limit", "100",
                               "--num-samples", "5", "--regret-steps", "2", "--regret-draws",
                               "2", "--out", out)
    assert code == 0 and "vs shift:inverted" in printed
    report = json.loads((out / "anomaly.json").read_text())
    assert report["metrics"]["shift:inverted"]["log-likelihood"]["auroc"] > 0.95
    for name in ("shift:sideways", "shift:"):  # the empty name was read as an import path
        code, _, err = run_cli(capsys, "anomaly", run, "--against", name,
                               "--out", tmp_path / "refused")
        assert code == 2 and "is not a shift" in err and not (tmp_path / "refused").exists()
    # One score alone, typicality, crashed when the verdicts were compared (no per-image score).
    code, _, _ = run_cli(capsys, "anomaly", run, "--against", "shift:noise", "--score",
                         "typicality", "--limit", "100", "--num-samples", "5", "--out", out)
    assert code == 0 and json.loads((out / "anomaly.json").read_text())["typicality"]
