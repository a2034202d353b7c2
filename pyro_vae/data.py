"""Datasets, binarization and device-resident minibatches.

Every dataset arrives as :class:`ImageData`: float tensors of flattened images in [0, 1] (or any
real values for a user's ``.npz`` with a Gaussian likelihood), split into train, validation and
test, with integer labels where the data has them. Small datasets live on the training device
whole and minibatches are index selections, not a per-sample ``DataLoader``.

Sources:

* ``digits`` — the 1,797 8×8 handwritten digits that scikit-learn ships (UCI optical
  recognition of handwritten digits), intensities 0–16 scaled to [0, 1]. No download.
* ``mnist`` / ``fashion-mnist`` — the IDX files (``.gz`` or extracted) from the data directory,
  MD5-checked against torchvision's list; torchvision downloads them on request.
* ``binarized-mnist`` — Larochelle & Murray's fixed binarization (``.amat``, 50k/10k/10k).
* ``file:PATH.npz`` — array ``x`` (N×D, N×H×W or N×C×H×W; uint8 is divided by 255), optional
  ``y``, optional ``x_test``/``y_test``. N×D rows are vectors (image shape ``(1, 1, D)``)
  unless D is a square of side 4 or more (then H = W = √D, as a flattened MNIST). Complex
  values and arrays with no values per datapoint are refused.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from pyro_vae.errors import DataError
from pyro_vae.registry import DATASETS

DATA_DIR_ENV = "PYRO_VAE_DATA_DIR"
#: Seed of the fixed splits and of the one binarization draw of validation and test data, so
#: that every run of a recipe is scored on the same binary test set.
SPLIT_SEED = 20160201

_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_TORCHVISION_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


#: An N×D ``.npz`` array whose D is a square of a side at least this is read as images.
MIN_IMAGE_SIDE = 4


def is_vector_shape(image_shape: tuple[int, ...]) -> bool:
    """Whether data of this shape are D-dimensional vectors (stored as ``(1, 1, D)``)."""
    return len(image_shape) == 3 and image_shape[0] == 1 and image_shape[1] == 1


def data_shape(image_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of one datapoint as the user gave it: ``(D,)`` for vectors, else ``(C, H, W)``."""
    return (image_shape[2],) if is_vector_shape(image_shape) else tuple(image_shape)


@dataclass
class ImageData:
    """Flattened images in three splits; ``*_y`` are ``None`` for unlabelled data."""

    name: str
    image_shape: tuple[int, int, int]
    train_x: torch.Tensor
    train_y: torch.Tensor | None
    valid_x: torch.Tensor
    valid_y: torch.Tensor | None
    test_x: torch.Tensor
    test_y: torch.Tensor | None
    #: The grey images of the splits that were binarized once (``binarize_fixed``), by split
    #: name ("train", "validation", "test"): what a classifier of the images reads.
    intensities: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_pixels(self) -> int:
        c, h, w = self.image_shape
        return c * h * w

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if name == "train":
            return self.train_x, self.train_y
        if name == "validation":
            return self.valid_x, self.valid_y
        if name == "test":
            return self.test_x, self.test_y
        raise DataError(f"unknown split {name!r}; use train, validation or test.")

    def grey(self, name: str) -> torch.Tensor:
        """A split's images as loaded, before any binarization (M2's classifier reads these)."""
        return self.intensities[name] if name in self.intensities else self.split(name)[0]

    def to(self, device: torch.device | str) -> "ImageData":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, **{k: move(getattr(self, k)) for k in
                                ("train_x", "train_y", "valid_x", "valid_y", "test_x", "test_y")},
                       intensities={k: move(v) for k, v in self.intensities.items()})


def resolve_data_dir(data_dir: str | None) -> Path:
    """The data directory: the given one, else ``$PYRO_VAE_DATA_DIR``, else ``./data``."""
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or "data")


def load_dataset(name: str, data_dir: str | None = None, validation_fraction: float = 0.1,
                 download: bool = False) -> ImageData:
    """Load a dataset by name (see the module docstring) with a validation split held out."""
    if name == "digits":
        train_x, train_y, test_x, test_y, shape = _load_digits()
    elif name in _TORCHVISION_NAMES:
        train_x, train_y, test_x, test_y, shape = _load_idx_dataset(
            name, resolve_data_dir(data_dir), download)
    elif name == "binarized-mnist":
        return _load_binarized_mnist(resolve_data_dir(data_dir), validation_fraction)
    elif name.startswith("file:"):
        train_x, train_y, test_x, test_y, shape = _load_npz(Path(name[len("file:"):]))
    elif name in DATASETS:  # a plugin's dataset: (train_x, train_y, test_x, test_y, shape)
        train_x, train_y, test_x, test_y, shape = DATASETS.get(name)(
            resolve_data_dir(data_dir), download)
    else:
        raise DataError(f"unknown dataset {name!r}; use {', '.join(DATASETS.choices())} or "
                        "file:PATH.npz.")
    train_x, train_y, valid_x, valid_y = _hold_out(train_x, train_y, validation_fraction)
    for split, values in (("training", train_x), ("test", test_x)):
        if len(values) == 0:
            raise DataError(f"dataset {name!r} leaves the {split} split empty ({len(train_x)} "
                            f"training, {len(valid_x)} validation, {len(test_x)} test images); "
                            "give more images or a smaller validation_fraction.")
    return ImageData(name, shape, train_x, train_y, valid_x, valid_y, test_x, test_y)


