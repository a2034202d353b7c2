"""Anomaly scores that survive the likelihood failure, and the metrics that judge them.

A VAE trained on Fashion-MNIST gives MNIST digits a *higher* log p(x) than its own test images
(Nalisnick et al. 2019a, "Do deep generative models know what they don't know?"): simple images
with large flat backgrounds are cheap to code, whatever the model was trained on. The scores
below correct for that. Every per-image score follows one convention: **higher = more
anomalous**. Notation: log p̂_K(x) is the importance-sampled log-likelihood with K draws from
q(z|x) and ELBO(x) the evidence lower bound on the same draws (:mod:`pyro_vae.evaluate`).

``log-likelihood``
    s(x) = −log p̂_K(x). Fails in the hard direction (the failure above).
``elbo``
    s(x) = −ELBO(x) = −E_q[log p(x|z)] + KL(q(z|x) ‖ p(z)).
``regret`` — likelihood regret (Xiao, Yan & Amit 2020, "Likelihood Regret: an
out-of-distribution detection score for variational auto-encoder")
    s(x) = max_{μ, log σ} ELBO(x; μ, σ) − ELBO(x; μ(x), σ(x)),
    with ELBO(x; μ, σ) = E_ε[log p(x, z) − log N(z; μ, diag σ²)], z = μ + σ ⊙ ε, and the
    decoder fixed. The amortized encoder fits in-distribution images well, so re-fitting q to a
    single image gains little; for an image unlike the training data the gain is large. Here
    the per-image parameters (μ, log σ) of q are optimized directly (rather than the encoder's
    weights, as Xiao et al. do), starting from the encoder's output, for a fixed number of Adam
    steps, vectorized over a batch of images. Both ELBOs are estimated with the same S draws ε
    per image (common random numbers: a sample-average approximation), and the best iterate
    under that estimate is kept, so s(x) ≥ 0 by construction; its upward bias shrinks as S
    grows. Needs a model with one latent site ``z`` (not the two-layer model).
``complexity`` — input complexity (Serrà et al. 2020, "Input complexity and out-of-distribution
detection with likelihood-based generative models")
    s(x) = −log p̂_K(x) − L(x),
    L(x) = 8 ln 2 × (bytes of x quantized to 8 bits, losslessly compressed), in nats: the
    code length of a general-purpose compressor, a "universal" model p_0 with
    log p_0(x) = −L(x). s is the log-likelihood ratio log p_0(x) − log p(x): an image the VAE
    codes no better than the compressor does is anomalous, however simple. The compressor is
    PNG by default (Pillow; deflate after a per-row prediction filter), as in Serrà et al.;
    ``zlib`` deflates the raw 8-bit pixels. Which compressor stands in for p_0 changes the
    score (Serrà et al. compare PNG, JPEG 2000 and FLIF); the README gives both here.
``likelihood-ratio`` — background likelihood ratio (Ren et al. 2019, "Likelihood ratios for
out-of-distribution detection")
    s(x) = log p̂_bg(x) − log p̂_K(x),
    where the background model p_bg is the same VAE trained (with the library's own training
    function; by default for the run's own number of epochs, the budget validated for the
    default verdict) on perturbed training images: each pixel is replaced with probability
    μ = 0.2 by a uniform random value (a random bit for binary data; grey images, as a
    dynamically binarized run keeps them, are perturbed before they are binarized). The
    background model learns the population-level statistics (background pixels, stroke
    density) but not the semantics, so the ratio cancels what makes simple images likely
    everywhere. Trains a second model: only on request (``--background``), and then a part
    of the default verdict.
``ensemble`` and ``waic`` — the disagreement of M models of the same recipe trained from other
seeds (:mod:`pyro_vae.ensemble_score`; Choi, Jang & Alemi 2018): s(x) = Var_m log p̂_m(x), and
s(x) = −WAIC(x) = −E_m log p̂_m(x) + Var_m log p̂_m(x). Trains M − 1 more models: only on
request (``--ensemble M``). Offered to the default verdict as a part in the fourth round of
the validation study and rejected there (fainter images make the members *agree* more), so
they are scores of their own.
``transformations`` — transformation prediction (Golan & El-Yaniv 2018, "Deep anomaly detection
using geometric transformations"; :mod:`pyro_vae.transformation_score`): a small CNN f learns on
the training images which of 72 transformations T_j (a left-right flip or none, a move by 0 or
±¼ of the side each way, 0-3 quarter turns) was applied; s(x) = −(1/72) Σ_j
softmax(f(T_j(x)))_j. It reads orientation and position, which the density scores do not (a
flipped digit is coded about as well as an upright one). A part of the default verdict since
the sixth round of the validation study; its classifier is trained by default.
``features`` — the distance of the classifier's features (SSD, Sehwag, Chiang & Mittal 2021;
:mod:`pyro_vae.feature_score`): s(x) = (φ(x) − m)ᵀ Σ⁻¹ (φ(x) − m), φ the transformation
classifier's hidden layer for the untransformed image, m and Σ (Ledoit-Wolf) from half of the
validation images. What the image's shape does to the features, not the classifier's answer.
A part of the default verdict since the eighth round; computed whenever the classifier is.
``dose`` — density of states (Morningstar et al. 2021): s(x) = −log ρ̂(t(x)), a kernel density
estimate of summary statistics t(x) (log p(x), rate, distortion, posterior entropy, ‖μ‖) fitted
on half of the held-out in-distribution *validation* images (:mod:`pyro_vae.dose`).
``knn`` — deep nearest neighbours (Sun et al. 2022) on the code: s(x) = ‖u(x) − u_(k)(x)‖, the
distance from the standardized posterior mean u(x) = μ(x)/σ̂ to its k-th nearest code among the
same half of the validation images, k = ⌈√n⌉ (:mod:`pyro_vae.knn_score`): where the code
lands, which no score above looks at. Needs a model with ``latent_mean(x)`` of x alone.
``fisher`` — Fisher's combination (the default verdict): T(x) = −2 Σ_j log p_j(x) over the
in-distribution tail probabilities p_j of the run's scores among :data:`FISHER_PARTS`
(both tails for log p(x)), calibrated on the other half of the validation images
(:mod:`pyro_vae.fisher`, which also offers smoothed tails and Tippett's rule; the default was
chosen among them on validation shifts built from training images).
``typicality`` — a typicality test on batches (Nalisnick et al. 2019b, "Detecting
out-of-distribution inputs to deep generative models using typicality"), a *batch-level*
decision: for a batch x_1..x_M,
    ε̂ = | −(1/M) Σ_m log p̂_K(x_m) − Ĥ |,   Ĥ = −(1/N) Σ_n log p̂_K(x_n^train),
    and the batch is declared out of distribution when ε̂ > ε_α, the (1 − α) quantile of ε̂
    over B bootstrap batches of M in-distribution *validation* images. Data far from the
    typical set is caught whether it is less or more likely than typical data — which is what
    the likelihood misses in the hard direction. Reported: detection rate on out-of-distribution
    batches, false-alarm rate on in-distribution test batches (≈ α by design) and the
    batch-level AUROC of ε̂.

Metrics, with the out-of-distribution images as positives: AUROC (0.5 is chance; below 0.5 the
score points the wrong way), AUPRC (average precision) and the false-positive rate at 95 %
true-positive rate (the share of in-distribution images flagged when the threshold catches 95 %
of the anomalies; lower is better).
"""

