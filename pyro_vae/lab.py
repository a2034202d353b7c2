"""The estimator lab: bound values, gradient variance and signal-to-noise ratio, side by side.

For one VAE and one fixed minibatch, every (objective, K) pair is measured on the same batch
with the same seed:

* the bound per datapoint (its mean over ``repeats`` independent draws, with the standard
  error of that mean);
* the gradient of the per-datapoint loss, drawn ``repeats`` times, split into the encoder's
  (guide) and the decoder's (model) parameters: its variance (averaged over parameters) and its
  signal-to-noise ratio SNR = |E[g]| / std[g] per parameter, averaged over parameters
  (Rainforth et al. 2018, "Tighter Variational Bounds are Not Necessarily Better", ICML);
* the wall time of one loss-and-gradient evaluation (median over the draws).

Rainforth et al. show that IWAE's encoder SNR falls as O(1/√K) while the decoder's rises as
O(√K); Tucker et al. (2019) show that DReG's encoder SNR does not fall.

On a model with discrete latents small enough to enumerate (``kind = "discrete"`` with at most
``MAX_ENUMERATED_CODES`` codes) the exact gradient g* of the ELBO is known: it is what objective
``enumerate`` (``TraceEnum_ELBO``) computes, with no sampling. Each row then also carries the
relative bias of the estimator's mean gradient, per part,

    bias = √max(0, ‖ḡ − g*‖² − tr Cov(g)/R) / ‖g*‖

(the squared distance of the mean of R draws, less its expected noise), which is 0 for the
unbiased score-function estimators up to noise and measures what a relaxation costs. For
``vimco`` and ``iwae`` at K > 1, g* is still the ELBO's gradient, not their bound's. The
relaxed objectives (``concrete``, ``straight_through``) are measured at each of
``temperatures`` and labelled ``concrete@τ``; ``vimco`` needs K ≥ 2 and ``enumerate``, exact,
is measured once.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from pyro_vae.config import MAX_ENUMERATED_CODES
from pyro_vae.objectives import PerDatapointObjective, is_lower_bound, make_objective
from pyro_vae.plots import save_figure, subplots

#: Objectives with a temperature, measured at each of the lab's temperatures.
RELAXED = ("concrete", "straight_through")


@dataclass
class EstimatorReport:
    """One row of the lab's table."""

    objective: str
    particles: int
    bound: float
    bound_stderr: float
    encoder_grad_variance: float
    encoder_snr: float
    decoder_grad_variance: float
    decoder_snr: float
    ms_per_step: float
    #: Whether the objective is a lower bound on log p(x) in expectation (Rényi with α < 0
    #: is not: it can lie above log p(x)).
    lower_bound: bool = True
    #: Relative bias of the mean gradient against the exact one (discrete, enumerable models).
    encoder_bias: float | None = None
    decoder_bias: float | None = None


def _batch_bound(objective, vae, x: torch.Tensor) -> float:
    """The objective's bound averaged over the datapoints of ``x`` (one draw)."""
    with torch.no_grad():
        if isinstance(objective, PerDatapointObjective):
            return float(objective.per_datapoint(vae.model, vae.guide, x)[0].mean())
        return -float(objective.loss(vae.model, vae.guide, x)) / len(x)


def _gradient_draw(objective, vae, x: torch.Tensor, groups: list[list[torch.nn.Parameter]]
                   ) -> list[torch.Tensor]:
    loss = objective.differentiable_loss(vae.model, vae.guide, x) / len(x)
    params = [p for group in groups for p in group]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat = [torch.zeros(p.numel()) if g is None else g.detach().reshape(-1)
            for g, p in zip(grads, params)]
    out, start = [], 0
    for group in groups:
        out.append(torch.cat(flat[start: start + len(group)]))
        start += len(group)
    return out


