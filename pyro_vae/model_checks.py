"""Checks of a model built in Python and handed to the training loop (:func:`pyro_vae.fit`),
made on entry, before the first step, on two training images.

* **The guide samples every latent site of the model.** An objective pairs each latent
  ``pyro.sample`` site of the model with the guide's site of the same name; a site the guide
  never samples is drawn from the model's own prior inside the replayed model, so the loss
  trains without complaint and the reported ELBO and log p(x) are wrong (the red team's guide
  without ``z``: a wrong log p(x), then "no latent code" from ``evaluate``). Sites summed out by
  enumeration (``infer={"enumerate": ...}``) need no guide site.
* **The factory rebuilds the model.** Every command rebuilds a run's model from its
  ``[model]`` table with the factory recorded as ``[model] kind`` and loads the checkpoint's
  weights into it; a factory that builds another model (``latent_dim`` 6 recorded, 4 trained)
  would make every command refuse the run after training. The rebuilt model's parameter names
  and shapes must equal the trained model's.

Both run under :func:`torch.random.fork_rng`, so a run's random stream is the same as without
them.
"""

from __future__ import annotations

from typing import Any

import pyro
import torch
from pyro import poutine

from pyro_vae.config import Config
from pyro_vae.errors import ConfigError
from pyro_vae.models import build_vae


def latent_sites_without_guide(model: Any, x: torch.Tensor) -> list[str]:
    """The latent sample sites of ``model.model(x)`` that ``model.guide(x)`` does not sample."""
    guide_trace = poutine.trace(model.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x)
    guided = {name for name, site in guide_trace.nodes.items() if site["type"] == "sample"}
    return [name for name, site in model_trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
            and not site["infer"].get("enumerate") and name not in guided]


def parameter_differences(trained: torch.nn.Module, rebuilt: torch.nn.Module) -> list[str]:
    """How the parameters (names and shapes) of ``rebuilt`` differ from ``trained``'s."""
    mine = {name: tuple(t.shape) for name, t in trained.state_dict().items()}
    again = {name: tuple(t.shape) for name, t in rebuilt.state_dict().items()}
    differ = [f"{name}: {mine[name]} trained, {again[name]} rebuilt"
              for name in mine if name in again and mine[name] != again[name]]
    differ += [f"{name} missing from the rebuilt model" for name in mine if name not in again]
    differ += [f"{name} only in the rebuilt model" for name in again if name not in mine]
    return differ


def check_given_model(model: torch.nn.Module, config: Config, x: torch.Tensor,
                      image_shape: tuple[int, int, int], num_data: int) -> None:
    """Refuse, in one paragraph, a model whose guide leaves a latent site out or whose
    factory (``config.model.kind``) rebuilds a different model; ``x``: a few training images."""
    kind = config.model.kind
    with torch.random.fork_rng(devices=[]), pyro.validation_enabled(False):
        try:
            with torch.no_grad():
                missing = latent_sites_without_guide(model, x[:2])
        except Exception as error:  # the user's own model or guide failed
            raise ConfigError(f"running the model and guide of {kind} on two training images "
                              f"failed ({type(error).__name__}: {error}); fix them before "
                              "training (model(x) and guide(x) take a batch of images).") from None
        if missing:
            names = ", ".join(repr(name) for name in missing)
            raise ConfigError(
                f"the guide of {type(model).__name__} never samples the latent site(s) {names} "
                "that its model samples: the objective would draw them from the prior inside "
                "the model, train without error and report a wrong ELBO and log p(x). Sample "
                "each latent site of the model in the guide, under the same name (pyro.sample("
                f"{missing[0]!r}, q)), or observe it in the model.")
        rebuilt = build_vae(config.model, image_shape, num_data)
    differ = parameter_differences(model, rebuilt)
    if differ:
        raise ConfigError(
            f"the factory {kind} rebuilds a different model from the run's [model] table than "
            f"the one being trained ({'; '.join(differ[:3])}{'; …' if len(differ) > 3 else ''}),"
            " so no command could load the run afterwards. Pass fit the [model] values the model "
            "was built with (options={\"model\": {\"latent_dim\": ..., ...}}), or make the "
            "factory read them from its config argument.")
