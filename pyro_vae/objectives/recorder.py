"""Running a guide and replaying the model on its samples, without building Pyro traces.

``poutine.trace(guide)`` followed by ``poutine.trace(poutine.replay(model, guide_trace))`` is
how every Pyro ELBO starts. The traces are general (a graph of every site, param sites, copies
of each message, subsample sites pruned by copying the trace once more), and that generality
costs about as much Python time per step as a small VAE's arithmetic on a CPU. Once an
objective has checked, on a real Pyro trace, that a model/guide pair has the simple structure
it can handle, it can run the pair under :class:`SiteRecorder` instead: one messenger that
keeps the messages of the sample sites, in order, and replays the guide's values at the
model's latent sites exactly as ``poutine.replay`` does (same value, ``done`` so the model
draws nothing, the guide's ``infer``). Model and guide stay ordinary Pyro programs; plates,
``poutine.scale`` and every other handler inside them act as usual, so each recorded site has
the same ``fn``, ``value``, ``scale`` and ``mask`` its trace node would have. A name used by
two sample sites of one run raises Pyro's own error (``Multiple sample sites named ...``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

#: The sample sites of one run, by name, in the order they were drawn.
Sites = dict[str, dict]


class SiteRecorder(Messenger):
    """Keep every sample site's message; replay ``replay``'s values at latent sites."""

    def __init__(self, replay: Sites | None = None):
        super().__init__()
        self.replay = replay
        self.sites: Sites = {}

    def _pyro_sample(self, msg: dict) -> None:
        if self.replay is None or msg["is_observed"]:
            return
        guide_site = self.replay.get(msg["name"])
        if guide_site is not None:  # as poutine.replay: take the guide's value, draw nothing
            msg["value"] = guide_site["value"]
            msg["infer"] = guide_site["infer"]
            msg["done"] = True

    def _pyro_post_sample(self, msg: dict) -> None:
        # Outermost handlers post-process first: copy now, as poutine.trace does, so that what
        # an inner handler does to the message afterwards is not recorded.
        if not site_is_subsample(msg):
            if msg["name"] in self.sites:  # as poutine.trace does: a name names one site
                raise RuntimeError(f"Multiple {msg['type']} sites named '{msg['name']}'")
            self.sites[msg["name"]] = msg.copy()


class RecordedTrace(NamedTuple):
    """Recorded sample sites under the name Pyro's ``Trace`` gives them: ``nodes``."""

    nodes: Sites


def record(model: Callable, guide: Callable, args: tuple, kwargs: dict
           ) -> tuple[Sites, Sites]:
    """(model sites, guide sites) of one run of ``guide`` and of ``model`` replayed on it."""
    with SiteRecorder() as guide_recorder:
        guide(*args, **kwargs)
    with SiteRecorder(replay=guide_recorder.sites) as model_recorder:
        model(*args, **kwargs)
    return model_recorder.sites, guide_recorder.sites


def scaled_log_prob(site: dict) -> Any:
    """scale · log fn(value), masked: a trace node's ``log_prob`` (shape: the batch shape)."""
    log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(log_prob, site["scale"], site["mask"])
