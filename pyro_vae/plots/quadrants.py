"""Pictures of the quadrant-completion models (kinds ``quadrant_baseline``,
``quadrant_cvae``): their ``pictures`` hook."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pyro_vae.config import Config
from pyro_vae.models.quadrants import _QuadrantModel
from pyro_vae.plots.core import save_elbo_curves, save_image_grid
from pyro_vae.registry import MODEL_KINDS


@torch.no_grad()
def write_quadrant_pictures(model: _QuadrantModel, x: torch.Tensor,
                            image_shape: tuple[int, int, int], run_dir: Path,
                            history: list[dict], count: int = 8, completions: int = 4) -> None:
    """``completions.png``: per column one test image: its input (missing pixels grey), the
    ground truth, then ``completions`` predictions; and ``elbo.png``."""
    x = x[:count]
    shown_input = torch.where(model.given, x, torch.full_like(x, 0.5))
    rows = [shown_input, x, *model.predict(x, completions)]
    save_image_grid(run_dir / "completions.png", torch.cat(rows), image_shape, len(x),
                    "input, ground truth, then completions (one row each)")
    if history:
        save_elbo_curves(run_dir / "elbo.png", history)


def pictures(model: _QuadrantModel, data: Any, run_dir: Path, history: list[dict],
             config: Config) -> None:
    """The ``pictures`` hook of the quadrant-completion kinds."""
    write_quadrant_pictures(model, data.test_x, data.image_shape, run_dir, history)


for _kind in ("quadrant_baseline", "quadrant_cvae"):
    MODEL_KINDS.add_hooks(_kind, pictures=pictures)