def _variance_and_snr(draws: torch.Tensor) -> tuple[float, float]:
    mean, std = draws.mean(0), draws.std(0)
    informative = std > 0
    snr = (mean.abs()[informative] / std[informative]).mean() if informative.any() else \
        torch.tensor(math.inf)
    return float(draws.var(0).mean()), float(snr)


def _parameter_groups(vae) -> list[list[torch.nn.Parameter]]:
    """The model's declared groups (capability ``estimator_lab``: ``parameter_groups()``),
    the inference network's and the generative model's, trainable parameters only."""
    return [[p for p in group if p.requires_grad] for group in vae.parameter_groups()]


def exact_gradient(vae, x: torch.Tensor) -> list[torch.Tensor] | None:
    """The exact ELBO gradient (encoder, decoder) by enumeration, where the model's discrete
    code is small enough; ``None`` for other models."""
    if getattr(vae, "num_configurations", math.inf) > MAX_ENUMERATED_CODES:
        return None
    return _gradient_draw(make_objective("enumerate"), vae, x, _parameter_groups(vae))


def _relative_bias(draws: torch.Tensor, reference: torch.Tensor) -> float:
    squared = float(((draws.mean(0) - reference) ** 2).sum() - draws.var(0).sum() / len(draws))
    return math.sqrt(max(0.0, squared)) / max(float(reference.norm()), 1e-30)


def measure_estimator(vae, x: torch.Tensor, objective_name: str, particles: int,
                      repeats: int = 100, seed: int = 0, alpha: float = 0.5,
                      temperature: float = 1.0,
                      reference: list[torch.Tensor] | None = None) -> EstimatorReport:
    """Bound, gradient variance/SNR (encoder, decoder) and time of one estimator; with the
    exact gradient ``reference`` (encoder, decoder), also the relative bias."""
    objective = make_objective(objective_name, particles, alpha, temperature=temperature)
    groups = _parameter_groups(vae)
    torch.manual_seed(seed)
    bounds = torch.tensor([_batch_bound(objective, vae, x) for _ in range(repeats)])
    torch.manual_seed(seed)
    encoder_draws, decoder_draws, seconds = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        encoder_grad, decoder_grad = _gradient_draw(objective, vae, x, groups)
        seconds.append(time.perf_counter() - started)
        encoder_draws.append(encoder_grad)
        decoder_draws.append(decoder_grad)
    encoder_variance, encoder_snr = _variance_and_snr(torch.stack(encoder_draws))
    decoder_variance, decoder_snr = _variance_and_snr(torch.stack(decoder_draws))
    biases = [None, None] if reference is None else [
        _relative_bias(torch.stack(d), r) for d, r in zip((encoder_draws, decoder_draws),
                                                          reference)]
    label = f"{objective_name}@{temperature:g}" if objective_name in RELAXED else objective_name
    return EstimatorReport(
        objective=label, particles=particles, bound=float(bounds.mean()),
        bound_stderr=float(bounds.std() / math.sqrt(repeats)),
        encoder_grad_variance=encoder_variance, encoder_snr=encoder_snr,
        decoder_grad_variance=decoder_variance, decoder_snr=decoder_snr,
        ms_per_step=1000 * float(torch.tensor(seconds).median()),
        lower_bound=is_lower_bound(objective_name, alpha),
        encoder_bias=biases[0], decoder_bias=biases[1])


def compare_estimators(vae, x: torch.Tensor, objectives: Sequence[str],
                       particles: Sequence[int], repeats: int = 100, seed: int = 0,
                       alpha: float = 0.5,
                       progress: Callable[[str, int], None] | None = None,
                       temperatures: Sequence[float] = (1.0,)) -> list[EstimatorReport]:
    """Every objective at every K on the batch ``x`` (see the module docstring)."""
    reports = []
    saved = vae.kl_weight, vae.num_data
    vae.kl_weight, vae.num_data = 1.0, None
    try:
        reference = exact_gradient(vae, x)
        runs = [(name, k, t) for name in objectives
                for k in (particles[:1] if name == "enumerate" else particles)
                if not (name == "vimco" and k < 2)
                for t in (temperatures if name in RELAXED else (1.0,))]
        for name, k, t in runs:
            if progress is not None:
                progress(name, k)
            reports.append(measure_estimator(vae, x, name, k, repeats, seed, alpha, t,
                                             reference))
    finally:
        vae.kl_weight, vae.num_data = saved
    return reports


