"""Registering a model's networks with Pyro, once rather than on every step.

``pyro.module(name, module)`` puts every parameter of ``module`` in Pyro's param store under
``name$$$parameter`` and records a ``param`` site for each. Pyro's ``SVI`` needs both on every
call: its optimizer finds the parameters through those sites. The library's training path does
not: :class:`~pyro_vae.objectives.ObjectiveModule` owns the parameters and a ``torch.optim``
optimizer updates them directly, so re-registering some dozen tensors at every model and guide
call is pure overhead (about 0.3 ms a step for the MLP VAE on a CPU).

The models therefore call :func:`register_module` instead of ``pyro.module``. Outside
:func:`parameters_owned` it *is* ``pyro.module``. Inside, a module already in the param store
(its first parameter's name is there) is not registered again; one that is not yet there is
registered as usual, so the param store ends up holding the same tensors either way.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Iterator

import pyro
from pyro.params import param_with_module_name
from torch import nn

_OWNED: contextvars.ContextVar[bool] = contextvars.ContextVar("parameters_owned", default=False)


@contextlib.contextmanager
def parameters_owned() -> Iterator[None]:
    """Within this block the caller's optimizer owns the parameters: skip re-registration."""
    token = _OWNED.set(True)
    try:
        yield
    finally:
        _OWNED.reset(token)


#: The param-store name of each registered module's first parameter, remembered per (module,
#: registration name) so that a training step does not walk the module tree to find it.
_FIRST_NAMES: weakref.WeakKeyDictionary[nn.Module, dict[str, str]] = weakref.WeakKeyDictionary()


def _registered(name: str, module: nn.Module) -> bool:
    names = _FIRST_NAMES.setdefault(module, {})
    full_name = names.get(name)
    if full_name is None:
        first = next(module.named_parameters(), None)
        if first is None:  # nothing to register (not remembered: parameters may come later)
            return True
        full_name = names[name] = param_with_module_name(name, first[0])
    return full_name in pyro.get_param_store()


def register_module(name: str, module: nn.Module) -> nn.Module:
    """``pyro.module(name, module)``, skipped where it would change nothing (see above)."""
    if _OWNED.get() and _registered(name, module):
        return module
    return pyro.module(name, module)
