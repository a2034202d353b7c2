"""What a model kind adds to the objective it trains with: the label-conditional VAE's
label-independence penalty (:mod:`pyro_vae.objectives.label_independence`).

Models hold maths and import no objective, and the training loop names no kind, so the wiring
lives here, above both: this module gives the kind ``cvae`` its ``prepare`` hook (the kind's
own label checks, then the penalty where ``[kind] label_independence`` asks for it), the way
:mod:`pyro_vae.plots` gives kinds their pictures hooks.
"""

from __future__ import annotations

from typing import Any

from pyro.infer import ELBO

from pyro_vae.models import conditional
from pyro_vae.objectives.label_independence import with_label_independence
from pyro_vae.registry import MODEL_KINDS


def prepare_cvae(config: Any, data: Any, vae: conditional.ConditionalVAE, objective: ELBO
                 ) -> tuple[ELBO, None]:
    """The ``prepare`` hook of the kind ``cvae``: the data must have labels; the objective is
    the one configured, with the label-independence penalty added where ``[kind]
    label_independence`` asks for it."""
    objective, state = conditional.prepare(config, data, vae, objective)
    options = config.model.options_of("kind")
    return with_label_independence(objective, options["label_independence"],
                                   options["label_independence_weight"], vae.prior,
                                   options["num_classes"]), state


MODEL_KINDS.add_hooks("cvae", prepare=prepare_cvae)
