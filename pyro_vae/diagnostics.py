"""Posterior diagnostics: ArviZ InferenceData of q(z|x) and of NUTS draws of p(z|x), held-out
model comparison, and the inference-gap decomposition.

**Exact posterior by NUTS.** For chosen inputs x_1..x_n the unnormalized posterior

    p(z_i | x_i) ∝ p(z_i) p(x_i | z_i)

is sampled with Pyro's ``NUTS`` (Hoffman & Gelman 2014) through the VAE's own ``model`` run on
the x (inside ``vae.scoring()``, so neither minibatch scaling nor a KL weight applies). Every
latent site of the model is sampled (``z``; ``z2`` and ``z1`` for the two-layer model), so any
prior the model declares is respected without code here. Chains run one after another, each
from its own seed and from a draw of the amortized q(z|x), so split-R̂ and ESS compare chains
started apart.

**Held-out model comparison.** A model with point-estimated weights θ̂ has no posterior draws
over global parameters, and the test points were not used to fit it, so

    elpd = Σ_i log p(x̃_i | θ̂)       (x̃_i held-out test points)

is already an out-of-sample expected log predictive density: leave-one-out (PSIS-LOO) would
correct an in-sample score for points that were fitted, and there is nothing to correct here.
With S posterior draws θ_s of global parameters (e.g. Bayesian decoder weights) the held-out
term is log (1/S) Σ_s p(x̃_i | θ_s). log p(x̃_i | θ) is the importance-sampled estimate of
:mod:`pyro_vae.evaluate` (biased low by O(1/K); its noise is part of the spread of the
pointwise terms). :func:`heldout_elpd` builds arviz's ``ELPDData`` from these terms with
arviz's own standard errors, so ``az.compare`` ranks models by held-out elpd:

    se = sqrt(n · Var_i[elpd_i]),   elpd_diff = Σ_i (a_i − b_i),   dse = sqrt(n · Var_i[a_i − b_i])

(the paired difference standard error; Vehtari, Gelman & Gabry 2017, §5). ``az.loo`` on one
draw is not used: its Pareto diagnostic divides by log10(1) = 0 and flags every point.

**Inference gaps** (Cremer, Li & Duvenaud 2018, "Inference Suboptimality in Variational
Autoencoders"): for each test point,

    log p(x) − ELBO(q_amortized) = [log p(x) − ELBO(q*)] + [ELBO(q*) − ELBO(q_amortized)]
                                 =   approximation gap   +     amortization gap

where q* = N(m, diag s²) is a Gaussian optimized for that datapoint alone (Adam on m and
log s from the encoder's output, with sticking-the-landing gradients, Roeder et al. 2017, whose
variance vanishes when q* reaches the exact posterior). For a model whose guide is
another family (``guides.py``: low-rank Gaussian, IAF), q* is that family on per-datapoint
base parameters, with a copy of the family's own networks optimized on the scored points too. log p(x) is importance-sampled with q*
as the proposal; every ELBO is a K-sample average. Standard errors are across datapoints, of
the paired per-datapoint differences.
"""

from __future__ import annotations

import copy
import math
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS

from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.evaluate import estimate_log_likelihood, gaussian_start
from pyro_vae.objectives.particles import _sample_sites, log_weights, run_particles
from pyro_vae.plots import save_figure, subplots
from pyro_vae.runs import atomic_path

with warnings.catch_warnings():  # arviz announces its refactor once a day on import
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az
    from arviz.stats.stats_utils import ELPDData

#: progress(stage, finished, total): ``finished`` units of ``total`` in ``stage`` are done.
Progress = Callable[[str, int, int], None]
DATAPOINT = "datapoint"


def _noop(stage: str, finished: int, total: int) -> None:
    pass


# --- InferenceData from draws ------------------------------------------------------------------

