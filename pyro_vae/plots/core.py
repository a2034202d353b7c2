"""Pictures of a trained VAE: samples, reconstructions, interpolations, latent map, curves.

Images are shown as image grids (one or three channels as grey or colour; any other number of
channels side by side, as grey). Vector data (an N×D ``.npz``: image shape ``(1, 1, D)``) is
not a picture: samples are pairwise scatter plots of drawn samples over the data (of the
coordinates for D ≤ 4, else of the data's first four principal components), reconstructions
a scatter of reconstructed against input values, interpolations paths in the same
coordinates.

Each function writes one PNG atomically and returns nothing. Figures are made with
``matplotlib.figure.Figure`` rather than pyplot, so the library needs no display and never
changes the backend of the program that imports it (a notebook keeps showing its own plots).
"""

from __future__ import annotations

import io
from pathlib import Path

from typing import Any, Callable

import numpy as np
import torch
from matplotlib.figure import Figure

from pyro_vae.data import is_vector_shape
from pyro_vae.runs import atomic_write_bytes

#: Coordinates of vector data shown in pairwise scatter plots (the rest via principal axes).
MAX_SCATTER_COORDINATES = 4


def subplots(*grid: int, figsize: tuple[float, float], **options: Any) -> tuple[Figure, Any]:
    """``(figure, axes)`` like ``pyplot.subplots``, without pyplot's global state."""
    figure = Figure(figsize=figsize, layout="constrained")  # labels never overlap
    return figure, figure.subplots(*grid, **options)


def image_grid(images: torch.Tensor, image_shape: tuple[int, int, int], columns: int,
               pad: int = 1) -> np.ndarray:
    """Tile flattened images ``[N, P]`` into one ``[H', W']`` (grey) or ``[H', W', C]`` array."""
    channels, height, width = image_shape
    images = images.detach().float().cpu().clamp(0, 1).reshape(-1, channels, height, width)
    if channels not in (1, 3):  # no colour model for these: each channel as grey, side by side
        images = images.permute(0, 2, 1, 3).reshape(-1, 1, height, channels * width)
        channels, width = 1, channels * width
    rows = -(-len(images) // columns)
    grid = np.full((channels, rows * (height + pad) + pad, columns * (width + pad) + pad), 0.25)
    for i, image in enumerate(images.numpy()):
        r, c = divmod(i, columns)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        grid[:, top: top + height, left: left + width] = image
    return grid[0] if channels == 1 else grid.transpose(1, 2, 0)


def save_figure(figure: Figure, path: Path) -> None:
    """Write ``figure`` to ``path`` as a PNG, atomically (never a half-written file)."""
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
    if image_shape[0] not in (1, 3):
        title = f"{title}\n(each image's {image_shape[0]} channels side by side, as grey)"
    axis.set_title(title, fontsize=9)
    axis.axis("off")
    save_figure(figure, path)


def scatter_coordinates(reference: torch.Tensor
                        ) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[str]]:
    """A map from vectors ``[N, D]`` to at most four coordinates for scatter plots, and their
    names: the coordinates themselves for small D, else projections on the first principal
    axes of ``reference``."""
    reference = reference.detach().float().cpu()
    dims = reference.shape[1]
    if dims <= MAX_SCATTER_COORDINATES:
        return (lambda v: v.detach().float().cpu()), [f"x{i + 1}" for i in range(dims)]
    centre = reference.mean(0)
    _, _, v = torch.linalg.svd(reference - centre, full_matrices=False)
    axes = v[:MAX_SCATTER_COORDINATES]
    project = lambda values: (values.detach().float().cpu() - centre) @ axes.T  # noqa: E731
    return project, [f"PC{i + 1}" for i in range(len(axes))]


def save_vector_scatter(path: Path, samples: torch.Tensor, reference: torch.Tensor | None,
                        title: str) -> None:
    """Pairwise scatter plots of ``samples`` (orange) under ``reference`` data (black)."""
    project, names = scatter_coordinates(reference if reference is not None else samples)
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    drawn = project(samples).numpy()
    data = None if reference is None else project(reference).numpy()
    if not pairs:  # one coordinate: histograms
        figure, axis = subplots(figsize=(4.5, 3.5))
        if data is not None:
            axis.hist(data[:, 0], bins=40, density=True, alpha=0.5, color="black", label="data")
        axis.hist(drawn[:, 0], bins=40, density=True, alpha=0.5, color="C1", label="samples")
        axis.set_xlabel(names[0])
        axis.legend(fontsize=8)
    else:
        columns = min(3, len(pairs))
        rows = -(-len(pairs) // columns)
        figure, axes = subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows),
                                squeeze=False)
        for axis, (i, j) in zip(axes.flat, pairs):
            axis.scatter(drawn[:, i], drawn[:, j], s=4, alpha=0.3, color="C1", label="samples")
            if data is not None:  # on top: fewer points than the draws
                axis.scatter(data[:, i], data[:, j], s=5, alpha=0.7, color="black",
                             label="data")
            axis.set_xlabel(names[i])
            axis.set_ylabel(names[j])
        for axis in list(axes.flat)[len(pairs):]:
            axis.axis("off")
        axes.flat[0].legend(fontsize=7, markerscale=3)
    figure.suptitle(title, fontsize=9)
    save_figure(figure, path)


