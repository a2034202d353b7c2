"""Pictures of the VAE with a discrete code (kind ``discrete``): its ``pictures`` hook."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pyro_vae.config import Config
from pyro_vae.models.discrete import DiscreteVAE
from pyro_vae.plots.core import (save_elbo_curves, save_image_grid, save_reconstructions,
                                 save_samples)
from pyro_vae.registry import MODEL_KINDS


def write_discrete_pictures(vae: DiscreteVAE, data: Any, run_dir: Path,
                            history: list[dict]) -> None:
    """``samples.png``, ``reconstructions.png``, ``categories.png`` (what each category codes)
    and ``elbo.png``."""
    shape = data.image_shape
    save_samples(run_dir / "samples.png", vae, shape)
    save_reconstructions(run_dir / "reconstructions.png", vae, data.test_x, shape)
    with torch.no_grad():
        images, columns, title = vae.category_grid(data.test_x)
    save_image_grid(run_dir / "categories.png", images, shape, columns, title)
    if history:
        save_elbo_curves(run_dir / "elbo.png", history)


def pictures(vae: DiscreteVAE, data: Any, run_dir: Path, history: list[dict],
             config: Config) -> None:
    """The ``pictures`` hook of the discrete kind."""
    write_discrete_pictures(vae, data, run_dir, history)


MODEL_KINDS.add_hooks("discrete", pictures=pictures)