def inference_data_from_draws(draws: Mapping[str, torch.Tensor | np.ndarray],
                              dims: Mapping[str, Sequence[str]] | None = None,
                              coords: Mapping[str, Sequence] | None = None,
                              group: str = "posterior",
                              attrs: Mapping[str, object] | None = None) -> az.InferenceData:
    """An ``InferenceData`` with one group (``posterior`` by default) built from draws.

    Args:
        draws: name → array of shape ``[chain, draw, *event]`` (tensors are detached and moved
            to the CPU). Every variable must have the same numbers of chains and draws.
        dims: name → names of the event dimensions (default ``NAME_dim_0``, ``NAME_dim_1``...).
        coords: dimension name → coordinate values (default ``0..size-1``).
        group: the InferenceData group, e.g. ``"posterior"``, ``"log_likelihood"``.
        attrs: extra attributes stored on the group.
    """
    arrays = {name: (value.detach().cpu().numpy() if isinstance(value, torch.Tensor)
                     else np.asarray(value)) for name, value in draws.items()}
    if not arrays:
        raise ValueError("no draws given")
    shapes = {name: a.shape[:2] for name, a in arrays.items()}
    if any(a.ndim < 2 for a in arrays.values()) or len(set(shapes.values())) != 1:
        raise ValueError(f"every draw needs leading dimensions [chain, draw] shared by all "
                         f"variables; got shapes { {n: a.shape for n, a in arrays.items()} }")
    attrs = {"inference_library": "pyro", "inference_library_version": pyro.__version__,
             **(attrs or {})}
    return az.from_dict(**{group: arrays}, dims=dict(dims or {}), coords=dict(coords or {}),
                        attrs=attrs)


#: Room asked for beyond the arrays' own bytes: netCDF headers, HDF5 metadata and chunking.
NETCDF_OVERHEAD_BYTES = 4 * 2 ** 20


def _check_room_for(data: az.InferenceData, path: Path) -> None:
    """Refuse, in one paragraph, to write ``data`` where the disk has no room for it."""
    needed = 2 * sum(getattr(data, group).nbytes for group in data.groups()) \
        + NETCDF_OVERHEAD_BYTES
    folder = path.parent if path.parent.exists() else Path(".")
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # the write itself will report the folder
    if free < needed:
        raise PyroVAEError(
            f"cannot write {path}: it needs about {needed / 2 ** 20:.0f} MB and the disk has "
            f"{free / 2 ** 20:.0f} MB free. Free some space (or write to another disk with "
            "--out) and run the command again; nothing was written.")


def save_inference_data(data: az.InferenceData, path: str | Path) -> None:
    """Write ``data`` as netCDF all-or-nothing (a temporary file in the folder, then rename).

    The netCDF writer (h5py) reports a full disk or an unwritable folder with errors of its
    own types, not always an :class:`OSError`: every failure of the write becomes one
    paragraph, the temporary file removed. A disk without room for it is refused before the
    write starts: on a full disk the HDF5 library underneath can crash the process outright
    (a segmentation fault no Python code can catch)."""
    _check_room_for(data, Path(path))
    try:
        with atomic_path(path) as temp:
            data.to_netcdf(str(temp))
    except PyroVAEError:
        raise
    except Exception as error:  # h5py / netCDF4 raise many types
        raise PyroVAEError(f"cannot write {path} ({type(error).__name__}: {error}). Check that "
                           "the disk has space and the folder is writable; no partial file was "
                           "left.") from None


# --- q(z|x) and p(z|x) ---------------------------------------------------------------------------

