"""Pictures, in one package: :mod:`~pyro_vae.plots.core` draws and writes them (image grids,
samples, reconstructions, interpolations, latent maps, curves); one module per model kind that
needs pictures of its own (:mod:`~pyro_vae.plots.conditional`, ...) registers them as that
kind's ``pictures`` hook. Models hold maths only; the training loop asks the kind's hook.
"""

from pyro_vae.plots.core import (MAX_SCATTER_COORDINATES, save_figure, image_grid, project_2d,
                                 save_elbo_curves, save_image_grid, save_interpolation,
                                 save_kl_curves, save_latent_map, save_reconstructions,
                                 save_samples, save_vector_scatter, scatter_coordinates,
                                 subplots, tsne_2d)

__all__ = ["MAX_SCATTER_COORDINATES", "image_grid", "project_2d", "save_elbo_curves", "save_figure",
           "save_image_grid", "save_interpolation", "save_kl_curves", "save_latent_map",
           "save_reconstructions", "save_samples", "save_vector_scatter", "scatter_coordinates",
           "subplots", "tsne_2d"]