@torch.no_grad()
def save_samples(path: Path, vae, image_shape, count: int = 64,
                 reference: torch.Tensor | None = None) -> None:
    """An image grid of E[x|z], z ~ p(z); for vector data, 1,000 draws x ~ p(x) scattered
    over ``reference`` data."""
    device = next(vae.parameters()).device
    if is_vector_shape(image_shape):  # the protocol's generate and likelihood (pictures)
        _, output = vae.generate(max(count, 1000), device)
        draws = vae.likelihood(output).sample()
        save_vector_scatter(path, draws, reference, "draws x ~ p(x) (orange) and test data "
                            "(black)" if reference is not None else "draws x ~ p(x)")
        return
    z, _ = vae.generate(count, device)
    images = vae.decode(z)
    save_image_grid(path, images, image_shape, 8, "E[x|z] for z ~ p(z)")


@torch.no_grad()
def save_reconstructions(path: Path, vae, x: torch.Tensor, image_shape, count: int = 10
                         ) -> None:
    """Rows alternate: inputs, then their reconstructions E[x | z = μ(x)] (for vector data:
    reconstructed against input values, every coordinate)."""
    if is_vector_shape(image_shape):
        _save_vector_reconstructions(path, vae, x)
        return
    count = max(1, min(count, len(x) // 2 or 1))
    x = x[:2 * count] if len(x) >= 2 * count else x[:count]
    recon = vae.reconstruct(x)
    rows = [t for pair in zip(x.split(count), recon.split(count)) for t in pair]
    save_image_grid(path, torch.cat(rows), image_shape, count,
                    "inputs (odd rows) and reconstructions (even rows)")


def _save_vector_reconstructions(path: Path, vae, x: torch.Tensor, max_points: int = 1000
                                 ) -> None:
    x = x[:max_points]
    recon = vae.reconstruct(x).detach().float().cpu()
    x = x.detach().float().cpu()
    figure, axis = subplots(figsize=(4.8, 4.2))
    for dim in range(min(x.shape[1], 10)):
        axis.scatter(x[:, dim].numpy(), recon[:, dim].numpy(), s=4, alpha=0.5,
                     label=f"x{dim + 1}")
    low, high = float(x.min()), float(x.max())
    axis.plot([low, high], [low, high], color="black", linewidth=0.8)
    axis.set_xlabel("input value")
    axis.set_ylabel("reconstruction E[x | z = μ(x)]")
    if x.shape[1] <= 10:
        axis.legend(fontsize=7, markerscale=3)
    axis.set_title("test inputs against their reconstructions"
                   + ("" if x.shape[1] <= 10 else " (first 10 coordinates)"), fontsize=9)
    save_figure(figure, path)


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
    if is_vector_shape(image_shape):
        project, names = scatter_coordinates(x)
        data = project(x).numpy()
        paths = project(images).numpy().reshape(pairs, steps, -1)
        figure, axis = subplots(figsize=(4.8, 4.2))
        first, second = (0, 1) if len(names) > 1 else (0, 0)
        axis.scatter(data[:, first], data[:, second], s=4, alpha=0.3, color="grey")
        for row in paths:
            axis.plot(row[:, first], row[:, second], marker="o", markersize=2)
        axis.set_xlabel(names[first])
        axis.set_ylabel(names[second])
        axis.set_title("decoded along straight lines between test encodings", fontsize=9)
        save_figure(figure, path)
        return
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


def tsne_2d(points: torch.Tensor, seed: int = 0) -> tuple[np.ndarray, str]:
    """A 2-D t-SNE embedding (scikit-learn, perplexity 30 or less for few points, PCA start)."""
    from sklearn.manifold import TSNE

    points = points.detach().float().cpu().numpy()
    perplexity = min(30.0, (len(points) - 1) / 3)
    xy = TSNE(2, perplexity=perplexity, init="pca", max_iter=500,
              random_state=seed).fit_transform(points)
    return xy, f"t-SNE of μ(x) (perplexity {perplexity:.0f})"


@torch.no_grad()
def save_latent_map(path: Path, vae, x: torch.Tensor, y: torch.Tensor | None,
                    max_points: int = 5000, method: str = "tsne",
                    tsne_points: int = 1000) -> None:
    """Test encodings μ(x) coloured by label: z itself when D ≤ 2; for D > 2 a t-SNE map of the
    first ``tsne_points`` (``method="tsne"``: clusters that PCA would overlap, a few seconds)
    or the first two principal components of the first ``max_points`` (``"pca"``: instant)."""
    if len(x) < 3:
        return  # too few points for a map
    loc = vae.latent_mean(x[:max_points])
    if method == "tsne" and loc.shape[1] > 2 and len(loc) > 6:
        xy, label = tsne_2d(loc[:tsne_points])
    else:
        xy, label = project_2d(loc)
    figure, axis = subplots(figsize=(5.5, 4.5))
    if y is not None:
        labels = y[:len(xy)].cpu().numpy()
        scatter = axis.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=6, alpha=0.8,
                               vmin=-0.5, vmax=9.5)
        figure.colorbar(scatter, ax=axis, ticks=range(10), label="label")
    else:
        axis.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.6)
    axis.set_title(f"test encodings μ(x): {label}", fontsize=9)
    save_figure(figure, path)


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
    save_figure(figure, path)


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
    save_figure(figure, path)
