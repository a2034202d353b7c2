"""Pictures of a trained VAE: samples, reconstructions, interpolations, latent map, curves.

Each function writes one PNG atomically and returns nothing. Figures are made with
``matplotlib.figure.Figure`` rather than pyplot, so the library needs no display and never
changes the backend of the program that imports it (a notebook keeps showing its own plots).
"""

from __future__ import annotations

import io
from pathlib import Path

from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from pyro_vae.runs import atomic_write_bytes


def subplots(*grid: int, figsize: tuple[float, float], **options: Any) -> tuple[Figure, Any]:
    """``(figure, axes)`` like ``pyplot.subplots``, without pyplot's global state."""
    figure = Figure(figsize=figsize, layout="constrained")  # labels never overlap
    return figure, figure.subplots(*grid, **options)


def image_grid(images: torch.Tensor, image_shape: tuple[int, int, int], columns: int,
               pad: int = 1) -> np.ndarray:
    """Tile flattened images ``[N, P]`` into one ``[H', W']`` (grey) or ``[H', W', C]`` array."""
    channels, height, width = image_shape
    images = images.detach().float().cpu().clamp(0, 1).reshape(-1, channels, height, width)
    rows = -(-len(images) // columns)
    grid = np.full((channels, rows * (height + pad) + pad, columns * (width + pad) + pad), 0.25)
    for i, image in enumerate(images.numpy()):
        r, c = divmod(i, columns)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        grid[:, top: top + height, left: left + width] = image
    return grid[0] if channels == 1 else grid.transpose(1, 2, 0)


def _save(figure: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def save_image_grid(path: Path, images: torch.Tensor, image_shape: tuple[int, int, int],
                    columns: int, title: str) -> None:
    grid = image_grid(images, image_shape, columns)
    scale = 0.45 if image_shape[1] <= 8 else 0.6
    rows = -(-len(images) // columns)
    figure, axis = subplots(figsize=(max(3.0, columns * scale), max(1.5, rows * scale) + 0.4))
    axis.imshow(grid, cmap="gray_r" if grid.ndim == 2 else None, vmin=0, vmax=1,
                interpolation="nearest")
    axis.set_title(title, fontsize=9)
    axis.axis("off")
    _save(figure, path)


@torch.no_grad()
def save_samples(path: Path, vae, image_shape, count: int = 64) -> None:
    images = vae.sample(count, device=next(vae.parameters()).device)
    save_image_grid(path, images, image_shape, 8, "E[x|z] for z ~ p(z)")


@torch.no_grad()
def save_reconstructions(path: Path, vae, x: torch.Tensor, image_shape, count: int = 10
                         ) -> None:
    """Rows alternate: inputs, then their reconstructions E[x | z = μ(x)]."""
    count = max(1, min(count, len(x) // 2 or 1))
    x = x[:2 * count] if len(x) >= 2 * count else x[:count]
    recon = vae.reconstruct(x)
    rows = [t for pair in zip(x.split(count), recon.split(count)) for t in pair]
    save_image_grid(path, torch.cat(rows), image_shape, count,
                    "inputs (odd rows) and reconstructions (even rows)")


@torch.no_grad()
def save_interpolation(path: Path, vae, x: torch.Tensor, image_shape, pairs: int = 6,
                       steps: int = 10) -> None:
    """Each row decodes μ(a) + t (μ(b) − μ(a)) for t from 0 to 1 between two test images."""
    pairs = min(pairs, len(x) // 2)
    if pairs == 0:
        return  # a single test image has no partner to interpolate towards
    loc = vae.latent_mean(x[: 2 * pairs])
    start, end = loc[:pairs], loc[pairs: 2 * pairs]
    t = torch.linspace(0, 1, steps, device=loc.device).reshape(1, steps, 1)
    z = start[:, None] + t * (end - start)[:, None]
    images = vae.decode(z.reshape(-1, loc.shape[-1]))
    save_image_grid(path, images, image_shape, steps,
                    "decoded along a straight line between two test encodings")


def project_2d(points: torch.Tensor) -> tuple[np.ndarray, str]:
    """The points themselves if 2-D, else their first two principal components."""
    points = points.detach().float().cpu()
    if points.shape[1] == 1:
        return np.stack([points[:, 0].numpy(), np.zeros(len(points))], 1), "z₁"
    if points.shape[1] == 2:
        return points.numpy(), "z"
    centred = points - points.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ v[:2].T).numpy(), "first two principal components of μ(x)"


@torch.no_grad()
def save_latent_map(path: Path, vae, x: torch.Tensor, y: torch.Tensor | None,
                    max_points: int = 5000) -> None:
    if len(x) < 3:
        return  # too few points for a map
    loc = vae.latent_mean(x[:max_points])
    xy, label = project_2d(loc)
    figure, axis = subplots(figsize=(5.5, 4.5))
    if y is not None:
        labels = y[:max_points].cpu().numpy()
        scatter = axis.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=6, alpha=0.8,
                               vmin=-0.5, vmax=9.5)
        figure.colorbar(scatter, ax=axis, ticks=range(10), label="label")
    else:
        axis.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.6)
    axis.set_title(f"test encodings μ(x): {label}", fontsize=9)
    _save(figure, path)


def save_elbo_curves(path: Path, history: list[dict]) -> None:
    epochs = [row["epoch"] for row in history]
    figure, axis = subplots(figsize=(5.5, 3.5))
    axis.plot(epochs, [row["train_elbo"] for row in history], label="train (objective)")
    valid = [(row["epoch"], row["validation_elbo"]) for row in history
             if row.get("validation_elbo") is not None]
    if valid:
        axis.plot(*zip(*valid), label="validation ELBO")
    axis.set_xlabel("epoch")
    axis.set_ylabel("nats per datapoint")
    if len(epochs) > 5:
        low = np.percentile([row["train_elbo"] for row in history], 5)
        axis.set_ylim(bottom=low)
    axis.legend()
    axis.grid(alpha=0.3)
    _save(figure, path)


def save_kl_curves(path: Path, history: list[dict]) -> None:
    """Collapse diagnostics over training: KL per latent dimension (a heat map, where the prior
    splits over dimensions; else the total KL) and the number of active units."""
    rows = [row for row in history if row.get("active_units") is not None]
    if not rows:
        return
    epochs = [row["epoch"] for row in rows]
    figure, (left, right) = subplots(1, 2, figsize=(10, 3.5))
    per_dim = [row.get("kl_per_dim") for row in rows]
    if all(kl is not None for kl in per_dim):
        kl = np.asarray(per_dim).T  # [dims, epochs]
        image = left.imshow(kl, aspect="auto", origin="lower", cmap="viridis",
                            extent=(epochs[0] - 0.5, epochs[-1] + 0.5, -0.5, len(kl) - 0.5))
        figure.colorbar(image, ax=left, label="nats")
        left.set_ylabel("latent dimension")
        left.set_title("KL(q(z_j|x) ‖ p(z_j)) per dimension")
    else:
        left.plot(epochs, [row["kl"] for row in rows])
        left.set_ylabel("nats per datapoint")
        left.set_title("KL(q(z|x) ‖ p(z))")
        left.grid(alpha=0.3)
    right.plot(epochs, [row["active_units"] for row in rows], marker="o", markersize=3)
    right.set_ylabel("active units")
    right.set_ylim(bottom=0)
    right.grid(alpha=0.3)
    for axis in (left, right):
        axis.set_xlabel("epoch")
    _save(figure, path)
