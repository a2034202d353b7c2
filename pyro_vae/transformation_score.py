r"""The transformation-prediction score (Golan & El-Yaniv 2018).

A classifier f learns, on in-distribution images only, *which* of k geometric transformations
T_1, …, T_k was applied to an image: trained on pairs (T_j(x), j) with j drawn uniformly. An
image it can read the orientation and position of is one whose shapes it has learned; an
anomaly is one on which it cannot tell the transformations apart. The score is the paper's
*simplified normality score*, negated so that higher means more anomalous:

    s(x) = −(1/k) Σ_j softmax(f(T_j(x)))_j ,

minus the mean probability the classifier gives the right transformation over all k of them.

It looks at what the scores of a density (log p(x) and its corrections) do not: orientation
and position. A VAE codes a flipped or turned digit about as well as an upright one, so its
likelihood barely moves; the classifier, which has learned which way up the training shapes
are, misreads the transformations of such an image. It is a discriminative score: the
classifier is a network beside the VAE, trained once on the run's training images.

The settings are the paper's, fixed before any measurement (``docs/source/guide/
anomaly_dose.md`` says how each was chosen):

- the transformations (:func:`transformations`): every composition of a left-right flip (or
  none), a translation by 0 or ±¼ of the side in each direction (±8 pixels of the paper's 32,
  ±7 of 28), and a rotation by 0, 90, 180 or 270 degrees: 2 · 3 · 3 · 4 = 72, applied in that
  order. The uncovered border is filled by reflection about the edge pixel (torch's
  ``reflect``), where the paper's Keras ``reflect`` repeats the edge pixel first: the filled
  strip is shifted by one pixel;
- Adam at its default learning rate, batches of 128, cross-entropy.

Two settings are ours, for the cost on a CPU: the network, a small convolutional one
(:class:`TransformationClassifier`, three 3×3 convolutions) instead of the paper's
wide residual network WRN-10-4, and the budget, :data:`DEFAULT_EPOCHS` passes over the
training images with one random transformation each, where the paper trains ⌈200/72⌉ passes
over every (image, transformation) pair.

Reference: I. Golan and R. El-Yaniv, "Deep anomaly detection using geometric transformations",
NeurIPS 2018.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pyro_vae.data import binarize
from pyro_vae.errors import ConfigError, TrainingError

#: Passes over the training images (one random transformation per image and pass).
DEFAULT_EPOCHS = 10
#: Batch size and learning rate of Adam (the paper's).
BATCH_SIZE = 128
LEARNING_RATE = 1e-3


@dataclass(frozen=True)
class Transformation:
    """A left-right flip (or none), then a translation by (rows, columns) pixels, reflected at
    the border, then ``quarter_turns`` rotations by 90 degrees."""

    flip: bool
    rows: int
    columns: int
    quarter_turns: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` of shape (n, c, h, w) transformed."""
        out = torch.flip(images, (-1,)) if self.flip else images
        if self.rows or self.columns:
            out = translate(out, self.rows, self.columns)
        if self.quarter_turns:
            out = torch.rot90(out, self.quarter_turns, (-2, -1))
        return out