from __future__ import annotations

import io
import math
import tempfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from pyro import poutine

from pyro_vae.config import Config
from pyro_vae.data import ImageData, is_binary
from pyro_vae.dose import DoSE, summary_statistics
from pyro_vae.ensemble_score import disagreement, member_log_likelihoods, negative_waic
from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import _any_weights, estimate_log_likelihood, gaussian_start
from pyro_vae.feature_score import MIN_FIT_IMAGES, FeatureDistance, classifier_features
from pyro_vae.fisher import MIN_CALIBRATION_IMAGES, FisherCombination, tail_p
from pyro_vae.knn_score import KNNScore, latent_codes
from pyro_vae.objectives.particles import _sample_sites
from pyro_vae.plots import save_figure, subplots
from pyro_vae.training import train
from pyro_vae.transformation_score import TransformationClassifier, transformation_scores

#: Per-image scores, in the order of the table and the figure.
PER_IMAGE_SCORES = ("log-likelihood", "elbo", "regret", "complexity", "likelihood-ratio",
                    "ensemble", "waic", "transformations", "features", "dose", "knn", "fisher")
#: Scores fitted on the run's held-out in-distribution (validation) images.
FITTED_SCORES = ("features", "dose", "knn", "fisher")
#: The scores Fisher's combination combines (those of them the run computes): log p(x) stands
#: for the likelihood (the ELBO is nearly the same score), each correction enters once. The
#: nearest-neighbour distance (``knn``) is not among them: it lost as a fifth part on the
#: validation shifts; the likelihood ratio won there, and enters whenever a background model
#: is given, and so did the transformation score (the sixth round) and the distance of the
#: transformation classifier's features (the eighth; :mod:`pyro_vae.fisher`).
FISHER_PARTS = ("log-likelihood", "regret", "complexity", "likelihood-ratio", "transformations",
                "features", "dose")