def _hold_out(x: torch.Tensor, y: torch.Tensor | None, fraction: float):
    """Split off the last ``fraction`` of a fixed permutation as validation data."""
    num_valid = int(round(fraction * len(x)))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    keep, valid = order[: len(x) - num_valid], order[len(x) - num_valid:]
    pick = lambda t, i: None if t is None else t[i]  # noqa: E731
    return x[keep], pick(y, keep), x[valid], pick(y, valid)


def _fixed_test_split(x: torch.Tensor, y: torch.Tensor | None, fraction: float = 0.2):
    train_x, train_y, test_x, test_y = _hold_out(x, y, fraction)
    return train_x, train_y, test_x, test_y


def _load_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    return (*_fixed_test_split(x, y), (1, 8, 8))


# --- MNIST and Fashion-MNIST -------------------------------------------------------------------

def _idx_candidates(root: Path, name: str) -> list[Path]:
    return [root / name, root / _TORCHVISION_NAMES[name] / "raw", root]


def _find_idx_folder(root: Path, name: str) -> Path | None:
    for folder in _idx_candidates(root, name):
        stem = _IDX_FILES["train_x"]
        if (folder / (stem + ".gz")).exists() or (folder / stem).exists():
            return folder
    return None


def _load_idx_dataset(name: str, root: Path, download: bool):
    folder = _find_idx_folder(root, name)
    if folder is None and download:
        folder = _download_with_torchvision(name, root)
    if folder is None:
        where = ", ".join(str(p) for p in _idx_candidates(root, name))
        raise DataError(
            f"the {name} files (train-images-idx3-ubyte.gz and three more) were not found in "
            f"the data directory {root} (looked in {where}). Point --data-dir (or "
            f"${DATA_DIR_ENV}) at the folder that holds them, or add --download to fetch them "
            "with torchvision where the network allows."
        )
    checksums = _torchvision_md5s(name)
    arrays = {key: _read_idx(folder, stem, checksums) for key, stem in _IDX_FILES.items()}
    if len(arrays["train_x"]) != len(arrays["train_y"]) or len(arrays["test_x"]) != len(
            arrays["test_y"]):
        raise DataError(f"the {name} image and label files in {folder} hold different numbers "
                        "of items; replace them with the original files.")
    to_x = lambda a: torch.from_numpy(a.reshape(len(a), -1).astype(np.float32) / 255.0)  # noqa
    to_y = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    return (to_x(arrays["train_x"]), to_y(arrays["train_y"]), to_x(arrays["test_x"]),
            to_y(arrays["test_y"]), (1, 28, 28))


def _torchvision_md5s(name: str) -> dict[str, str]:
    import torchvision.datasets as tvd

    cls = getattr(tvd, _TORCHVISION_NAMES[name])
    return {filename: md5 for _, filename, md5 in
            ((None, *resource) if len(resource) == 2 else resource
             for resource in cls.resources)}


def _download_with_torchvision(name: str, root: Path) -> Path:
    import torchvision.datasets as tvd

    cls = getattr(tvd, _TORCHVISION_NAMES[name])
    try:
        cls(str(root), train=True, download=True)
    except Exception as error:  # network errors come in many types
        raise DataError(f"downloading {name} into {root} failed ({error}). Copy the four "
                        f"IDX .gz files into {root / name} by hand and run again.") from None
    return root / _TORCHVISION_NAMES[name] / "raw"


def _read_idx(folder: Path, stem: str, checksums: dict[str, str]) -> np.ndarray:
    gz_path, raw_path = folder / (stem + ".gz"), folder / stem
    path = gz_path if gz_path.exists() else raw_path
    if not path.exists():
        raise DataError(f"{gz_path} is missing; the data directory needs all four IDX files "
                        "(images and labels, train and t10k).")
    blob = path.read_bytes()
    if path == gz_path:
        expected = checksums.get(gz_path.name)
        if expected and hashlib.md5(blob).hexdigest() != expected:
            raise DataError(f"{path} is corrupt or not the original file (its MD5 is not "
                            f"{expected}). Delete it and copy or download it again.")
        try:
            blob = gzip.decompress(blob)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{path} is not a readable gzip file ({error}); replace it.") from None
    return _parse_idx(blob, path)


