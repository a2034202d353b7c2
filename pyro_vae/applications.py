"""What a trained VAE is used for: anomaly scores, imputing missing pixels, representations.

* **Anomaly detection** — :func:`auroc` of a score; the scores themselves (log p(x), ELBO,
  likelihood regret, input complexity, background likelihood ratio, typicality) and their
  metrics are in :mod:`pyro_vae.anomaly`.
* **Imputation** — given the observed pixels x_o of an image, fill the missing ones x_m with
  E[x_m | x_o] ≈ Σ_k w̃_k E[x_m | z_k], with z_k drawn from r(z) = ½ q(z | x̃) + ½ p(z) where
  x̃ fills the gaps with the mean image, and w_k ∝ p(x_o | z_k) p(z_k) / r(z_k) scoring only
  the observed pixels (self-normalized, defensive importance sampling of p(z | x_o)).
* **Representations** — a logistic-regression probe on the encoder means μ(x), and traversals
  that decode μ(x) with one latent coordinate swept across the prior's range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import encode_means
from pyro_vae.plots import save_image_grid

# --- anomaly detection -------------------------------------------------------------------------


def auroc(normal_scores: torch.Tensor, anomaly_scores: torch.Tensor) -> float:
    """Area under the ROC curve for "higher score = more anomalous" (0.5 is chance)."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.zeros(len(normal_scores)), np.ones(len(anomaly_scores))]
    return float(roc_auc_score(labels, np.r_[normal_scores.numpy(), anomaly_scores.numpy()]))


# --- imputation --------------------------------------------------------------------------------


def make_mask(num_images: int, image_shape: tuple[int, int, int], kind: str = "box",
              fraction: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Observed-pixel mask ``[N, P]`` (True = observed).

    ``box``: a centred square covering about ``fraction`` of each image is missing;
    ``random``: each pixel is missing with probability ``fraction``; ``bottom``: the bottom
    ``fraction`` of the rows is missing.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"--fraction {fraction} must lie strictly between 0 and 1.")
    channels, height, width = image_shape
    mask = torch.ones(num_images, channels, height, width, dtype=torch.bool)
    if kind == "random":
        generator = torch.Generator().manual_seed(seed)
        mask = torch.rand(mask.shape, generator=generator) >= fraction
    elif kind == "box":
        side_h, side_w = round(height * fraction ** 0.5), round(width * fraction ** 0.5)
        top, left = (height - side_h) // 2, (width - side_w) // 2
        mask[:, :, top: top + side_h, left: left + side_w] = False
    elif kind == "bottom":
        mask[:, :, height - round(height * fraction):, :] = False
    else:
        raise ConfigError(f"unknown mask {kind!r}; use box, random or bottom.")
    return mask.reshape(num_images, -1)


def _check_single_layer(vae) -> None:
    if getattr(vae, "upper_decoder", None) is not None:
        raise ConfigError("imputation needs p(z) in closed form; the two-stochastic-layer "
                          "model is not supported yet. Use a one-layer model.")


