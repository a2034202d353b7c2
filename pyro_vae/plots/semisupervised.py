"""Pictures of the semi-supervised M2 model (kind ``m2``): those of a label-conditional VAE
(p(x|z, y) by label, reconstructions given the labels)."""

from __future__ import annotations

import pyro_vae.models.semisupervised  # noqa: F401  (registers the kind "m2")
from pyro_vae.plots.conditional import pictures
from pyro_vae.registry import MODEL_KINDS

MODEL_KINDS.add_hooks("m2", pictures=pictures)
