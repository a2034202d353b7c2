"""Shifted copies of a dataset's own test images: out-of-distribution sets made from the data.

``pyro-vae anomaly RUN --against shift:NAME`` scores the run's test images against a shifted
copy of them, so a detector can be tried on any dataset without a second one. The shifts are
those of the project's anomaly benchmark (``benchmarks/ood_shifts.py``) and of its validation
shifts (``benchmarks/ood_validation.py``), written for images of any size and channel count,
plus ``mirrored``. Each takes grey images x ∈ [0, 1] of shape [N, C, H, W] and returns images of
the same shape in [0, 1]; the random ones draw from one seeded generator, so a shift is the
same set every time.

Geometric:
    ``rotated`` a quarter turn (square images only), ``upside-down`` (rows reversed),
    ``mirrored`` (columns reversed), ``translated`` by a seventh of the side in one of the
    8 compass directions (4 pixels of 28; the blank filled with 0), ``crops`` (a random
    quarter, enlarged 2×; even sides only), ``pixel-shuffled`` (each image's pixels in a
    random order).
Intensity:
    ``inverted`` 1 − x, ``faint`` x / 2, ``blurred`` (Gaussian, σ = 1 pixel, 5×5),
    ``thicker`` and ``thinner`` (3×3 grey-level dilation and erosion), ``salt-and-pepper``
    (5 % of the pixels set to 0 or 1), ``cutout`` (a random square of 10/28 of the shorter
    side blanked).
Not images of the data at all:
    ``noise`` (uniform), ``constant`` (all 0 or all 1, alternating), ``mixtures``
    (x_i / 2 + x_j / 2 for a random partner j).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from pyro_vae.errors import ConfigError

#: The prefix of a shifted dataset's name (``shift:upside-down``).
PREFIX = "shift:"
#: The seed every shift draws from.
SEED = 0

Shift = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _rotated(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rot90(x, 1, (2, 3))


def _upside_down(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.flip(x, (2,))


def _mirrored(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.flip(x, (3,))


def _translated(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    height, width = x.shape[2:]
    step_r, step_c = max(1, round(height / 7)), max(1, round(width / 7))
    directions = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
    padded = F.pad(x, (step_c, step_c, step_r, step_r))
    moved = torch.empty_like(x)
    for n, pick in enumerate(torch.randint(8, (len(x),), generator=generator).tolist()):
        dr, dc = directions[pick]
        top, left = step_r - dr * step_r, step_c - dc * step_c
        moved[n] = padded[n, :, top: top + height, left: left + width]
    return moved


def _crops(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    height, width = x.shape[2:]
    corners = torch.stack([torch.randint(height // 2 + 1, (len(x),), generator=generator),
                           torch.randint(width // 2 + 1, (len(x),), generator=generator)], 1)
    crops = torch.empty_like(x)
    for n, (row, column) in enumerate(corners.tolist()):
        patch = x[n, :, row: row + height // 2, column: column + width // 2]
        crops[n] = patch.repeat_interleave(2, 1).repeat_interleave(2, 2)
    return crops


def _pixel_shuffled(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flat = x.reshape(len(x), x.shape[1], -1)
    shuffled = torch.stack([image[:, torch.randperm(flat.shape[-1], generator=generator)]
                            for image in flat])
    return shuffled.reshape(x.shape)


def _blurred(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    offsets = torch.arange(-2, 3, dtype=torch.float64)
    weights = torch.exp(-offsets ** 2 / 2.0)
    kernel = (weights[:, None] * weights[None, :] / weights.sum() ** 2).to(x.dtype)
    channels = x.shape[1]
    kernel = kernel.expand(channels, 1, 5, 5).contiguous()
    return F.conv2d(x, kernel, padding=2, groups=channels).clamp(0, 1)


def _salt_and_pepper(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    shape = (len(x), 1, *x.shape[2:])  # a pixel is hit in every channel at once
    hit = torch.rand(shape, generator=generator) < 0.05
    value = (torch.rand(shape, generator=generator) < 0.5).to(x.dtype)
    return torch.where(hit.expand_as(x), value.expand_as(x), x)


def _cutout(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    height, width = x.shape[2:]
    side = max(1, round(min(height, width) * 10 / 28))
    rows = torch.randint(height - side + 1, (len(x),), generator=generator)
    columns = torch.randint(width - side + 1, (len(x),), generator=generator)
    cut = x.clone()
    for n, (row, column) in enumerate(zip(rows.tolist(), columns.tolist())):
        cut[n, :, row: row + side, column: column + side] = 0.0
    return cut


def _mixtures(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    partner = torch.randperm(len(x), generator=generator)
    return 0.5 * (x + x[partner])


SHIFTS: dict[str, Shift] = {
    "rotated": _rotated,
    "upside-down": _upside_down,
    "mirrored": _mirrored,
    "translated": _translated,
    "crops": _crops,
    "pixel-shuffled": _pixel_shuffled,
    "inverted": lambda x, generator: 1.0 - x,
    "faint": lambda x, generator: 0.5 * x,
    "blurred": _blurred,
    "thicker": lambda x, generator: F.max_pool2d(x, 3, stride=1, padding=1),
    "thinner": lambda x, generator: -F.max_pool2d(-x, 3, stride=1, padding=1),
    "salt-and-pepper": _salt_and_pepper,
    "cutout": _cutout,
    "noise": lambda x, generator: torch.rand(x.shape, generator=generator).to(x.dtype),
    "constant": lambda x, generator: (torch.arange(len(x)) % 2).to(x.dtype)
    .reshape(-1, 1, 1, 1).expand_as(x).clone(),
    "mixtures": _mixtures,
}


def shift_name(dataset: str) -> str | None:
    """The shift a dataset name asks for (``shift:rotated`` → ``rotated``), else ``None``."""
    return dataset[len(PREFIX):] if dataset.startswith(PREFIX) else None


def check_shift(name: str, image_shape: tuple[int, int, int]) -> None:
    """Refuse, in one paragraph, a shift that does not exist or that these images cannot take."""
    if name not in SHIFTS:
        raise ConfigError(f"{PREFIX + name!r} is not a shift; choose from "
                          f"{', '.join(PREFIX + s for s in SHIFTS)}.")
    _, height, width = image_shape
    if name == "rotated" and height != width:
        raise ConfigError(f"{PREFIX}rotated turns the images a quarter, and these are "
                          f"{height}×{width}, not square; choose another shift.")
    if name == "crops" and (height % 2 or width % 2):
        raise ConfigError(f"{PREFIX}crops enlarges a quarter of each image 2×, which needs even "
                          f"sides, and these images are {height}×{width}; choose another shift.")


def shifted(name: str, x: torch.Tensor, image_shape: tuple[int, int, int],
            seed: int = SEED) -> torch.Tensor:
    """The flattened images ``x`` (grey, in [0, 1]) with the shift ``name`` applied; refused
    for images outside [0, 1] and where the shift would leave every image as it was."""
    check_shift(name, image_shape)
    if len(x) == 0:
        return x.clone()
    if float(x.min()) < 0.0 or float(x.max()) > 1.0:
        raise ConfigError(
            f"{PREFIX}{name} shifts intensities in [0, 1], and these images hold values from "
            f"{float(x.min()):.3g} to {float(x.max()):.3g} (real-valued data): the shifted set "
            "would differ from the images by its range alone. Score against another dataset of "
            "the same kind instead.")
    generator = torch.Generator().manual_seed(seed)
    images = x.detach().cpu().reshape(len(x), *image_shape)
    result = SHIFTS[name](images, generator).clamp(0, 1).reshape(len(x), -1).contiguous()
    if torch.equal(result, x.detach().cpu().reshape(len(x), -1)):
        _, height, width = image_shape
        raise ConfigError(f"{PREFIX}{name} leaves these {height}×{width} images as they are, so "
                          "the two sets would be the same; choose another shift.")
    return result.to(x.device)
