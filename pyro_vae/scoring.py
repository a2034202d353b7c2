"""What the final scoring of a training run costs, and how much of it to do.

Scoring N test images with K importance samples decodes N·K samples; at c seconds per decoded
sample it takes about T(N, K) = N·K·c. c is measured on one chunk of the first test images
(the *pilot*, :func:`seconds_per_sample`), with the random state put back afterwards, so the
pilot changes no figure. A first run of a few seconds' training on MNIST would otherwise spend
over ten minutes on N = 10,000 and K = 5000.

``[evaluate] scoring`` says how much to do (:func:`plan_scoring`):

* ``"auto"`` (the default): the scoring costs about the training's own time B, or less
  (B = the training's seconds, at least :data:`MIN_BUDGET_SECONDS`). Where T(N, K) > B, K is
  lowered first, to K' = B / (N c) but not below :data:`MIN_AUTO_SAMPLES`: the estimate
  log p̂_K(x) is biased low by about Var[w] / (2 K E[w]²) (Maddison et al. 2017; Nowozin
  2018), a bias that shrinks like 1/K, while its spread over test points does not depend on
  K. Where even K' is too dear, only the first N' = B / (K' c) test images are scored, but not
  fewer than :data:`MIN_AUTO_DATAPOINTS`.
* ``"full"``: every test image with ``num_samples`` (the papers' protocol: Burda et al. 2016
  score with K = 5000, and their recipes ask for it); the expected time T(N, K) is reported
  before the scoring starts.

Where N·K is at most :data:`PILOT_FREE_SAMPLES` (a few seconds of decoding) nothing is
measured and everything is scored: small runs give the same figures on every machine.

What was scored and what was asked are in ``summary.json`` (``num_test_datapoints``,
``num_importance_samples``, ``scoring``, ``scoring_reduced``, ``scoring_requested_datapoints``,
``scoring_requested_samples``, ``scoring_estimated_seconds``), beside the Monte Carlo error
of the estimate (``test_log_likelihood_mc_stderr``, :mod:`pyro_vae.evaluate`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from pyro_vae.data import ImageData
from pyro_vae.evaluate import estimate_log_likelihood

#: The least time budget of ``"auto"``, in seconds (a very short training still gets this).
MIN_BUDGET_SECONDS = 30.0
#: ``"auto"`` lowers K no further than this (nor above ``num_samples``).
MIN_AUTO_SAMPLES = 100
#: ``"auto"`` scores at least this many test images (or all, if there are fewer).
MIN_AUTO_DATAPOINTS = 1000
#: N·K at or below which the scoring is planned without a pilot (it is cheap whatever c is).
PILOT_FREE_SAMPLES = 2_000_000
#: Decoded samples in the pilot (one chunk at the default ``max_chunk``).
PILOT_SAMPLES = 20_000


@dataclass(frozen=True)
class ScoringPlan:
    """The first ``num_datapoints`` test images with ``num_samples`` importance samples, of
    the ``requested_datapoints`` and ``requested_samples`` asked for; ``seconds_per_sample``
    is the pilot's c (``None``: no pilot was needed) and ``budget_seconds`` the time that
    ``"auto"`` keeps to."""

    mode: str
    num_datapoints: int
    num_samples: int
    requested_datapoints: int
    requested_samples: int
    seconds_per_sample: float | None = None
    budget_seconds: float | None = None

    @property
    def reduced(self) -> bool:
        """Whether less than what was asked is scored."""
        return (self.num_datapoints, self.num_samples) != (self.requested_datapoints,
                                                            self.requested_samples)

    def seconds(self, datapoints: int | None = None, samples: int | None = None
                ) -> float | None:
        """The expected time of scoring ``datapoints`` images with ``samples`` samples each
        (default: this plan's), or ``None`` without a pilot."""
        if self.seconds_per_sample is None:
            return None
        return ((datapoints or self.num_datapoints) * (samples or self.num_samples)
                * self.seconds_per_sample)

    def summary_entries(self) -> dict[str, Any]:
        """What ``summary.json`` records of the plan."""
        seconds = self.seconds()
        return {"scoring": self.mode, "scoring_reduced": self.reduced,
                "scoring_requested_datapoints": self.requested_datapoints,
                "scoring_requested_samples": self.requested_samples,
                "scoring_estimated_seconds": None if seconds is None else round(seconds, 1)}

    def message(self, train_seconds: float | None, run_dir: str) -> str | None:
        """What to tell the user before the scoring starts (``None``: nothing worth saying,
        a scoring too small to have been timed); ``train_seconds`` is the training's time
        (``None`` when scoring a trained run)."""
        if self.seconds_per_sample is None:
            return None
        what = (f"all {self.num_datapoints:,} test images" if not self.reduced or
                self.num_datapoints == self.requested_datapoints else
                f"the first {self.num_datapoints:,} of {self.requested_datapoints:,} test images")
        text = (f"scoring {what} with K = {self.num_samples} importance samples: about "
                f"{duration(self.seconds())}")
        if train_seconds is not None:
            text += f" (the training took {duration(train_seconds)})"
        if self.reduced:
            full = self.seconds(self.requested_datapoints, self.requested_samples)
            text += (f"; K = {self.requested_samples} on all {self.requested_datapoints:,} "
                     f"would take about {duration(full)}, as `pyro-vae evaluate {run_dir} "
                     f"--num-samples {self.requested_samples}` or a recipe with [evaluate] "
                     "scoring = \"full\" does")
        return text + "."


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def plan_scoring(num_datapoints: int, num_samples: int, mode: str,
                 seconds_per_sample: float | None, budget_seconds: float) -> ScoringPlan:
    """The plan for scoring ``num_datapoints`` images with ``num_samples`` samples in
    ``mode`` (see the module docstring), given the pilot's seconds per decoded sample
    (``None`` where none was run: everything is scored)."""
    plan = ScoringPlan(mode, num_datapoints, num_samples, num_datapoints, num_samples,
                       seconds_per_sample, budget_seconds if mode == "auto" else None)
    if mode == "full" or seconds_per_sample is None \
            or num_datapoints * num_samples * seconds_per_sample <= budget_seconds:
        return plan
    per_image = budget_seconds / seconds_per_sample  # samples the budget pays for
    samples = min(num_samples, max(MIN_AUTO_SAMPLES, math.floor(per_image / num_datapoints)))
    datapoints = min(num_datapoints, max(MIN_AUTO_DATAPOINTS, math.floor(per_image / samples)))
    return ScoringPlan(mode, datapoints, samples, num_datapoints, num_samples,
                       seconds_per_sample, budget_seconds)


def seconds_per_sample(vae: torch.nn.Module, x: torch.Tensor, num_samples: int,
                       max_chunk: int | str, y: torch.Tensor | None = None) -> float:
    """The pilot: seconds per decoded sample of scoring the first images of ``x`` (about
    :data:`PILOT_SAMPLES` samples), with torch's random state put back afterwards."""
    count = max(1, min(len(x), PILOT_SAMPLES // num_samples))
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        started = time.perf_counter()
        estimate_log_likelihood(vae, x[:count], num_samples, max_chunk,
                                y=None if y is None else y[:count])
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        return (time.perf_counter() - started) / (count * num_samples)


def plan_final_scoring(vae: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None,
                       num_samples: int, mode: str, max_chunk: int | str,
                       train_seconds: float) -> ScoringPlan:
    """The plan for a training run's final scoring of the test images ``x`` (labels ``y``,
    those the model is called with), timing a pilot where the scoring is not small
    (``pyro-vae evaluate`` plans its scoring with ``mode="full"``: it scores what it is
    asked, and says first how long that takes)."""
    pilot = None
    if len(x) * num_samples > PILOT_FREE_SAMPLES:
        pilot = seconds_per_sample(vae, x, num_samples, max_chunk, y)
    return plan_scoring(len(x), num_samples, mode, pilot,
                        max(train_seconds, MIN_BUDGET_SECONDS))


def first_test_images(data: ImageData, count: int) -> ImageData:
    """``data`` with only the first ``count`` images (and labels) of its test split."""
    cut = lambda t: None if t is None else t[:count]  # noqa: E731
    return dataclasses.replace(
        data, test_x=data.test_x[:count], test_y=cut(data.test_y),
        intensities={k: (v[:count] if k == "test" else v) for k, v in data.intensities.items()})