#: The scores read from the transformation classifier (trained by default; ``pyro-vae anomaly
#: --no-transformations`` leaves both out).
CLASSIFIER_SCORES = ("transformations", "features")
#: The default verdict.
DEFAULT_VERDICT = "fisher"
#: Every score, batch-level typicality last.
SCORES = (*PER_IMAGE_SCORES, "typicality")
#: Scores computed only when asked for: they train whole VAEs beside the run (a background
#: model, ensemble members). The transformation score's classifier is cheaper (a few minutes
#: on a CPU) and a part of the default verdict, so it is trained by default.
OPT_IN_SCORES = ("likelihood-ratio", "ensemble", "waic")
#: What ``pyro-vae anomaly`` computes without ``--score``.
DEFAULT_SCORES = tuple(s for s in SCORES if s not in OPT_IN_SCORES)
#: One line per score for tables and figures.
SCORE_LABELS = {
    "log-likelihood": "−log p(x)",
    "elbo": "−ELBO(x)",
    "regret": "likelihood regret",
    "complexity": "−log p(x) − L(x)",
    "likelihood-ratio": "log p_bg(x) − log p(x)",
    "ensemble": "Var_m log p_m(x)",
    "waic": "−WAIC(x)",
    "transformations": "−mean_j p(T_j | T_j(x))",
    "features": "Mahalanobis distance of φ(x)",
    "dose": "DoSE −log ρ̂(t(x))",
    "knn": "k-NN distance of μ(x)",
    "fisher": "Fisher T = −2 Σ log p_j",
    "typicality": "typicality ε̂ (batches)",
}


# --- metrics -----------------------------------------------------------------------------------

@dataclass
class DetectionMetrics:
    """How well a score (higher = more anomalous) separates anomalies from normal data."""

    auroc: float
    auprc: float
    fpr_at_95_tpr: float


def false_positive_rate_at(normal: torch.Tensor, anomalous: torch.Tensor,
                           true_positive_rate: float = 0.95) -> float:
    """Share of ``normal`` scores at or above the highest threshold that flags at least
    ``true_positive_rate`` of the ``anomalous`` scores."""
    ordered = torch.sort(anomalous.double(), descending=True).values
    needed = math.ceil(true_positive_rate * len(ordered) - 1e-9)
    threshold = ordered[max(needed, 1) - 1]
    return float((normal.double() >= threshold).double().mean())


