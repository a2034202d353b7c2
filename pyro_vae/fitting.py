"""Train a model/guide pair built in Python with the library's loop, into a normal run.

    import pyro_vae
    summary = pyro_vae.fit(my_model, data="digits", factory="mypkg.models:build",
                           objective="iwae", particles=5, epochs=20, out="runs/mine")

:func:`fit` gives a model of one's own everything ``pyro-vae train`` gives the built-in ones:
progress hooks, an atomic checkpoint every epoch, exact resume, NaN handling (``on_nan``),
``metrics.jsonl``, the test-set score in ``summary.json``, pictures where the model declares
them, and a ``config.toml`` from which every command (``evaluate``, ``sample``, ``compare``,
``gaps``, ...) rebuilds it. The rebuilding is the ``factory``: an import path
``"package.module:function"`` of a function ``(model_config, image_shape, num_data) ->
model`` recorded as the run's ``[model] kind``; the model itself follows
:class:`pyro_vae.protocol.Model` and the function may carry a ``capabilities`` attribute (see
:mod:`pyro_vae.protocol`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import nn

from pyro_vae.config import Config
from pyro_vae.errors import ConfigError
from pyro_vae.protocol import check_model
from pyro_vae.registry import MODEL_KINDS
from pyro_vae.training import Progress, train


def factory_path(factory: str | Callable[..., Any]) -> str:
    """``"package.module:function"`` for a factory given as a path or as an importable
    function (not a lambda, not defined in ``__main__`` or inside another function)."""
    if isinstance(factory, str):
        return factory
    module, name = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
    if not module or module == "__main__" or "<" in name:
        raise ConfigError(
            f"the model factory {factory!r} cannot be imported again by the commands that load "
            "the run (it is a lambda, a nested function or defined in __main__); define it at "
            "the top level of an importable module and pass it (or \"module:function\").")
    return f"{module}:{name}"


def fit(model: nn.Module | Callable[..., Any], guide: Callable[..., Any] | None = None,
        data: str = "digits", *, factory: str | Callable[..., Any], out: str | Path,
        objective: str = "elbo", epochs: int = 10, particles: int = 1,
        batch_size: int = 64, learning_rate: float = 1e-3, seed: int = 0,
        eval_samples: int = 1000, resume: bool = False, progress: Progress | bool | None = None,
        options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Train ``model`` (an ``nn.Module`` with ``model`` and ``guide`` methods, or its bound
    ``model`` method with ``guide`` its bound ``guide``) on the dataset ``data`` and write the
    run directory ``out``; returns the summary.

    ``factory`` rebuilds an untrained copy of the model from the run's ``[model]`` table (see
    the module docstring). ``options`` are further recipe values, e.g. ``{"model":
    {"latent_dim": 2}, "train": {"on_nan": "rollback"}}``. ``resume=True`` continues the run in
    ``out`` (the weights come from its checkpoint).
    """
    module = _module_of(model, guide)
    if not isinstance(data, str):
        raise ConfigError(
            f"fit's data names a dataset; it was given a {type(data).__name__}. Pass a "
            "registered dataset's name (\"digits\", \"mnist\", \"fashion-mnist\", ...) or "
            "\"file:PATH.npz\" for arrays of your own: save them first with numpy.savez(PATH, "
            "x=images, y=labels) (optional x_test, y_test; uint8 or values in [0, 1]).")
    kind = factory_path(factory)
    check_model(module, MODEL_KINDS.capabilities(kind), f"the model {type(module).__name__} "
                f"(factory {kind})")
    config = Config().with_overrides({
        "data": {"dataset": data},
        "model": {"kind": kind},
        "train": {"objective": objective, "epochs": epochs, "particles": particles,
                  "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed},
        "evaluate": {"num_samples": eval_samples},
    })
    if options:
        config = config.with_overrides(options)
    return train(config, out, resume=resume, progress=progress, model=module)


def _module_of(model: nn.Module | Callable[..., Any], guide: Callable[..., Any] | None
               ) -> nn.Module:
    owner = model if isinstance(model, nn.Module) else getattr(model, "__self__", None)
    if not isinstance(owner, nn.Module):
        raise ConfigError("fit trains the parameters of one nn.Module: pass the module (with "
                          "model and guide methods) or its bound methods module.model and "
                          "module.guide.")
    if guide is not None and getattr(guide, "__self__", owner) is not owner:
        raise ConfigError("fit's model and guide must be methods of the same nn.Module, which "
                          "holds the parameters of both.")
    for name in ("model", "guide"):
        if not callable(getattr(owner, name, None)):
            raise ConfigError(f"{type(owner).__name__} has no {name} method; a model for fit is "
                              "an nn.Module with model(x, y=None) and guide(x, y=None).")
    if not inspect.signature(owner.model).parameters:
        raise ConfigError("the model takes no arguments; it must take the data x.")
    return owner
