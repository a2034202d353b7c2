"""The score-function (REINFORCE) ELBO gradient, with a baseline — for teaching.

With z_k drawn from q and *not* differentiated through (no reparameterization),

    ∇ ELBO = E_q[ ∇ log w(z) + (log w(z) − b) ∇_φ log q_φ(z|x) ]

(Williams 1992; Ranganath, Gerrish & Blei 2014). The baseline b does not change the
expectation (E_q[∇_φ log q] = 0) but lowers the variance: with K ≥ 2 particles it is the
leave-one-out mean of the other particles' log w for the same datapoint; with one particle an
exponential running average of earlier training minibatches' mean log w (0 at the first step). Compare its gradient variance with ``elbo``'s to see
what the reparameterization trick buys.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from pyro_vae.objectives.particles import (PerDatapointObjective, guide_log_density,
                                           log_weights)


class ScoreFunctionELBO(PerDatapointObjective):
    """The K-particle ELBO with a score-function gradient and a baseline."""

    name = "score-function ELBO"

    def __init__(self, num_particles: int = 1, baseline_decay: float = 0.9, **kwargs: Any):
        super().__init__(num_particles=num_particles, **kwargs)
        self.baseline_decay = baseline_decay
        self.running_baseline: float | None = None

    def _baseline(self, log_w: torch.Tensor) -> torch.Tensor:
        num_particles = log_w.shape[0]
        if num_particles > 1:
            return (log_w.sum(0, keepdim=True) - log_w) / (num_particles - 1)
        # Only past batches enter the baseline (so it is independent of this draw), and only
        # training steps update it (so that evaluating the loss changes nothing).
        baseline = 0.0 if self.running_baseline is None else self.running_baseline
        if torch.is_grad_enabled():
            mean = float(log_w.detach().mean())
            self.running_baseline = mean if self.running_baseline is None else (
                self.baseline_decay * self.running_baseline + (1 - self.baseline_decay) * mean)
        return torch.full_like(log_w, baseline)

    def per_datapoint(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
                      ) -> tuple[torch.Tensor, torch.Tensor, float]:
        traces = self.traces(model, guide, args, kwargs, detach_samples=True)
        log_w = log_weights(traces)
        advantage = (log_w - self._baseline(log_w)).detach()
        surrogate = (log_w + advantage * guide_log_density(traces)).mean(0)
        return log_w.mean(0), surrogate, traces.data_scale