def detection_metrics(normal: torch.Tensor, anomalous: torch.Tensor) -> DetectionMetrics:
    """AUROC, AUPRC (average precision) and FPR at 95 % TPR, anomalies as positives."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    scores = np.r_[normal.double().numpy(), anomalous.double().numpy()]
    return DetectionMetrics(float(roc_auc_score(labels, scores)),
                            float(average_precision_score(labels, scores)),
                            false_positive_rate_at(normal, anomalous))


# --- input complexity --------------------------------------------------------------------------

def quantize(x: torch.Tensor) -> np.ndarray:
    """Images in [0, 1] as 8-bit integers (values outside are clipped)."""
    return np.clip(np.rint(x.detach().cpu().double().numpy() * 255.0), 0, 255).astype(np.uint8)


#: Lossless compressors for L(x): ``zlib`` deflates the raw 8-bit pixels (row after row);
#: ``png`` is Pillow's PNG (deflate after a per-row prediction filter, plus fixed headers).
COMPRESSORS = ("zlib", "png")


def compressed_length(x: torch.Tensor, image_shape: tuple[int, int, int],
                      compressor: str = "png") -> torch.Tensor:
    """L(x) in nats: 8 ln 2 × the compressed size in bytes of each row of ``x`` quantized to
    8 bits, by ``compressor`` (see :data:`COMPRESSORS`)."""
    channels, height, width = image_shape
    if compressor not in COMPRESSORS:
        raise ConfigError(f"unknown compressor {compressor!r}; choose "
                          f"{' or '.join(COMPRESSORS)}.")
    if compressor == "png" and channels not in (1, 3):
        raise ConfigError(f"PNG stores grey or RGB images, not {channels} channels; use "
                          "--compressor zlib.")
    pixels = quantize(x).reshape(len(x), channels, height, width)
    lengths = [len(_compress(image, compressor)) for image in pixels]
    return torch.tensor(lengths, dtype=torch.float64) * (8.0 * math.log(2.0))


def _compress(image: np.ndarray, compressor: str) -> bytes:
    """One ``[C, H, W]`` 8-bit image, compressed at the highest level."""
    if compressor == "zlib":
        return zlib.compress(np.ascontiguousarray(np.transpose(image, (1, 2, 0))).tobytes(), 9)
    array = image[0] if len(image) == 1 else np.transpose(image, (1, 2, 0))
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


# --- likelihood regret -------------------------------------------------------------------------

def check_regret_supported(vae: torch.nn.Module, x: torch.Tensor) -> None:
    """Raise :class:`ConfigError` unless q(z|x) is one Gaussian site ``z`` (re-fittable)."""
    if not hasattr(vae, "posterior"):
        raise ConfigError("likelihood regret re-fits q(z|x) = N(μ, σ²) per image and needs a "
                          "model with a Gaussian posterior; leave out --score regret.")
    with vae.scoring(), _any_weights(vae):
        trace = poutine.trace(vae.guide).get_trace(x[:1])
        start = gaussian_start(vae, x[:1]) if hasattr(vae, "posterior") else None
    names = [site["name"] for site in _sample_sites(trace)]
    if start is None:
        raise ConfigError("likelihood regret re-fits a diagonal Gaussian q(z|x) per image, and "
                          "this model's posterior(x) is neither a diagonal Gaussian nor built "
                          "on one (a guide of guides.py); leave out --score regret.")
    if names != ["z"]:
        raise ConfigError(f"likelihood regret re-fits one latent site 'z', but this model's "
                          f"guide has the sites {names} (e.g. the two-layer model); leave out "
                          "--score regret or use a one-layer model.")


def log_joint(vae: torch.nn.Module, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x_n, z_n) per row: the model run with its latent site ``z`` set to ``z``."""
    trace = poutine.trace(poutine.condition(vae.model, data={"z": z})).get_trace(x)
    return sum(site["fn"].log_prob(site["value"]) for site in _sample_sites(trace))