def translate(images: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """``images`` (n, c, h, w) moved down by ``rows`` and right by ``columns`` pixels, the
    uncovered border filled by reflection."""
    pad_rows, pad_columns = abs(rows), abs(columns)
    padded = nn.functional.pad(images, (pad_columns, pad_columns, pad_rows, pad_rows),
                               mode="reflect")
    height, width = images.shape[-2:]
    top, left = pad_rows - rows, pad_columns - columns
    return padded[..., top: top + height, left: left + width]


def transformations(side: int) -> tuple[Transformation, ...]:
    """Golan & El-Yaniv's 72 transformations for square images of ``side`` pixels (the
    translation ¼ of the side, rounded down)."""
    shift = side // 4
    return tuple(Transformation(flip, rows, columns, turns)
                 for flip, rows, columns, turns in itertools.product(
                     (False, True), (0, -shift, shift), (0, -shift, shift), range(4)))


class TransformationClassifier(nn.Module):
    """Which of ``count`` transformations was applied to an image of ``image_shape``: three
    3×3 convolutions (16, 32, 64 channels, each followed by batch normalization, ReLU and a
    2×2 max-pool), then a hidden layer of 128 units."""

    def __init__(self, image_shape: tuple[int, int, int], count: int):
        super().__init__()
        channels, height, width = image_shape
        self.image_shape = tuple(image_shape)
        self.count = count
        layers: list[nn.Module] = []
        for width_in, width_out in ((channels, 16), (16, 32), (32, 64)):
            layers += [nn.Conv2d(width_in, width_out, 3, padding=1),
                       nn.BatchNorm2d(width_out), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        flat = 64 * (height // 8) * (width // 8)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(),
                                  nn.Linear(128, count))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits over the transformations, for images of shape (n, c, h, w)."""
        return self.head(self.features(images))


def check_image_shape(image_shape: tuple[int, int, int]) -> None:
    """Rotations by 90 degrees need square images, the network at least 8 pixels a side."""
    _, height, width = image_shape
    if height != width or height < 8:
        raise ConfigError(
            f"the transformation score needs square images of at least 8×8 pixels (it turns "
            f"them by quarter turns and halves them three times); these are {height}×{width}.")


def _square(x: torch.Tensor, image_shape: tuple[int, int, int]) -> torch.Tensor:
    return x.reshape(len(x), *image_shape)


def train_transformation_classifier(
        images: torch.Tensor, image_shape: tuple[int, int, int], epochs: int = DEFAULT_EPOCHS,
        binarize_batches: bool = False, seed: int = 0,
        progress: Callable[[int, float], None] | None = None) -> TransformationClassifier:
    """Train the classifier on ``images`` (flattened, in-distribution training images): each
    pass gives every image one uniformly drawn transformation. ``binarize_batches`` draws a
    fresh binarization of each batch (for grey images of a dynamically binarized run).
    ``progress(epoch, mean loss)`` is called after each pass."""
    check_image_shape(image_shape)
    if epochs <= 0:
        raise ConfigError(f"the transformation classifier's epochs must be positive, not "
                          f"{epochs}.")
    generator = torch.Generator().manual_seed(seed)
    found = transformations(image_shape[-1])
    with torch.random.fork_rng(devices=[]):  # the initial weights by the seed, the caller's
        torch.manual_seed(seed)              # random state left as it was
        classifier = TransformationClassifier(image_shape, len(found))
    classifier = classifier.to(images.device)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=LEARNING_RATE)
    classifier.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(images), generator=generator)
        labels = torch.randint(len(found), (len(images),), generator=generator)
        total = 0.0
        for start in range(0, len(images), BATCH_SIZE):
            index = order[start: start + BATCH_SIZE]
            batch = images[index.to(images.device)]
            if binarize_batches:
                batch = binarize(batch, generator)
            batch = _square(batch, image_shape)
            target = labels[start: start + BATCH_SIZE].to(images.device)
            transformed = torch.empty_like(batch)
            for j in target.unique().tolist():
                chosen = target == j
                transformed[chosen] = found[j](batch[chosen])
            loss = nn.functional.cross_entropy(classifier(transformed), target)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the transformation classifier's loss became {loss.item()} in pass "
                    f"{epoch}: the training images hold non-finite or extreme values. Check the "
                    "data (pyro-vae reads intensities in [0, 1]), or leave the classifier's "
                    "scores out with --no-transformations.")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        if progress is not None:
            progress(epoch, total / len(images))
    classifier.eval()
    return classifier


@torch.no_grad()
def transformation_scores(classifier: TransformationClassifier, x: torch.Tensor,
                          batch_size: int = 500) -> torch.Tensor:
    """The score s(x) of the module docstring for each of the flattened images ``x`` (on the
    classifier's device, returned on the CPU, as the other scores are)."""
    classifier.eval()
    found = transformations(classifier.image_shape[-1])
    device = next(classifier.parameters()).device
    scores = []
    for start in range(0, len(x), batch_size):
        batch = _square(x[start: start + batch_size].to(device), classifier.image_shape)
        right = torch.zeros(len(batch), dtype=torch.float64, device=device)
        for j, transform in enumerate(found):
            right += torch.softmax(classifier(transform(batch)), dim=-1)[:, j].double()
        scores.append(-right / len(found))
    return torch.cat(scores).cpu()


def save_classifier(classifier: TransformationClassifier, path) -> None:
    """Write the classifier's weights and shape to ``path`` (a ``.pt`` file)."""
    torch.save({"state": classifier.state_dict(), "image_shape": list(classifier.image_shape),
                "count": classifier.count}, path)


def load_classifier(path) -> TransformationClassifier:
    """The classifier :func:`save_classifier` wrote to ``path``, ready to score, on the CPU.
    Raises :class:`ValueError` for a file that is not one (damaged, cut short, or another
    kind of file), with what is wrong."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - empty, cut short, not a pickle, unsafe
        raise ValueError(f"not a saved classifier ({type(error).__name__}: {error})") from None
    if not isinstance(saved, dict) or not {"state", "image_shape", "count"} <= set(saved):
        raise ValueError("not a saved classifier (it holds no weights, image shape and count)")
    try:
        classifier = TransformationClassifier(tuple(saved["image_shape"]), int(saved["count"]))
        classifier.load_state_dict(saved["state"])
    except Exception as error:  # noqa: BLE001 - weights of another shape or kind
        raise ValueError(f"its weights do not fit the classifier ({error})") from None
    classifier.eval()
    return classifier
