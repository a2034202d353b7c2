"""Pictures of the label-conditional VAE (kind ``cvae``): its ``pictures`` hook."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pyro_vae.config import Config
from pyro_vae.models.conditional import ConditionalVAE
from pyro_vae.plots.core import save_elbo_curves, save_image_grid
from pyro_vae.registry import MODEL_KINDS


@torch.no_grad()
def write_conditional_pictures(vae: ConditionalVAE, data: Any, run_dir: Path,
                               history: list[dict], columns: int = 8) -> None:
    """``samples.png`` (every label × ``columns`` draws of z), ``reconstructions.png`` (given
    the true labels) and ``elbo.png``."""
    shape = data.image_shape
    device = next(vae.parameters()).device
    save_image_grid(run_dir / "samples.png", vae.label_grid(columns, device), shape,
                    columns, "E[x|z, y]: one row per label y, one column per z ~ p(z)")
    count = max(1, min(10, len(data.test_x)))
    x, y = data.test_x[:count], data.test_y[:count]
    save_image_grid(run_dir / "reconstructions.png",
                    torch.cat([x, vae.reconstruct(x, y)]), shape, count,
                    "inputs (top) and reconstructions given their labels (bottom)")
    if history:
        save_elbo_curves(run_dir / "elbo.png", history)


def pictures(vae: ConditionalVAE, data: Any, run_dir: Path, history: list[dict],
             config: Config) -> None:
    """The ``pictures`` hook of a label-conditional kind."""
    write_conditional_pictures(vae, data, run_dir, history)


MODEL_KINDS.add_hooks("cvae", pictures=pictures)