@torch.no_grad()
def impute(vae, x: torch.Tensor, observed: torch.Tensor, fill: torch.Tensor,
           num_samples: int = 200, batch_size: int = 100) -> torch.Tensor:
    """Observed pixels kept, missing ones replaced by E[x_m | x_o] (see the module docstring)."""
    _check_single_layer(vae)
    results = []
    for start in range(0, len(x), batch_size):
        xb, mb = x[start: start + batch_size], observed[start: start + batch_size]
        filled = torch.where(mb, xb, fill)
        q = vae.posterior(filled)
        prior = vae.prior(torch.Size([len(xb)]), xb.device, xb.dtype)
        # Defensive importance sampling (Hesterberg 1995): half the draws from q(z | x̃), half
        # from p(z), weighted by the mixture density, so that an encoder misled by the filled
        # gap cannot leave the posterior's support unexplored.
        from_q = q.sample((num_samples - num_samples // 2,))
        from_prior = prior.sample((num_samples // 2,))
        z = torch.cat([from_q, from_prior])
        proposal = torch.logaddexp(q.log_prob(z), prior.log_prob(z)) - math.log(2.0)
        if num_samples // 2 == 0:
            proposal = q.log_prob(z)
        output = vae.decoder_output(z)
        pixel_log_lik = vae.likelihood(output).base_dist.log_prob(xb)
        log_w = (pixel_log_lik * mb).sum(-1) + prior.log_prob(z) - proposal
        weights = torch.softmax(log_w, dim=0).unsqueeze(-1)
        expected = (weights * vae.likelihood.mean(output)).sum(0)
        results.append(torch.where(mb, xb, expected))
    return torch.cat(results)


@dataclass
class ImputationReport:
    model_mse: float
    baseline_mse: float
    num_images: int
    missing_fraction: float


def imputation_error(x: torch.Tensor, observed: torch.Tensor, imputed: torch.Tensor,
                     mean_image: torch.Tensor) -> ImputationReport:
    """Mean squared error over the missing pixels, for the VAE and the mean-image baseline."""
    missing = ~observed
    model = ((imputed - x) ** 2)[missing].mean()
    baseline = ((mean_image.expand_as(x) - x) ** 2)[missing].mean()
    return ImputationReport(float(model), float(baseline), len(x), float(missing.float().mean()))


def save_imputation_picture(path: Path, x: torch.Tensor, observed: torch.Tensor,
                            imputed: torch.Tensor, image_shape, count: int = 10) -> None:
    """Rows: originals, inputs with the missing pixels greyed out, imputations."""
    shown = torch.where(observed[:count], x[:count], torch.full_like(x[:count], 0.5))
    save_image_grid(path, torch.cat([x[:count], shown, imputed[:count]]), image_shape, count,
                    "originals, observed pixels (grey = missing), imputations")


# --- representations ---------------------------------------------------------------------------


def linear_probe_accuracy(vae, train_x: torch.Tensor, train_y: torch.Tensor,
                          test_x: torch.Tensor, test_y: torch.Tensor,
                          max_train: int = 10_000) -> float:
    """Test accuracy of a logistic regression on the encoder means μ(x)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    with torch.no_grad():
        train_features = encode_means(vae, train_x[:max_train])[0].cpu().numpy()
        test_features = encode_means(vae, test_x)[0].cpu().numpy()
    scaler = StandardScaler().fit(train_features)
    probe = LogisticRegression(max_iter=2000)
    probe.fit(scaler.transform(train_features), train_y[:max_train].cpu().numpy())
    return float(probe.score(scaler.transform(test_features), test_y.cpu().numpy()))


@torch.no_grad()
def save_traversals(path: Path, vae, x: torch.Tensor, image_shape, max_dims: int = 10,
                    steps: int = 9, span: float = 3.0, y: torch.Tensor | None = None
                    ) -> list[int]:
    """Decode μ(x) with one coordinate swept over [−span, span]; one row per latent dimension,
    the most active dimensions first. Returns the dimensions shown.

    A label-conditional model (cvae, M2) takes the labels ``y`` of ``x``: the rows are
    μ(x, y) decoded by p(x | z, y) with the first image's label y[0]."""
    loc = encode_means(vae, x, y=y)[0]
    activity = loc.var(0) if len(loc) > 1 else torch.ones(loc.shape[-1])
    dims = torch.argsort(activity, descending=True)[:max_dims].tolist()
    base = loc[0]
    values = torch.linspace(-span, span, steps, device=loc.device)
    codes = base.repeat(len(dims), steps, 1)
    for row, dim in enumerate(dims):
        codes[row, :, dim] = values
    codes = codes.reshape(-1, loc.shape[-1])
    images = vae.decode(codes) if y is None else vae.decode(codes, y[:1].expand(len(codes)))
    save_image_grid(path, images, image_shape, steps,
                    f"latent traversals: rows = dims {dims} (most active first), "
                    f"values {-span:g} … {span:g}")
    return dims
