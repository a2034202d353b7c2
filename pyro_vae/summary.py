"""The scores of a trained model on one split: one function for ``train`` and ``evaluate``.

``train`` writes them into ``summary.json`` at the end of a run (with the run's epochs, steps
and times); ``pyro-vae evaluate`` prints them for any split. Both take them from
:func:`split_scores`: the mean ELBO and importance-sampled log-likelihood per datapoint with
their standard errors (:func:`~pyro_vae.evaluate.estimate_log_likelihood`), the active units
and KL (:func:`~pyro_vae.evaluate.latent_activity`, where the kind declares ``latent_means``)
and the kind's own entries (its ``test_summary`` hook: M2's classifier accuracy, the discrete
VAE's exact log p(x), ...).
"""

from __future__ import annotations

from typing import Any

import torch

from pyro_vae.config import Config
from pyro_vae.data import ImageData
from pyro_vae.evaluate import estimate_log_likelihood, latent_activity
from pyro_vae.grey_targets import grey_score_name
from pyro_vae.protocol import has, hooks


def model_labels(vae: torch.nn.Module, y: torch.Tensor | None) -> torch.Tensor | None:
    """The labels a conditional model is called with (``None`` for the others)."""
    return y if getattr(vae, "conditional", False) else None


def split_scores(config: Config, vae: torch.nn.Module, data: ImageData, split: str = "test",
                 num_samples: int | None = None, progress: Any = None,
                 targets: torch.Tensor | None = None, score_name: str | None = None
                 ) -> dict[str, Any]:
    """The scores of ``vae`` on the ``split`` of ``data`` with ``num_samples`` importance
    samples (default ``[evaluate] num_samples``); ``progress`` (optional) is told of the
    evaluation as :class:`pyro_vae.training.Progress` is. ``targets`` replaces the split's
    images (e.g. their grey levels, :mod:`pyro_vae.grey_targets`) and ``score_name`` says
    what the score then is."""
    x, y = data.split(split)
    if targets is not None:
        x = targets
    num_samples = num_samples or config.evaluate.num_samples
    if progress is not None:
        progress.start_evaluation(len(x), num_samples)
    estimate = estimate_log_likelihood(vae, x, num_samples, config.evaluate.max_chunk,
                                       progress=None if progress is None else progress.evaluated,
                                       y=model_labels(vae, y))
    if progress is not None:
        progress.end_evaluation()
    labels = y if has(config, "labels") else None  # q(z|x, y) takes y
    if labels is None and has(config, "classifier"):
        labels = vae.classify(x)  # unlabelled data: q(z|x, y) at the classifier's guess
    # A model without a latent code (the quadrant baseline) has no active units to count.
    activity = {"active_units": None} if not has(config, "latent_means") else \
        latent_activity(vae, x, labels)
    kind = hooks(config)
    if score_name is None:
        score_name = getattr(vae, "score_name", "log p(x)")
        if config.binarization == "grey":  # grey test images as Bernoulli targets
            score_name = grey_score_name(score_name)
    return {
        "dataset": config.data.dataset,
        "latent_dim": config.model.latent_dim,
        "test_elbo": estimate.mean_elbo,
        "test_elbo_stderr": estimate.elbo_stderr,
        "test_log_likelihood": estimate.mean_log_likelihood,
        "test_log_likelihood_stderr": estimate.log_likelihood_stderr,
        # Monte Carlo error of test_log_likelihood on these points (the stderr above is the
        # spread over test points); see pyro_vae.evaluate.
        "test_log_likelihood_mc_stderr": estimate.log_likelihood_mc_stderr,
        "num_importance_samples": estimate.num_samples,
        # What test_log_likelihood estimates: log p(x), log p(x|y), ...
        "score_name": score_name,
        "num_test_datapoints": len(x),
        **activity,
        **(kind.test_summary(vae, data, split, config) if kind.test_summary else {}),
    }