def _latent_event_dims(draws: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    return {name: [DATAPOINT, f"{name}_dim"] for name in draws}


def _latent_coords(draws: Mapping[str, torch.Tensor], datapoints: Sequence[int] | None,
                   n: int) -> dict[str, list[int]]:
    coords = {DATAPOINT: list(datapoints) if datapoints is not None else list(range(n))}
    if len(coords[DATAPOINT]) != n:
        raise ValueError(f"{len(coords[DATAPOINT])} datapoint labels for {n} inputs")
    coords.update({f"{name}_dim": list(range(value.shape[-1])) for name, value in draws.items()})
    return coords


@torch.no_grad()
def amortized_posterior_draws(vae: torch.nn.Module, x: torch.Tensor, num_draws: int,
                              datapoints: Sequence[int] | None = None) -> az.InferenceData:
    """``num_draws`` draws of the amortized q(z|x) for each row of ``x`` as a posterior group
    with dims ``(chain=1, draw, datapoint, NAME_dim)`` for every latent site of the guide."""
    with vae.scoring(), pyro.plate("particles", num_draws, dim=-2):
        trace = poutine.trace(vae.guide).get_trace(x)
    draws = {site["name"]: site["value"][None] for site in _sample_sites(trace)
             if not site["is_observed"]}
    return inference_data_from_draws(draws, _latent_event_dims(draws),
                                     _latent_coords(draws, datapoints, len(x)),
                                     attrs={"sampler": "amortized q(z|x)"})


def exact_posterior_draws(vae: torch.nn.Module, x: torch.Tensor, num_chains: int = 4,
                          num_draws: int = 500, warmup_steps: int = 500, seed: int = 0,
                          datapoints: Sequence[int] | None = None,
                          progress: Progress = _noop) -> az.InferenceData:
    """NUTS draws of p(z | x) ∝ p(z) p(x|z) under the VAE's own model (see module docstring).

    The rows of ``x`` are sampled jointly (their posteriors are independent, so this equals
    separate runs); chains run sequentially, chain c seeded with ``seed + c`` and started from a
    draw of q(z|x). Returns the posterior group (dims ``chain, draw, datapoint, NAME_dim``) and
    a ``sample_stats`` group with ``diverging``.
    """
    for name, value in (("num_chains", num_chains), ("num_draws", num_draws)):
        if value < 1:
            raise ConfigError(f"{name} must be a positive integer, not {value}.")

    def model() -> None:
        vae.model(x)

    chains, diverging = [], []
    total = num_chains * (warmup_steps + num_draws)
    with vae.scoring():
        for chain in range(num_chains):
            pyro.set_rng_seed(seed + chain)
            with torch.no_grad(), pyro.plate("particles", 1, dim=-2):
                start = poutine.trace(vae.guide).get_trace(x)
            initial = {s["name"]: s["value"][0] for s in _sample_sites(start)
                       if not s["is_observed"]}
            done = chain * (warmup_steps + num_draws)

            def hook(kernel, samples, stage, i, done=done):
                progress("nuts", done + i + 1 + (warmup_steps if stage == "Sample" else 0),
                         total)

            mcmc = MCMC(NUTS(model, adapt_step_size=True, adapt_mass_matrix=True),
                        num_samples=num_draws, warmup_steps=warmup_steps,
                        initial_params=initial, num_chains=1, disable_progbar=True,
                        hook_fn=hook)
            mcmc.run()
            chains.append({k: v.detach() for k, v in mcmc.get_samples().items()})
            flags = torch.zeros(num_draws, dtype=torch.bool)
            flags[list(mcmc.diagnostics()["divergences"]["chain 0"])] = True
            diverging.append(flags)
    draws = {name: torch.stack([c[name] for c in chains]) for name in chains[0]}
    posterior = inference_data_from_draws(draws, _latent_event_dims(draws),
                                          _latent_coords(draws, datapoints, len(x)),
                                          attrs={"sampler": "NUTS",
                                                 "warmup_steps": warmup_steps, "seed": seed})
    posterior.add_groups(sample_stats={"diverging": torch.stack(diverging).numpy()})
    return posterior


# --- held-out model comparison ------------------------------------------------------------------

def log_likelihood_inference_data(log_likelihood: torch.Tensor,
                                  datapoints: Sequence[int] | None = None,
                                  var_name: str = "x") -> az.InferenceData:
    """Pointwise log p(x̃_i) as a ``log_likelihood`` group with dims ``(chain, draw, datapoint)``.

    ``log_likelihood`` is ``[n]`` for a model with point-estimated weights (stored as one chain
    of one draw) or ``[chain, draw, n]`` for draws θ_s of global parameters.
    """
    values = log_likelihood.reshape(1, 1, -1) if log_likelihood.dim() == 1 else log_likelihood
    n = values.shape[-1]
    coords = {DATAPOINT: list(datapoints) if datapoints is not None else list(range(n))}
    return inference_data_from_draws({var_name: values}, {var_name: [DATAPOINT]}, coords,
                                     group="log_likelihood")


def heldout_elpd(data: az.InferenceData, var_name: str = "x") -> ELPDData:
    """The held-out elpd of a ``log_likelihood`` group, as arviz ``ELPDData`` for
    ``az.compare`` (see module docstring): elpd_i = log (1/S) Σ_s p(x̃_i | θ_s), elpd = Σ_i
    elpd_i, se = sqrt(n Var elpd_i), no effective-parameter penalty (p = 0).

    arviz labels the result ``elpd_loo`` (``az.compare`` accepts "loo" or "waic" only); here
    it is the elpd of held-out points, which needs no leave-one-out correction.
    """
    values = data.log_likelihood[var_name].stack(__sample__=("chain", "draw"))
    num_samples = values.sizes["__sample__"]
    pointwise = (values.reduce(lambda a, axis: _log_mean_exp(a, axis), dim="__sample__")
                 .rename("loo_i"))
    n = pointwise.size
    elpd = float(pointwise.sum())
    se = math.sqrt(n * float(np.var(pointwise.values)))
    return ELPDData(data=[elpd, se, 0.0, num_samples, n, False, pointwise, "log", 0.7],
                    index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning",
                           "loo_i", "scale", "good_k"])


