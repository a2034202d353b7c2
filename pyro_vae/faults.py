"""Numerical faults: find which term of the objective went NaN or infinite, and say so."""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_vae.errors import TrainingError

_TERMS = {("model", "x"): "log p(x|z), the likelihood", ("model", "z"): "log p(z), the prior",
          ("guide", "z"): "log q(z|x), the encoder's posterior"}


def nonfinite_parameters(module: torch.nn.Module, gradients: bool = False) -> list[str]:
    """Names of parameters whose values (or gradients) hold NaN or ±inf."""
    bad = []
    for name, param in module.named_parameters():
        tensor = param.grad if gradients else param
        if tensor is not None and not torch.isfinite(tensor).all():
            bad.append(name)
    return bad


@torch.no_grad()
def nonfinite_terms(vae, x: torch.Tensor) -> list[str]:
    """The model and guide sites whose log-density (or sampled value) is not finite on ``x``."""
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    found = []
    for role, trace in (("guide", guide_trace), ("model", model_trace)):
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            log_prob = site["fn"].log_prob(site["value"])
            broken = ~torch.isfinite(log_prob)
            if broken.any() or not torch.isfinite(site["value"]).all():
                term = _TERMS.get((role, site["name"]), f"site {site['name']!r} in the {role}")
                found.append(f"{term} (not finite for {int(broken.sum())} of "
                             f"{log_prob.numel()} datapoints)")
    return found


def nonfinite_loss_error(vae, x: torch.Tensor, loss: float, grad_norm: float, epoch: int,
                         step: int, last_good: str, resumable: bool = True,
                         rolled_back: bool = False) -> TrainingError:
    """A one-paragraph :class:`TrainingError` naming the step, the bad terms and what to do."""
    what = f"the loss became {loss:g}" if loss != loss or abs(loss) == float("inf") else \
        f"the gradient norm became {grad_norm:g} (loss {loss:g})"
    terms = nonfinite_terms(vae, x)
    params = nonfinite_parameters(vae) or nonfinite_parameters(vae, gradients=True)
    detail = []
    if terms:
        detail.append("bad terms: " + "; ".join(terms))
    if params:
        shown = ", ".join(params[:4]) + (" …" if len(params) > 4 else "")
        detail.append(f"non-finite parameters or gradients: {shown}")
    return TrainingError(
        f"{what} at epoch {epoch}, step {step}"
        + (f" ({'; '.join(detail)})" if detail else "")
        + f". The parameters were not updated with it. The last good state is {last_good}. "
        + ("Lower the learning rate and continue with `pyro-vae train --out RUN_DIR --resume "
           "--lr SMALLER`" if resumable else
           "Nothing was saved yet: train again with a smaller --lr into the same --out")
        + ("; rolling back and halving the rate did not help either, so check the data and "
           "the model." if rolled_back else
           ", or set [train] on_nan = \"rollback\" (--on-nan rollback) to have training step "
           "back and halve the rate by itself.")
    )