def _refit_elbo(vae: torch.nn.Module, x: torch.Tensor, eps: torch.Tensor, steps: int,
                learning_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(ELBO at the encoder's q, best ELBO over ``steps`` Adam steps on per-image (μ, log σ)),
    both on the fixed draws ``eps`` of shape ``[S, B, D]``."""
    draws, batch, dim = eps.shape
    with torch.no_grad():
        # The encoder's (μ, σ): the diagonal Gaussian that the refit starts from (the base
        # of the guide for the low-rank and IAF families of guides.py).
        start_loc, start_scale = gaussian_start(vae, x)
        loc = start_loc.detach().clone().requires_grad_(True)
        log_scale = start_scale.log().detach().clone().requires_grad_(True)
    x_repeated = x.expand(draws, *x.shape).reshape(draws * batch, -1)
    constant = 0.5 * dim * math.log(2 * math.pi)
    optimizer = torch.optim.Adam([loc, log_scale], lr=learning_rate)
    first = best = None
    for step in range(steps + 1):
        z = loc + log_scale.exp() * eps
        log_q = -0.5 * eps.pow(2).sum(-1) - log_scale.sum(-1) - constant
        elbo = (log_joint(vae, x_repeated, z.reshape(draws * batch, dim)).reshape(draws, batch)
                - log_q).mean(0)
        value = elbo.detach()
        first = value if first is None else first
        best = value if best is None else torch.fmax(best, value)  # a NaN step is passed over
        if step == steps:
            break
        grads = torch.autograd.grad(-elbo.sum(), [loc, log_scale])
        loc.grad, log_scale.grad = grads
        optimizer.step()
    return first, best


def likelihood_regret(vae: torch.nn.Module, x: torch.Tensor, steps: int = 50,
                      draws: int = 32, learning_rate: float = 0.1, batch_size: int = 250,
                      progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Likelihood regret per row of ``x``, in nats (see the module docstring); ≥ 0.

    ``steps`` Adam steps at ``learning_rate`` on each image's own (μ, log σ), ``draws`` common
    draws ε per image, ``batch_size`` images optimized together (independently: the ELBO is a
    sum over images, so each image's gradient is its own). The global torch seed sets ε.
    """
    check_regret_supported(vae, x)
    regrets = []
    with vae.scoring(), _any_weights(vae):
        for start in range(0, len(x), batch_size):
            batch = x[start: start + batch_size]
            dim = vae.posterior(batch[:1]).event_shape[-1]
            eps = torch.randn(draws, len(batch), dim, device=x.device, dtype=x.dtype)
            first, best = _refit_elbo(vae, batch, eps, steps, learning_rate)
            regrets.append((best - first).cpu())
            if progress is not None:
                progress(len(batch))
    return torch.cat(regrets)


# --- background model for the likelihood ratio -------------------------------------------------

def perturb(x: torch.Tensor, rate: float, generator: torch.Generator | None = None
            ) -> torch.Tensor:
    """Each pixel replaced with probability ``rate`` by a uniform random value in [0, 1] (by a
    random bit where ``x`` is binary): Ren et al.'s (2019) perturbation for the background."""
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"the perturbation rate {rate} must lie in [0, 1] (Ren et al. use "
                          "0.1 to 0.3).")
    flip = torch.rand(x.shape, generator=generator) < rate
    noise = torch.rand(x.shape, generator=generator)
    if is_binary(x):
        noise = (noise < 0.5).to(x.dtype)
    return torch.where(flip.to(x.device), noise.to(x.device, x.dtype), x)


@dataclass
class BackgroundSettings:
    """How the background model of the likelihood ratio is trained."""

    #: Probability μ that a training pixel is replaced by noise.
    rate: float = 0.2
    #: Training epochs (``pyro-vae anomaly`` gives the run's own: the validated budget).
    epochs: int = 1
    #: Images kept as the background run's own test split (scored once at the end of training).
    test_images: int = 200
    #: Importance samples for that final scoring.
    test_samples: int = 10

    def validate(self) -> None:
        if not 0.0 < self.rate < 1.0:
            raise ConfigError(f"--background-rate {self.rate} must lie strictly between 0 and "
                              "1 (Ren et al. use 0.1 to 0.3).")
        if self.epochs <= 0:
            raise ConfigError(f"--background-epochs must be a positive integer, not "
                              f"{self.epochs}.")


def train_background(config: Config, data: ImageData, run_dir: Path,
                     settings: BackgroundSettings, seed: int = 0) -> dict[str, object]:
    """Train the background model in ``run_dir`` with :func:`pyro_vae.training.train`: the same
    recipe as ``config``, on the training images of ``data`` perturbed at ``settings.rate``.

    The perturbed images go to the trainer as a temporary ``file:…npz`` dataset (8-bit, so
    the run's binarization applies to them as to the original data); it is deleted afterwards.
    Returns the background run's summary.
    """
    settings.validate()
    generator = torch.Generator().manual_seed(seed)
    shape = (-1, *data.image_shape)
    train_x = perturb(data.train_x.cpu(), settings.rate, generator)
    test_x = perturb(data.valid_x[: settings.test_images].cpu(), settings.rate, generator)
    # The labels go with them: M2, which scores log p(x) by summing its label out, trains
    # its background on the labelled share of them as it trained itself.
    labels = {} if data.train_y is None or data.valid_y is None else {
        "y": data.train_y.cpu().numpy(), "y_test": data.valid_y[: len(test_x)].cpu().numpy()}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "perturbed.npz"
        np.savez(path, x=quantize(train_x).reshape(shape), x_test=quantize(test_x).reshape(shape),
                 **labels)
        background = config.with_overrides({
            "data": {"dataset": f"file:{path}", "download": False},
            "train": {"epochs": settings.epochs, "seed": seed},
            "evaluate": {"num_samples": settings.test_samples}})
        return train(background, run_dir)


# --- typicality test ---------------------------------------------------------------------------

@dataclass
class TypicalityResult:
    """The batch-level typicality test of one out-of-distribution dataset."""

    batch_size: int
    alpha: float
    entropy_estimate: float
    threshold: float
    false_alarm_rate: float
    detection_rate: float
    batch_auroc: float
    num_batches_normal: int
    num_batches_against: int


def batch_statistic(log_likelihood: torch.Tensor, entropy: float, batch_size: int
                    ) -> torch.Tensor:
    """ε̂ = |−mean log p̂ − Ĥ| over consecutive non-overlapping batches (a partial last batch
    is dropped)."""
    count = len(log_likelihood) // batch_size
    if count == 0:
        raise ConfigError(f"the typicality test needs at least one batch of {batch_size} "
                          f"images, but only {len(log_likelihood)} were scored; raise --limit "
                          "or lower --typicality-batch.")
    means = log_likelihood[: count * batch_size].double().reshape(count, batch_size).mean(1)
    return (-means - entropy).abs()


def bootstrap_threshold(validation_log_likelihood: torch.Tensor, entropy: float,
                        batch_size: int, alpha: float = 0.01, num_bootstrap: int = 2000,
                        seed: int = 0) -> float:
    """ε_α: the (1 − α) quantile of ε̂ over bootstrap batches of ``batch_size`` validation
    images drawn with replacement."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(len(validation_log_likelihood), (num_bootstrap, batch_size),
                          generator=generator)
    stats = (-validation_log_likelihood.double()[index].mean(1) - entropy).abs()
    return float(torch.quantile(stats, 1.0 - alpha))


def typicality_test(train_log_likelihood: torch.Tensor,
                    validation_log_likelihood: torch.Tensor,
                    normal_log_likelihood: torch.Tensor, other_log_likelihood: torch.Tensor,
                    batch_size: int = 10, alpha: float = 0.01, seed: int = 0
                    ) -> tuple[TypicalityResult, torch.Tensor, torch.Tensor]:
    """The test of the module docstring: Ĥ from training images, ε_α by bootstrap on validation
    images, then batches of in-distribution test images (``normal``) and of the other data.
    Returns the result and ε̂ of each normal and each other batch."""
    entropy = float(-train_log_likelihood.double().mean())
    threshold = bootstrap_threshold(validation_log_likelihood, entropy, batch_size, alpha,
                                    seed=seed)
    normal = batch_statistic(normal_log_likelihood, entropy, batch_size)
    other = batch_statistic(other_log_likelihood, entropy, batch_size)
    result = TypicalityResult(
        batch_size=batch_size, alpha=alpha, entropy_estimate=entropy, threshold=threshold,
        false_alarm_rate=float((normal > threshold).double().mean()),
        detection_rate=float((other > threshold).double().mean()),
        batch_auroc=detection_metrics(normal, other).auroc,
        num_batches_normal=len(normal), num_batches_against=len(other))
    return result, normal, other


# --- all per-image scores at once --------------------------------------------------------------

@dataclass
class ScoreSettings:
    """Settings shared by the per-image scores."""

    num_samples: int = 100
    regret_steps: int = 50
    regret_draws: int = 32
    regret_learning_rate: float = 0.1
    compressor: str = "png"


def score_images(vae: torch.nn.Module, x: torch.Tensor, image_shape: tuple[int, int, int],
                 scores: tuple[str, ...], settings: ScoreSettings,
                 background: torch.nn.Module | None = None,
                 members: Sequence[torch.nn.Module] = (),
                 classifier: TransformationClassifier | None = None) -> dict[str, torch.Tensor]:
    """The per-image scores named in ``scores`` (higher = more anomalous), plus ``"_log_p"``
    (log p̂_K, which the typicality test uses). ``background`` is needed for
    ``likelihood-ratio``; ``members`` (the ensemble's other models: ``vae`` is the first
    member) for ``ensemble`` and ``waic``; ``classifier`` (:mod:`pyro_vae.
    transformation_score`) for ``transformations``."""
    unknown = [s for s in scores if s not in SCORES]
    if unknown:
        raise ConfigError(f"unknown score {unknown[0]!r}; choose from {', '.join(SCORES)}.")
    estimate = estimate_log_likelihood(vae, x, settings.num_samples)
    log_p = estimate.log_likelihood.double()
    result: dict[str, torch.Tensor] = {"_log_p": log_p, "_elbo": estimate.elbo.double()}
    if "log-likelihood" in scores:
        result["log-likelihood"] = -log_p
    if "elbo" in scores:
        result["elbo"] = -estimate.elbo.double()
    if "regret" in scores:
        result["regret"] = likelihood_regret(vae, x, settings.regret_steps,
                                             settings.regret_draws,
                                             settings.regret_learning_rate).double()
    if "complexity" in scores:
        result["complexity"] = -log_p - compressed_length(x, image_shape,
                                                           settings.compressor)
    if "likelihood-ratio" in scores:
        if background is None:
            raise ValueError("the likelihood ratio needs a background model")
        log_bg = estimate_log_likelihood(background, x, settings.num_samples).log_likelihood
        result["likelihood-ratio"] = log_bg.double() - log_p
    if "ensemble" in scores or "waic" in scores:
        if not members:
            raise ValueError("the ensemble scores need the ensemble's other members")
        log_ps = torch.cat([log_p[None],
                            member_log_likelihoods(members, x, settings.num_samples)])
        if "ensemble" in scores:
            result["ensemble"] = disagreement(log_ps)
        if "waic" in scores:
            result["waic"] = negative_waic(log_ps)
    if "transformations" in scores:
        if classifier is None:
            raise ValueError("the transformation score needs its classifier")
        result["transformations"] = transformation_scores(classifier, x)
    return result


def metrics_table(normal: dict[str, torch.Tensor], others: dict[str, dict[str, torch.Tensor]]
                  ) -> dict[str, dict[str, dict[str, float]]]:
    """``{other dataset: {score: {auroc, auprc, fpr_at_95_tpr}}}`` for the per-image scores."""
    return {name: {score: asdict(detection_metrics(normal[score], scores[score]))
                   for score in PER_IMAGE_SCORES if score in normal}
            for name, scores in others.items()}


# --- scores fitted on held-out in-distribution images ------------------------------------------

@dataclass
class Reference:
    """What the fitted scores learned from the run's validation images: the DoSE density and the
    bank of codes of the nearest-neighbour score (fitted on the first half), Fisher's combination
    and every score's reference values (the second)."""

    dose: DoSE | None
    fisher: FisherCombination | None
    scores: dict[str, torch.Tensor]
    knn: KNNScore | None = None
    features: FeatureDistance | None = None


def reference_halves(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed split of ``count`` reference images: (the half the densities and the bank of
    codes are fitted on, the half the tail probabilities are read from)."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[: count // 2], order[count // 2:]


def fewest_reference_images(score: str) -> int:
    """The fewest held-out in-distribution images a fitted score (:data:`FITTED_SCORES`) needs,
    split by :func:`reference_halves`: DoSE's density (cross-validated over its folds, two
    images a fold), the bank of codes and the feature score's mean and covariance are fitted
    on the first half, ``n // 2``; Fisher's
    tail probabilities are read from the second, ``n − n // 2``, which needs
    :data:`MIN_CALIBRATION_IMAGES` (DoSE, one of its parts, is then fitted too)."""
    if score == "dose":
        return 2 * (2 * DoSE().folds)
    if score == "knn":
        return 2 * 2
    if score == "features":
        return 2 * MIN_FIT_IMAGES
    if score == "fisher":
        return 2 * MIN_CALIBRATION_IMAGES - 1
    raise ValueError(f"{score!r} is not fitted on held-out images")


def score_with_reference(vae: torch.nn.Module, reference_x: torch.Tensor,
                         sets: dict[str, torch.Tensor], image_shape: tuple[int, int, int],
                         scores: tuple[str, ...], settings: ScoreSettings,
                         background: torch.nn.Module | None = None, seed: int = 0,
                         members: Sequence[torch.nn.Module] = (),
                         classifier: TransformationClassifier | None = None,
                         progress: Callable[[str, int], None] | None = None
                         ) -> tuple[dict[str, dict[str, torch.Tensor]], Reference]:
    """Every per-image score of ``scores`` on each of ``sets`` (name → images), the fitted ones
    (``features``, ``dose``, ``knn``, ``fisher``) included, and the :class:`Reference` they
    were fitted on.

    ``reference_x`` are held-out in-distribution images (the validation split), split in
    halves by a fixed permutation (:func:`reference_halves`): DoSE's density, the
    nearest-neighbour score's bank of codes and the feature score's mean and covariance
    (from ``classifier``, which ``features`` needs) are fitted on the first; the tail
    probabilities and Fisher's calibration, and the reference values that
    :func:`calibration` thresholds, come from the second. ``fisher`` combines the scores of
    :data:`FISHER_PARTS` that ``scores`` names. ``background``, ``members`` and ``classifier``
    are the extra models of :func:`score_images`. ``progress(name, count)`` is called before
    each set is scored (``"_reference"`` for ``reference_x``), for a caller's progress line.
    """
    plain = tuple(s for s in scores if s not in FITTED_SCORES)
    wanted = {**sets, "_reference": reference_x}
    scored = {}
    for name, x in wanted.items():
        if progress is not None:
            progress(name, len(x))
        scored[name] = score_images(vae, x, image_shape, plain, settings, background, members,
                                    classifier)
    fit_half, reference_half = reference_halves(len(reference_x), seed)
    dose = None
    if "dose" in scores:
        statistics = {name: summary_statistics(vae, wanted[name], values["_log_p"],
                                               values["_elbo"])[0]
                      for name, values in scored.items()}
        dose = DoSE(seed=seed).fit(statistics["_reference"][fit_half])
        for name, values in scored.items():
            values["dose"] = dose.score(statistics[name])
    knn = None
    if "knn" in scores:
        codes = {name: latent_codes(vae, wanted[name]) for name in scored}
        knn = KNNScore().fit(codes["_reference"][fit_half])
        for name, values in scored.items():
            values["knn"] = knn.score(codes[name])
    features = None
    if "features" in scores:
        if classifier is None:
            raise ConfigError("the feature score reads the transformation classifier's "
                              "features; pass the classifier (classifier=...).")
        found = {name: classifier_features(classifier, wanted[name]) for name in scored}
        features = FeatureDistance().fit(found["_reference"][fit_half])
        for name, values in scored.items():
            values["features"] = features.score(found[name])
    reference = {score: values[reference_half] for score, values in scored["_reference"].items()
                 if not score.startswith("_")}
    fisher = None
    if "fisher" in scores:
        parts = {s: reference[s] for s in FISHER_PARTS if s in reference}
        fisher = FisherCombination().fit(parts, seed=seed)
        for values in scored.values():
            values["fisher"] = fisher.statistic(values)
            values["_fisher_p"] = fisher.combined_p(values)
        reference["fisher"] = scored["_reference"]["fisher"][reference_half]
    scored.pop("_reference")
    return scored, Reference(dose, fisher, reference, knn, features)


def flagged(reference: Reference, score: str, values: dict[str, torch.Tensor],
            alpha: float) -> torch.Tensor:
    """The verdict of one score per image: its in-distribution tail probability below
    ``alpha`` (for ``fisher``, the combined p-value)."""
    if score == "fisher" and reference.fisher is not None:
        return values["_fisher_p"] < alpha
    return tail_p(reference.scores[score], values[score], score in ("log-likelihood", "elbo")
                  ) < alpha


def calibration(reference: Reference, normal: dict[str, torch.Tensor], alpha: float = 0.05
                ) -> dict[str, dict[str, float | bool]]:
    """Each score's false-positive rate on in-distribution images that it was not fitted on
    (the run's test images) at level ``alpha``, and whether that is within three binomial
    standard errors (plus the reference's granularity 1/(n+1)) of ``alpha``: *reliable*.
    With so few images that the tolerance reaches 0 or 1 (a score that never flags, or always
    does, would pass), nothing is judged: ``reliable`` is ``None``."""
    report = {}
    for score in reference.scores:
        rate = float(flagged(reference, score, normal, alpha).double().mean())
        count = len(normal[score])
        tolerance = (3.0 * math.sqrt(alpha * (1 - alpha) / count)
                     + 1.0 / (len(reference.scores[score]) + 1))
        judged = tolerance < min(alpha, 1.0 - alpha)
        report[score] = {"alpha": alpha, "false_positive_rate": rate, "tolerance": tolerance,
                         "reliable": abs(rate - alpha) <= tolerance if judged else None}
    return report


def disagreements(reference: Reference, others: dict[str, dict[str, torch.Tensor]],
                  alpha: float = 0.05, gap: float = 0.5) -> dict[str, dict[str, float]]:
    """The share of each other dataset flagged by each score, for the datasets on which the
    scores' verdicts disagree: one score flags at least ``gap`` more of it than another."""
    found = {}
    for name, values in others.items():
        shares = {score: float(flagged(reference, score, values, alpha).double().mean())
                  for score in reference.scores}
        if shares and max(shares.values()) - min(shares.values()) >= gap:
            found[name] = shares
    return found


# --- the figure --------------------------------------------------------------------------------

def save_histograms(path: Path, panels: list[tuple[str, torch.Tensor, dict[str, torch.Tensor],
                                                   str]], normal_name: str) -> None:
    """One panel per score: the in-distribution histogram against each other dataset's.

    ``panels``: (title, normal scores, {other name: scores}, x-axis label) per score.
    """
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for axis in axes.flat[len(panels):]:
        axis.set_visible(False)
    for axis, (title, normal, others, label) in zip(axes.flat, panels):
        values = torch.cat([normal, *others.values()]).double()
        low, high = (float(torch.quantile(values, q)) for q in (0.005, 0.995))
        if not high > low:
            low, high = float(values.min()) - 0.5, float(values.max()) + 0.5
        bins = np.linspace(low, high, 50)
        axis.hist(np.clip(normal.numpy(), low, high), bins=bins, alpha=0.55, density=True,
                  label=f"{normal_name} (in)")
        for name, scores in others.items():
            axis.hist(np.clip(scores.numpy(), low, high), bins=bins, alpha=0.55, density=True,
                      label=name)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel(label, fontsize=8)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=7)
    save_figure(figure, path)