def _parse_idx(blob: bytes, path: Path) -> np.ndarray:
    if len(blob) < 8 or blob[0] != 0 or blob[1] != 0 or blob[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes; replace it.")
    ndim = blob[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(blob[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(blob) != header + int(np.prod(dims)):
        raise DataError(f"{path} is truncated or padded (its header promises {dims}); "
                        "replace it with the original file.")
    return np.frombuffer(blob, dtype=np.uint8, offset=header).reshape(dims)


# --- Larochelle's binarized MNIST --------------------------------------------------------------

def _load_binarized_mnist(root: Path, validation_fraction: float) -> ImageData:
    folder = root / "binarized-mnist"
    splits = {s: _read_amat(folder, f"binarized_mnist_{s}.amat") for s in
              ("train", "valid", "test")}
    train, valid = splits["train"], splits["valid"]
    if validation_fraction == 0:
        train, valid = torch.cat([train, valid]), valid[:0]
    return ImageData("binarized-mnist", (1, 28, 28), train, None, valid, None,
                     splits["test"], None)


def _read_amat(folder: Path, filename: str) -> torch.Tensor:
    for path in (folder / (filename + ".gz"), folder / filename):
        if path.exists():
            break
    else:
        raise DataError(f"{folder / filename}(.gz) was not found. Point --data-dir (or "
                        f"${DATA_DIR_ENV}) at the folder that holds binarized-mnist/.")
    try:
        blob = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path} is not a readable gzip file ({error}); replace it.") from None
    row = 2 * 784  # "0 1 0 ... 1\n": a digit and a separator per pixel
    chars = np.frombuffer(blob, dtype=np.uint8)
    if len(chars) % row or not np.all(np.isin(chars.reshape(-1, row)[:, ::2], (48, 49))):
        raise DataError(f"{path} is not in the .amat layout (rows of 784 space-separated 0/1 "
                        "values); replace it with the original file.")
    pixels = chars.reshape(-1, row)[:, ::2] - 48
    return torch.from_numpy(pixels.astype(np.float32))


# --- a user's own .npz -------------------------------------------------------------------------

def _load_npz(path: Path):
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; give file:PATH.npz with an array 'x'.") from None
    except (ValueError, OSError, zlib.error) as error:
        # numpy reads any file that is not an array as a pickle, which is never loaded here;
        # its hint to allow pickles would point the user at running the file's code.
        why = ("it is neither an .npz archive nor a .npy array" if "pickle" in str(error) else
               str(error))
        raise DataError(f"{path} is not a readable .npz archive ({why}); save the images "
                        "with numpy.savez(path, x=images, y=labels).") from None
    if not hasattr(archive, "files"):
        raise DataError(f"{path} holds a single array, not an .npz archive; save it with "
                        "numpy.savez(path, x=images, y=labels).")
    if "x" not in archive:
        raise DataError(f"{path} has no array 'x' (it has {sorted(archive.files)}); save the "
                        "images as x (N×D, N×H×W or N×C×H×W) and labels, if any, as y.")
    x, shape = _npz_images(_npz_array(archive, "x", path), path, "x")
    y = _npz_labels(archive, "y", len(x), path)
    if "x_test" in archive:
        test_x, test_shape = _npz_images(_npz_array(archive, "x_test", path), path, "x_test")
        if test_shape != shape:
            raise DataError(f"{path}: x_test images are {test_shape}, x images are {shape}.")
        test_y = _npz_labels(archive, "y_test", len(test_x), path)
        return x, y, test_x, test_y, shape
    return (*_fixed_test_split(x, y), shape)


def _npz_array(archive, key: str, path: Path) -> np.ndarray:
    try:
        return archive[key]
    except (ValueError, OSError, zlib.error) as error:
        raise DataError(f"{path}: array {key!r} cannot be read ({error}); store plain numeric "
                        "arrays (no Python objects).") from None


#: The channel counts of images (grey, grey with alpha, RGB, RGBA): a 4-d array whose last axis
#: has one of these sizes and whose second has none is read as N×H×W×C, channels last.
CHANNEL_COUNTS = (1, 2, 3, 4)


def _npz_images(array: np.ndarray, path: Path, key: str):
    if array.ndim not in (2, 3, 4) or len(array) < 2:
        raise DataError(f"{path}: {key} has shape {array.shape}; it needs at least two images "
                        "as N×D, N×H×W, N×C×H×W or N×H×W×C.")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DataError(f"{path}: {key} has dtype {array.dtype}; it must be numeric.")
    if np.iscomplexobj(array):
        raise DataError(f"{path}: {key} holds complex numbers ({array.dtype}); a VAE here models "
                        "real values, and dropping the imaginary part would change the data. "
                        "Store the real and imaginary parts as two channels (N×2×H×W) or as "
                        "separate columns of an N×D array.")
    if any(size == 0 for size in array.shape[1:]):
        raise DataError(f"{path}: {key} has shape {array.shape}: no values per datapoint. Store "
                        "at least one value per datapoint (N×D with D ≥ 1, N×H×W or N×C×H×W).")
    images = array.astype(np.float32) / (255.0 if array.dtype == np.uint8 else 1.0)
    if array.ndim == 4 and array.shape[3] in CHANNEL_COUNTS \
            and array.shape[1] not in CHANNEL_COUNTS:
        # N×H×W×C, as PIL, matplotlib and most image files hold colour: channels last.
        images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        array = images
    if not np.all(np.isfinite(images)):
        raise DataError(f"{path}: {key} contains NaN or infinite values; clean them first.")
    if array.ndim == 2:  # square rows of 16 values or more are images, the rest vectors
        side = int(round(array.shape[1] ** 0.5))
        shape = (1, side, side) if side * side == array.shape[1] and side >= MIN_IMAGE_SIDE \
            else (1, 1, array.shape[1])
    else:
        shape = (1, *array.shape[1:3]) if array.ndim == 3 else tuple(array.shape[1:4])
    return torch.from_numpy(images.reshape(len(array), -1)), tuple(int(s) for s in shape)


def _npz_labels(archive, key: str, count: int, path: Path) -> torch.Tensor | None:
    if key not in archive:
        return None
    labels = _npz_array(archive, key, path)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {key} must be {count} integer labels, got {labels.dtype} "
                        f"{labels.shape}.")
    return torch.from_numpy(labels.astype(np.int64))


# --- binarization and minibatches --------------------------------------------------------------

def is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def check_splits_for_binarization(data: ImageData, source: str, mode: str) -> None:
    """Raise :class:`DataError` unless every split is finite and in [0, 1], as binarization
    needs (checked before binarizing, so bad data never reaches ``torch.bernoulli``)."""
    for split, values in (("train", data.train_x), ("validation", data.valid_x),
                          ("test", data.test_x)):
        if not len(values):
            continue
        if not torch.isfinite(values).all():
            raise DataError(f"{source} ({split} split) contains NaN or infinite values; clean "
                            "the data first.")
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            use = ("grey targets score every value as a Bernoulli target" if mode == "grey"
                   else f"{mode} binarization draws every value as a coin flip with the value "
                   "as its probability")
            raise DataError(
                f"{source} ({split} split) has values in [{low:g}, {high:g}], but {use}, "
                "which needs values in [0, 1]. Rescale the data (e.g. divide 8-bit "
                "images by 255), or, for real-valued data, use --likelihood gaussian, which is "
                "never binarized.")


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Bernoulli draw per pixel with the intensity as probability (dynamic binarization)."""
    if generator is not None and generator.device != x.device:
        return torch.bernoulli(x.cpu(), generator=generator).to(x.device)
    return torch.bernoulli(x, generator=generator)


def binarize_fixed(data: ImageData, splits: tuple[str, ...]) -> ImageData:
    """Binarize the named splits once with a fixed seed (so every run sees the same draw)."""
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    attrs = {"train": "train_x", "validation": "valid_x", "test": "test_x"}
    grey = {s: data.grey(s) for s in splits}
    return replace(data, **{attrs[s]: binarize(getattr(data, attrs[s]), generator)
                            for s in splits}, intensities={**data.intensities, **grey})


def minibatches(num_items: int, batch_size: int, device: torch.device | str
                ) -> Iterator[torch.Tensor]:
    """Index tensors of a fresh random permutation, ``batch_size`` at a time."""
    order = torch.randperm(num_items, device=device)
    for start in range(0, num_items, batch_size):
        yield order[start: start + batch_size]


def _built_in(root: Path, download: bool):
    raise AssertionError("built-in datasets are read by load_dataset itself")


# The built-in sources (read by load_dataset above); a plugin registers a function
# (data_dir, download) -> (train_x, train_y, test_x, test_y, image_shape).
DATASETS.add("digits", _built_in, "embedded 8x8 digits, no download")
DATASETS.add("mnist", _built_in, "MNIST IDX files from the data directory")
DATASETS.add("fashion-mnist", _built_in, "Fashion-MNIST IDX files from the data directory")
DATASETS.add("binarized-mnist", _built_in, "Larochelle's static binarization (.amat)")
