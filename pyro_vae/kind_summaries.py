"""What the labelled kinds add to ``summary.json`` at the end of training: the label fidelity
of their samples (:mod:`pyro_vae.fidelity`), measured by a classifier kept in the run
directory for ``pyro-vae sample --label``.

The training loop imports no application, so the kinds get it as their ``run_summary`` hook
here. A labelled kind of one's own gets the same by declaring
``KindHooks(run_summary=label_fidelity_summary)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyro_vae import fidelity
from pyro_vae.models import conditional, semisupervised  # register the kinds given hooks
from pyro_vae.registry import MODEL_KINDS


def label_fidelity_summary(vae: Any, data: Any, run_dir: str | Path, config: Any
                           ) -> dict[str, Any]:
    """The ``run_summary`` hook of a labelled kind: the fidelity of ``[evaluate]
    label_fidelity_samples`` samples per label (nothing when that is 0)."""
    samples = config.evaluate.label_fidelity_samples
    if not samples:
        return {}
    return fidelity.evaluate_label_fidelity(vae, data, run_dir, samples, config.train.seed)


for _kind in ("cvae", "m2"):
    MODEL_KINDS.add_hooks(_kind, run_summary=label_fidelity_summary)
