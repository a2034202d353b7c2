"""The pictures of a run whose model kind supplies no ``pictures`` hook: the default.

A kind that declares the capability ``pictures`` (the :class:`~pyro_vae.protocol.Pictures`
methods) gets samples, reconstructions, an interpolation and a latent map; any other kind
gets its ELBO curve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pyro_vae.config import Config
from pyro_vae.plots.core import (save_elbo_curves, save_interpolation, save_kl_curves,
                                 save_latent_map, save_reconstructions, save_samples)
from pyro_vae.protocol import has


def write_pictures(vae: torch.nn.Module, data: Any, run_dir: Path, history: list[dict],
                   latent_map: str = "tsne") -> None:
    """``samples.png``, ``reconstructions.png``, ``interpolation.png``, ``latent.png``,
    ``elbo.png`` and ``kl.png``."""
    shape = data.image_shape
    save_samples(run_dir / "samples.png", vae, shape, reference=data.test_x)
    save_reconstructions(run_dir / "reconstructions.png", vae, data.test_x, shape)
    save_interpolation(run_dir / "interpolation.png", vae, data.test_x, shape)
    save_latent_map(run_dir / "latent.png", vae, data.test_x, data.test_y, method=latent_map)
    if history:
        save_elbo_curves(run_dir / "elbo.png", history)
        save_kl_curves(run_dir / "kl.png", history)


def default_pictures(vae: torch.nn.Module, data: Any, run_dir: Path, history: list[dict],
                     config: Config) -> None:
    """The ``pictures`` hook of a kind that supplies none (see the module's docstring)."""
    if has(config, "pictures"):
        write_pictures(vae, data, run_dir, history, config.evaluate.latent_map)
    elif history:
        save_elbo_curves(run_dir / "elbo.png", history)