def reports_to_csv(reports: Sequence[EstimatorReport]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(asdict(reports[0])))
    writer.writeheader()
    for report in reports:
        writer.writerow(asdict(report))
    return buffer.getvalue()


def reports_to_markdown(reports: Sequence[EstimatorReport]) -> str:
    with_bias = any(r.encoder_bias is not None for r in reports)
    lines = ["| objective | K | bound (nats; a lower bound on log p(x) unless marked) | "
             "encoder SNR | decoder SNR | encoder grad var | decoder grad var | ms/step |"
             + (" encoder bias | decoder bias |" if with_bias else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if with_bias else "")]
    for r in reports:
        mark = "" if r.lower_bound else " (not a lower bound)"
        line = (f"| {r.objective} | {r.particles} | {r.bound:.2f} ± {r.bound_stderr:.2f}"
                f"{mark} "
                f"| {r.encoder_snr:.3f} | {r.decoder_snr:.3f} | "
                f"{r.encoder_grad_variance:.3g} | {r.decoder_grad_variance:.3g} | "
                f"{r.ms_per_step:.1f} |")
        if with_bias:
            line += "".join(" – |" if b is None else f" {b:.3f} |"
                            for b in (r.encoder_bias, r.decoder_bias))
        lines.append(line)
    return "\n".join(lines)


def save_lab_plots(reports: Sequence[EstimatorReport], out_dir: Path) -> None:
    """``bound_vs_k.png`` and ``snr_vs_k.png`` (encoder and decoder panels, log-log)."""
    names = list(dict.fromkeys(r.objective for r in reports))
    # Estimators that share a value or a gradient overlap exactly: vary marker and line style.
    styles = {name: dict(marker="os^vDx*"[i % 7], linestyle=["-", "--", ":", "-."][i % 4],
                         markersize=7 - i % 3, alpha=0.85) for i, name in enumerate(names)}
    figure, axis = subplots(figsize=(5.5, 3.8))
    for name in names:
        rows = [r for r in reports if r.objective == name]
        axis.errorbar([r.particles for r in rows], [r.bound for r in rows],
                      yerr=[r.bound_stderr for r in rows], capsize=3, label=name,
                      **styles[name])
    axis.set_xscale("log")
    axis.set_xlabel("K (particles)")
    axis.set_ylabel("bound, nats per datapoint")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    save_figure(figure, out_dir / "bound_vs_k.png")

    figure, axes = subplots(1, 2, figsize=(9.5, 3.8), sharex=True)
    for axis, part in zip(axes, ("encoder", "decoder")):
        plotted = False
        for name in names:
            rows = [r for r in reports if r.objective == name]
            # An exact gradient (enumerate) has no noise: its SNR is infinite, not a point.
            shown = [r for r in rows if math.isfinite(getattr(r, f"{part}_snr"))
                     and getattr(r, f"{part}_snr") > 0]
            label = name if shown else f"{name} (exact: no noise, SNR ∞)"
            axis.plot([r.particles for r in shown], [getattr(r, f"{part}_snr") for r in shown],
                      label=label, **styles[name])
            plotted = plotted or bool(shown)
        axis.set_xscale("log")
        if plotted:  # a log axis needs a positive finite value
            axis.set_yscale("log")
        axis.set_xlabel("K (particles)")
        axis.set_title(f"{part} gradient SNR", fontsize=10)
        axis.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("mean |E g| / std g")
    axes[1].legend(fontsize=8)
    save_figure(figure, out_dir / "snr_vs_k.png")
