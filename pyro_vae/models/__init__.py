"""The model kinds, one file each, maths only: Pyro model/guide pairs and their builders.

* :mod:`~pyro_vae.models.base`: :class:`VAE` (p(z) p(x|z) and q(z|x) from swappable prior,
  likelihood, guide and networks), the ``data`` plate and the KL scale every kind shares, and
  :func:`build_vae`, which builds the kind a ``[model]`` table names.
* One module per kind, each registering itself in :data:`pyro_vae.registry.MODEL_KINDS` with
  its capabilities and hooks: :mod:`~pyro_vae.models.vae` (``vae``, with
  :mod:`~pyro_vae.models.hierarchical` and :mod:`~pyro_vae.models.bayesian`),
  :mod:`~pyro_vae.models.conditional` (``cvae``), :mod:`~pyro_vae.models.semisupervised`
  (``m2``), :mod:`~pyro_vae.models.quadrants` (``quadrant_baseline``, ``quadrant_cvae``) and
  :mod:`~pyro_vae.models.discrete` (``discrete``).

This package is the library's; the repository's top-level ``models/`` folder holds recipes
(TOML files, shipped as ``pyro_vae/recipes``).
"""

from pyro_vae.models.base import VAE, build_vae, data_plate, kl_scale

__all__ = ["VAE", "build_vae", "data_plate", "kl_scale"]