def _log_mean_exp(a: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.mean(np.exp(a - top), axis=axis))


# --- inference gaps ------------------------------------------------------------------------------

def _single_latent_site(vae: torch.nn.Module, x: torch.Tensor) -> str:
    with torch.no_grad(), vae.scoring():
        trace = poutine.trace(vae.guide).get_trace(x[:1])
    names = [s["name"] for s in _sample_sites(trace) if not s["is_observed"]]
    if names != ["z"]:
        raise ConfigError(f"the inference-gap decomposition optimizes one Gaussian per "
                          f"datapoint for the single latent site 'z', but this model's guide "
                          f"has sites {names} (e.g. the two-stochastic-layer VAE); NUTS and "
                          "q(z|x) draws work for it, the gaps do not.")
    return names[0]


def local_gaussian_guide(loc: torch.Tensor, log_scale: torch.Tensor,
                         family: torch.nn.Module | None = None) -> Callable:
    """A guide q(z_i) = N(loc_i, diag exp(log_scale_i)²) with its own parameters per row, or,
    given a guide component ``family`` (``guides.py``), that family built on those per-row
    base parameters (e.g. the IAF's flow on N(loc_i, diag exp(log_scale_i)²))."""

    def guide(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        with pyro.plate("data", len(x), dim=-1):
            if family is not None:
                return pyro.sample("z", family(loc, log_scale.exp()))
            return pyro.sample("z", dist.Normal(loc, log_scale.exp(),
                                                validate_args=False).to_event(1))
    return guide


def local_family(vae: torch.nn.Module) -> torch.nn.Module | None:
    """A copy of the model's guide component to optimize with q* (``None`` for a diagonal
    Gaussian or a model without one): q* then lies in the guide's own family, so the
    approximation gap is that of the family (Cremer et al. 2018) and not of a diagonal
    Gaussian."""
    family = getattr(vae, "family", None)
    if family is None or getattr(family, "diagonal", True):
        return None
    return copy.deepcopy(family).requires_grad_(True)


def optimize_local_posterior(vae: torch.nn.Module, x: torch.Tensor, steps: int = 500,
                             learning_rate: float = 0.01, num_particles: int = 8,
                             progress: Progress = _noop, family: torch.nn.Module | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loc, scale) ``[n, D]`` of q*, a Gaussian optimized for each row of ``x`` separately.

    Starts at the encoder's (μ(x), σ(x)) and takes ``steps`` Adam steps on the ELBO averaged
    over ``num_particles`` draws, with the sticking-the-landing gradient. The decoder and prior
    are held fixed. Given ``family`` (a copy of the model's guide component, see
    :func:`local_family`), q* is that family on the per-row base parameters, and the family's
    own parameters are optimized too (on the rows of ``x``; updated in place).
    """
    _single_latent_site(vae, x)
    with torch.no_grad():
        start = gaussian_start(vae, x)
    if start is None:
        raise ConfigError("the inference gaps optimize a Gaussian q* per image, started at "
                          "q(z|x), and this model's posterior(x) is not a diagonal Gaussian nor "
                          "built on one (a guide of guides.py); NUTS and q(z|x) draws work for "
                          "it, the gaps do not.")
    loc0, scale0 = start
    loc = loc0.detach().clone().requires_grad_(True)
    log_scale = scale0.detach().log().clone().requires_grad_(True)
    guide = local_gaussian_guide(loc, log_scale, family)
    shared = [] if family is None else list(family.parameters())
    optimizer = torch.optim.Adam([loc, log_scale, *shared], lr=learning_rate)
    with vae.scoring():
        for step in range(steps):
            traces = run_particles(vae.model, guide, num_particles, (x,), {},
                                   who="the local posterior optimization")
            loss = -log_weights(traces, stop_guide_parameters=True, scaled=False).mean(0).sum()
            # Gradients for q*'s own parameters only: the trained model stays untouched.
            grads = torch.autograd.grad(loss, [loc, log_scale, *shared])
            for parameter, grad in zip([loc, log_scale, *shared], grads):
                parameter.grad = grad
            optimizer.step()
            progress("optimize", step + 1, steps)
    return loc.detach(), log_scale.detach().exp()


def _stderr(values: torch.Tensor) -> float:
    return float(values.std(unbiased=True) / math.sqrt(len(values))) if len(values) > 1 \
        else float("nan")


@dataclass
class InferenceGaps:
    """Per-datapoint terms of the gap decomposition (nats), and q*'s parameters."""

    log_likelihood: torch.Tensor
    elbo_optimized: torch.Tensor
    elbo_amortized: torch.Tensor
    optimized_loc: torch.Tensor
    optimized_scale: torch.Tensor
    num_samples: int
    steps: int
    extra: dict = field(default_factory=dict)

    @property
    def approximation_gap(self) -> torch.Tensor:
        return self.log_likelihood - self.elbo_optimized

    @property
    def amortization_gap(self) -> torch.Tensor:
        return self.elbo_optimized - self.elbo_amortized

    @property
    def inference_gap(self) -> torch.Tensor:
        return self.log_likelihood - self.elbo_amortized

    def summary(self) -> dict[str, float]:
        """Mean and standard error across datapoints of every term and gap."""
        terms = {"log_likelihood": self.log_likelihood, "elbo_optimized": self.elbo_optimized,
                 "elbo_amortized": self.elbo_amortized,
                 "approximation_gap": self.approximation_gap,
                 "amortization_gap": self.amortization_gap,
                 "inference_gap": self.inference_gap}
        out: dict[str, float] = {}
        for name, values in terms.items():
            out[name] = float(values.mean())
            out[f"{name}_stderr"] = _stderr(values)
        return out


def inference_gaps(vae: torch.nn.Module, x: torch.Tensor, num_samples: int = 1000,
                   steps: int = 500, learning_rate: float = 0.01, num_particles: int = 8,
                   max_chunk: int = 20_000, progress: Progress = _noop) -> InferenceGaps:
    """The decomposition of Cremer et al. (2018) for every row of ``x`` (see module docstring).

    ``num_samples`` K draws score log p(x) (with q* as proposal) and each ELBO.
    """
    family = local_family(vae)
    loc, scale = optimize_local_posterior(vae, x, steps, learning_rate, num_particles, progress,
                                          family)
    chunk = max(1, max_chunk // num_samples)  # so estimate_log_likelihood sees one data chunk
    log_px, elbo_opt = [], []
    for start in range(0, len(x), chunk):
        rows = slice(start, start + chunk)
        guide = local_gaussian_guide(loc[rows], scale[rows].log(), family)
        estimate = estimate_log_likelihood(vae, x[rows], num_samples, max_chunk, guide=guide)
        log_px.append(estimate.log_likelihood)
        elbo_opt.append(estimate.elbo)
        progress("score q*", min(start + chunk, len(x)), len(x))
    amortized = estimate_log_likelihood(
        vae, x, num_samples, max_chunk,
        progress=_counting(lambda done: progress("score q(z|x)", done, len(x))))
    return InferenceGaps(torch.cat(log_px), torch.cat(elbo_opt), amortized.elbo, loc, scale,
                         num_samples, steps,
                         {"log_likelihood_amortized_proposal": amortized.log_likelihood})


def _counting(report: Callable[[int], None]) -> Callable[[int], None]:
    done = 0

    def update(count: int) -> None:
        nonlocal done
        done += count
        report(done)
    return update


# --- picture -------------------------------------------------------------------------------------

def save_posterior_comparison(path: str | Path, amortized: az.InferenceData,
                              exact: az.InferenceData, datapoint: int | None = None,
                              var_name: str = "z", max_dims: int = 8) -> None:
    """q(z|x) against NUTS draws of p(z|x) for one datapoint: marginal histograms of the
    ``max_dims`` dimensions where they differ most (in units of the posterior's spread), and a
    scatter of the pair of dimensions with the strongest posterior correlation (which a
    diagonal Gaussian q cannot represent)."""
    point = {DATAPOINT: exact.posterior[DATAPOINT].values[0] if datapoint is None else datapoint}
    p = exact.posterior[var_name].sel(point).stack(s=("chain", "draw")).values.T  # [S, D]
    q = amortized.posterior[var_name].sel(point).stack(s=("chain", "draw")).values.T
    spread = p.std(0) + 1e-12
    discrepancy = np.abs(q.mean(0) - p.mean(0)) / spread + np.abs(np.log(q.std(0) / spread))
    dims = np.argsort(-discrepancy)[: min(max_dims, p.shape[1])]
    columns = len(dims) + (1 if p.shape[1] > 1 else 0)
    figure, axes = subplots(1, columns, figsize=(2.2 * columns, 2.4), squeeze=False)
    for axis, d in zip(axes[0], dims):
        bins = np.linspace(min(p[:, d].min(), q[:, d].min()), max(p[:, d].max(), q[:, d].max()),
                           40)
        axis.hist(p[:, d], bins=bins, density=True, histtype="step", label="p(z|x), NUTS")
        axis.hist(q[:, d], bins=bins, density=True, histtype="step", label="q(z|x)")
        axis.set_title(f"{var_name}[{d}]", fontsize=8)
        axis.set_yticks([])
        axis.tick_params(labelsize=7)
    if p.shape[1] > 1:
        corr = np.corrcoef(p.T)
        np.fill_diagonal(corr, 0)
        i, j = np.unravel_index(np.nanargmax(np.abs(corr)), corr.shape)
        axis = axes[0][-1]
        axis.scatter(p[:, i], p[:, j], s=3, alpha=0.3, label="p(z|x), NUTS")
        axis.scatter(q[:, i], q[:, j], s=3, alpha=0.3, label="q(z|x)")
        axis.set_xlabel(f"{var_name}[{i}]", fontsize=8)
        axis.set_ylabel(f"{var_name}[{j}]", fontsize=8)
        axis.set_title(f"correlation {corr[i, j]:+.2f} under p", fontsize=8)
        axis.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7, loc="upper left")
    figure.suptitle(f"amortized q(z|x) against the exact posterior, datapoint {point[DATAPOINT]}",
                    fontsize=9)
    save_figure(figure, Path(path))
