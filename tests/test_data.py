"""Datasets: the real files load with the published counts, and damage is a clear error."""

import gzip
import shutil

import numpy as np
import pytest
import torch

from pyro_vae.data import (binarize, binarize_fixed, is_binary, load_dataset, minibatches)
from pyro_vae.errors import DataError


def test_digits_are_embedded_and_split():
    data = load_dataset("digits", validation_fraction=0.1)
    total = len(data.train_x) + len(data.valid_x) + len(data.test_x)
    assert total == 1797 and data.image_shape == (1, 8, 8)
    assert data.train_x.min() >= 0 and data.train_x.max() == 1
    assert len(set(data.test_y.tolist())) == 10


@pytest.mark.parametrize("name,mean_train,mean_test", [
    ("mnist", 33.318, 33.791), ("fashion-mnist", 72.94, 73.147)])
@pytest.mark.slow
def test_idx_datasets_match_published_statistics(data_dir, name, mean_train, mean_test):
    data = load_dataset(name, str(data_dir), validation_fraction=0.0)
    assert data.train_x.shape == (60000, 784) and data.test_x.shape == (10000, 784)
    assert abs(float(data.train_x.mean()) * 255 - mean_train) < 0.01
    assert abs(float(data.test_x.mean()) * 255 - mean_test) < 0.01
    assert torch.bincount(data.test_y).tolist()[:1] == ([980] if name == "mnist" else [1000])


def test_validation_split_is_held_out_from_train(data_dir):
    data = load_dataset("mnist", str(data_dir), validation_fraction=1 / 6)
    assert (len(data.train_x), len(data.valid_x)) == (50000, 10000)


@pytest.mark.slow
def test_binarized_mnist_uses_the_official_splits(data_dir):
    data = load_dataset("binarized-mnist", str(data_dir))
    assert (len(data.train_x), len(data.valid_x), len(data.test_x)) == (50000, 10000, 10000)
    assert is_binary(data.test_x)


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("mnist", str(tmp_path / "nowhere"))


def test_corrupt_and_truncated_files_are_detected(tmp_path, data_dir):
    folder = tmp_path / "mnist"
    shutil.copytree(data_dir / "mnist", folder)
    target = folder / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-100])
    with pytest.raises(DataError, match="MD5"):
        load_dataset("mnist", str(tmp_path))
    # An extracted file that is truncated has no checksum to fail, but its header catches it.
    target.unlink()
    raw = gzip.decompress((data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (folder / "t10k-labels-idx1-ubyte").write_bytes(raw[:-10])
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", str(tmp_path))


def test_npz_shapes_dtypes_and_labels(tmp_path):
    images = (np.arange(50 * 16).reshape(50, 4, 4) % 256).astype(np.uint8)
    path = tmp_path / "mine.npz"
    np.savez(path, x=images, y=np.arange(50) % 3)
    data = load_dataset(f"file:{path}", validation_fraction=0.2)
    assert data.image_shape == (1, 4, 4) and float(data.train_x.max()) <= 1.0
    assert len(data.train_x) + len(data.valid_x) + len(data.test_x) == 50
    np.savez(path, x=images.reshape(50, 16).astype(np.float32) / 255)
    assert load_dataset(f"file:{path}").image_shape == (1, 4, 4)


@pytest.mark.parametrize("arrays,match", [
    ({"images": np.zeros((5, 4))}, "no array 'x'"),
    ({"x": np.zeros(5)}, "shape"),
    ({"x": np.full((5, 4), np.nan)}, "NaN"),
    ({"x": np.zeros((5, 4)), "y": np.zeros(4, dtype=int)}, "labels"),
])
def test_bad_npz_is_a_clear_error(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match):
        load_dataset(f"file:{path}")


def test_dynamic_binarization_draws_afresh_with_the_right_mean():
    torch.manual_seed(0)
    x = torch.rand(2000, 64)
    first, second = binarize(x), binarize(x)
    assert is_binary(first) and not torch.equal(first, second)
    # Each pixel is Bernoulli(x): the mean difference has standard error ~ sqrt(0.25 / n).
    assert abs(float((first - x).mean())) < 4 * (0.25 / x.numel()) ** 0.5


def test_fixed_binarization_is_the_same_every_time():
    data = load_dataset("digits")
    a, b = binarize_fixed(data, ("test",)), binarize_fixed(data, ("test",))
    assert torch.equal(a.test_x, b.test_x) and is_binary(a.test_x)
    assert torch.equal(a.train_x, data.train_x)


def test_minibatches_cover_every_index_once():
    seen = torch.cat(list(minibatches(103, 10, "cpu")))
    assert sorted(seen.tolist()) == list(range(103))


def test_a_file_that_is_not_an_array_is_refused_without_numpys_pickle_hint(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("these are not images")
    with pytest.raises(DataError, match="neither an .npz archive nor a .npy array") as error:
        load_dataset(f"file:{path}")
    assert "pickle" not in str(error.value)  # numpy's hint would have the user load code


def test_colour_images_stored_channels_last_are_read_as_channels_first(tmp_path):
    # N×H×W×3, as image files hold colour, was read as H channels of W×3 images.
    generator = np.random.default_rng(0)
    rgb = generator.integers(0, 256, size=(30, 8, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x=rgb)
    data = load_dataset(f"file:{tmp_path / 'rgb.npz'}", validation_fraction=0.0)
    assert data.image_shape == (3, 8, 6)
    rows = np.concatenate([data.train_x.numpy(), data.test_x.numpy()])
    assert len(rows) == 30
    # Every pixel keeps its colour: channel c of an image is rgb[..., c].
    stored = rgb.transpose(0, 3, 1, 2).reshape(30, -1) / 255.0
    assert all(np.abs(stored - row).max(axis=1).min() < 1e-6 for row in rows)
    np.savez(tmp_path / "first.npz", x=rgb.transpose(0, 3, 1, 2))  # channels first: unchanged
    assert load_dataset(f"file:{tmp_path / 'first.npz'}").image_shape == (3, 8, 6)
