"""Annealed importance sampling (AIS) of log p(x) per datapoint, and bidirectional Monte Carlo
(BDMC) sandwich bounds on data simulated from the model.

**AIS** (Neal 2001). For one datapoint x, let π₀(z) be a normalized initial distribution (the
prior p(z), or the amortized posterior q(z|x)) and f(z) = p(x, z), whose normalizer is p(x).
The geometric path

    f_β(z) = π₀(z)^{1−β} p(x, z)^β,      0 = β_0 < β_1 < … < β_T = 1,

runs from π₀ (normalizer 1) to the unnormalized posterior (normalizer p(x)). A chain draws
z_0 ~ π₀ and, for t = 1 … T::

    log w += log f_{β_t}(z_{t−1}) − log f_{β_{t−1}}(z_{t−1})
           = (β_t − β_{t−1}) [log p(x, z_{t−1}) − log π₀(z_{t−1})]
    z_t ~ T_t(z_{t−1}, ·)         (t < T; any kernel that leaves f_{β_t} invariant)

Then E[w] = p(x) exactly, so with C independent chains log p̂(x) = log (1/C) Σ_c w_c is a
stochastic lower bound, E[log p̂] ≤ log p(x), whose gap closes as T grows (and as C grows).
With π₀ = p(z) the increment is (β_t − β_{t−1}) log p(x|z). The schedule is the sigmoid one of
Grosse et al. (2015): β̃_t = σ(δ(2t/T − 1)), δ = 4, rescaled to run from 0 to 1 (or linear).

**Transitions** are Hamiltonian Monte Carlo (Neal 2011) with an identity mass matrix and
``leapfrog_steps`` leapfrog steps of size ε, accepted with probability min(1, exp(H₀ − H₁)),
vectorized over datapoints × chains. The gradient ∇_z log f_β comes from autograd through the
model's own Pyro program: log p(x, z) is the sum of the log-densities of the model's sites with
the latent sites given the chain's values, log q(z|x) that of the guide's sites. The latent
sites are found once on real Pyro traces (``poutine.trace`` of the guide and of the model
replayed on it); each gradient then runs the program under the library's
:class:`~pyro_vae.objectives.recorder.SiteRecorder` (Pyro's trace and replay in one messenger,
without building a trace graph). Chains are extra rows of the ``data`` plate (x and y tiled),
so every continuous-latent model/guide pair is scored with no model-specific code (any prior,
two latent layers, labels y given to a conditional model). A model with a
discrete latent site or a latent site outside the ``data`` plate (a global latent variable) is
refused: its log p(x) needs a sum or an integral that AIS over z does not do.

**Step size, and why the adaptation uses chains of its own.** One ε per datapoint is adapted
toward a target acceptance rate (0.65) by log ε ← log ε + ``adapt_rate``·(ā − target), ā being
the mean Metropolis acceptance probability at that step. If ā came from the chains being
averaged, each chain's kernel would depend on that chain's own past, the kernels would no
longer leave f_β invariant given the past, and E[w] = p(x) would fail. It fails upward:
measured with a plain-torch AIS, adapting each chain from its own acceptances gave +0.06 nats
at 50 steps with one chain per datapoint, growing with the steps and shrinking about as
1/chains. Pooling acceptances over all chains and datapoints only shrinks that feedback (by the
number pooled); it does not remove it. Here ā comes from ``adapt_chains`` extra chains per
datapoint that run the same transitions and are left out of the estimate: the C estimating
chains are then independent of the ε sequence they see, each transition is a valid kernel, and
the estimate is unbiased (measured: +0.002 ± 0.012 nats on the same test). The price is
``adapt_chains`` more chains of work (C + A in all).

**Cost.** One transition is ``leapfrog_steps`` gradient evaluations of log f_β, each a forward
and backward pass of the decoder (and of the encoder too when π₀ = q(z|x), whose density enters
f_β) over (C + A) × datapoints rows: T · L · (C + A) decoder passes per datapoint. Starting
from q(z|x) costs about one encoder pass more per gradient but begins near the posterior, so
fewer steps reach the same gap on a well-trained model; from the prior the path is longer but
cheaper per step and makes no use of (and no assumption about) the encoder.

**BDMC** (Grosse, Ghahramani & Adams 2015; Wu et al. 2017). On pairs (z*, x) simulated from the
model, z* is an exact draw from p(z|x). Reverse AIS starts there and runs the same path
backward, β from 1 to 0, with the forward run's step sizes; its weights w' satisfy
E[w'] = 1/p(x), so −log (1/C) Σ_c w'_c is a stochastic *upper* bound on log p(x). Forward AIS
gives the lower bound; the gap between the two bounds the error of AIS at that setting on data
like these. (Reusing the forward step sizes keeps the reverse kernels independent of its
chains; the forward run depends on x only, not on z*.)

The Monte Carlo error of log p̂ per datapoint is the delta method over the C chains,
Var ≈ (C Σw² / (Σw)² − 1)/(C − 1), as for importance sampling (:mod:`pyro_vae.evaluate`).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_vae.errors import ConfigError
from pyro_vae.objectives.recorder import SiteRecorder

#: Initial distributions of the path.
INITIAL_DISTRIBUTIONS = ("prior", "posterior")
#: Annealing schedules β_0 … β_T.
SCHEDULES = ("sigmoid", "linear")
#: Rows (datapoints × chains) in one vectorized pass, unless given.
DEFAULT_MAX_ROWS = 10_000
#: Steepness δ of the sigmoid schedule (Grosse et al. 2015).
SIGMOID_STEEPNESS = 4.0


@dataclass
class AISEstimate:
    """Per-datapoint AIS estimates in nats (``log_likelihood``: log-mean-exp over chains)."""

    log_likelihood: torch.Tensor
    #: Delta-method variance of each datapoint's log p̂ over its chains.
    mc_variance: torch.Tensor
    steps: int
    chains: int
    #: Mean Metropolis acceptance probability of the estimating chains over the run.
    acceptance: float = float("nan")
    #: Step size per transition and datapoint, ``[T − 1, N]`` (what reverse AIS reuses).
    step_sizes: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    @property
    def mean_log_likelihood(self) -> float:
        return float(self.log_likelihood.mean())

    @property
    def log_likelihood_stderr(self) -> float:
        """Spread over the datapoints: std_n / √N (NaN for one datapoint)."""
        n = len(self.log_likelihood)
        return float(self.log_likelihood.std(unbiased=True) / math.sqrt(n)) if n > 1 \
            else float("nan")

    @property
    def log_likelihood_mc_stderr(self) -> float:
        """Monte Carlo error of the mean on these datapoints: √(Σ_n Var_n) / N."""
        n = len(self.mc_variance)
        return float(self.mc_variance.sum().sqrt() / n) if n and self.chains > 1 \
            else float("nan")


@dataclass
class BDMCResult:
    """Sandwich bounds per simulated datapoint: ``lower`` (forward AIS) ≤ log p(x) ≤
    ``upper`` (reverse AIS), in expectation; ``x`` and ``z`` the simulated data."""

    lower: AISEstimate
    upper: AISEstimate
    x: torch.Tensor
    z: dict[str, torch.Tensor]

    @property
    def gap(self) -> torch.Tensor:
        return self.upper.log_likelihood - self.lower.log_likelihood


# --- the schedule ---------------------------------------------------------------------------

def annealing_schedule(steps: int, kind: str = "sigmoid") -> torch.Tensor:
    """β_0 = 0 < … < β_T = 1 (``steps`` = T), in float64."""
    if steps < 1:
        raise ConfigError(f"AIS needs at least 1 annealing step, not {steps}.")
    t = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "linear":
        return t
    if kind != "sigmoid":
        raise ConfigError(f"schedule {kind!r} is not one of {SCHEDULES}.")
    raw = torch.sigmoid(SIGMOID_STEEPNESS * (2 * t - 1))
    return (raw - raw[0]) / (raw[-1] - raw[0])


# --- the model's log-densities through its Pyro program -------------------------------------

@dataclass
class LatentSite:
    name: str
    event_shape: torch.Size

    @property
    def size(self) -> int:
        return int(math.prod(self.event_shape))


def _sample_sites(trace) -> list[dict]:
    return [site for site in trace.nodes.values()
            if site["type"] == "sample" and not site_is_subsample(site)]


def _in_data_plate(site: dict) -> bool:
    return any(frame.name == "data" for frame in site["cond_indep_stack"])


def latent_sites(vae: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None
                 ) -> list[LatentSite]:
    """The model's latent sites, found on a real Pyro trace of the guide and of the model
    replayed on it (first datapoint); refuses what AIS over a continuous z cannot score."""
    args = (x[:1],) if y is None else (x[:1], y[:1])
    with torch.no_grad(), vae.scoring():
        guide_trace = poutine.trace(vae.guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(*args)
    sites = [site for trace in (guide_trace, model_trace) for site in _sample_sites(trace)
             if not site["is_observed"]]
    for site in sites:
        if site["fn"].support.is_discrete:
            raise ConfigError(
                f"this model has a discrete latent variable (site {site['name']!r}); AIS "
                "anneals a continuous z with Hamiltonian Monte Carlo and cannot move through "
                "it. Score the model with importance sampling (--estimator is), or with its "
                "exact sum over codes where the evaluation reports one.")
        if not _in_data_plate(site):
            raise ConfigError(
                f"this model has a global latent variable (site {site['name']!r}, outside the "
                "'data' plate), shared by all datapoints; AIS here scores each datapoint's own "
                "latent code and has no per-datapoint share of it. Score the model with "
                "importance sampling (--estimator is), which integrates the global site out.")
    names: list[str] = []
    result = []
    for site in _sample_sites(model_trace):
        if not site["is_observed"] and site["name"] not in names:
            names.append(site["name"])
            result.append(LatentSite(site["name"], site["value"].shape[1:]))
    if not result:
        raise ConfigError("this model has no latent variable, so its log p(x) needs no "
                          "estimate; AIS has nothing to anneal.")
    return result


class LogDensities:
    """log π₀(z) and log p(x, z) of every row, with their gradients in z, from the model's
    (and, for π₀ = q, the guide's) Pyro program run on a batch of rows with z given.

    Rows are datapoints repeated over chains (``x`` and ``y`` already tiled); ``z`` is flat,
    ``[rows, Σ site sizes]``, split into the latent sites by :attr:`sites`.
    """

    def __init__(self, vae: torch.nn.Module, sites: list[LatentSite], x: torch.Tensor,
                 y: torch.Tensor | None, initial: str):
        self.vae, self.sites, self.initial = vae, sites, initial
        self.args = (x,) if y is None else (x, y)
        self.latent_names = {site.name for site in sites}

    def split(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        values, start = {}, 0
        for site in self.sites:
            values[site.name] = z[:, start: start + site.size].reshape(
                z.shape[:1] + site.event_shape)
            start += site.size
        return values

    def _run(self, program: Callable, values: dict[str, torch.Tensor]) -> dict[str, dict]:
        replay = {name: {"value": value, "infer": {}} for name, value in values.items()}
        with SiteRecorder(replay=replay) as recorder:
            program(*self.args)
        return recorder.sites

    def _log_densities(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values = self.split(z)
        model_sites = self._run(self.vae.model, values)
        log_joint = sum(site["fn"].log_prob(site["value"]) for site in model_sites.values()
                        if not site_is_subsample(site))
        if self.initial == "prior":
            log_initial = sum(site["fn"].log_prob(site["value"])
                              for name, site in model_sites.items()
                              if name in self.latent_names)
        else:
            guide_sites = self._run(self.vae.guide, values)
            log_initial = sum(site["fn"].log_prob(site["value"])
                              for name, site in guide_sites.items()
                              if name in self.latent_names)
        return log_initial, log_joint

    def __call__(self, z: torch.Tensor) -> "State":
        """Both log-densities at ``z`` and their gradients (no graph kept)."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            log_initial, log_joint = self._log_densities(z)
            grad_initial, grad_joint = _two_gradients(log_initial, log_joint, z)
        return State(z.detach(), log_initial.detach(), log_joint.detach(),
                     grad_initial, grad_joint)

    def sample_initial(self, rows: int) -> torch.Tensor:
        """z ~ π₀ for every row (the model's latent sites run forward, or the guide)."""
        program = self.vae.model if self.initial == "prior" else self.vae.guide
        with SiteRecorder() as recorder:
            program(*self.args)
        parts = [recorder.sites[site.name]["value"].reshape(rows, site.size)
                 for site in self.sites]
        return torch.cat(parts, dim=-1).detach()


def _two_gradients(a: torch.Tensor, b: torch.Tensor, z: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """∇_z Σ a and ∇_z Σ b, rows being independent (one backward pass each, one graph)."""
    grad_b, = torch.autograd.grad(b.sum(), z, retain_graph=True)
    if not a.requires_grad:  # π₀ does not depend on z (cannot happen for a density; safety)
        return torch.zeros_like(z), grad_b
    grad_a, = torch.autograd.grad(a.sum(), z)
    return grad_a, grad_b


@dataclass
class State:
    """A batch of chain positions with log π₀, log p(x, z) and their gradients."""

    z: torch.Tensor
    log_initial: torch.Tensor
    log_joint: torch.Tensor
    grad_initial: torch.Tensor
    grad_joint: torch.Tensor

    def log_target(self, beta: float) -> torch.Tensor:
        return self.log_initial + beta * (self.log_joint - self.log_initial)

    def grad_target(self, beta: float) -> torch.Tensor:
        return self.grad_initial + beta * (self.grad_joint - self.grad_initial)

    def where(self, mask: torch.Tensor, other: "State") -> "State":
        """This state where ``mask`` (per row), else ``other``."""
        column = mask[:, None]
        return State(torch.where(column, self.z, other.z),
                     torch.where(mask, self.log_initial, other.log_initial),
                     torch.where(mask, self.log_joint, other.log_joint),
                     torch.where(column, self.grad_initial, other.grad_initial),
                     torch.where(column, self.grad_joint, other.grad_joint))


# --- HMC --------------------------------------------------------------------------------------

def hmc_transition(densities: Callable[[torch.Tensor], State], state: State, beta: float,
                   step_size: torch.Tensor, leapfrog_steps: int
                   ) -> tuple[State, torch.Tensor]:
    """One HMC transition per row leaving f_β invariant; ``step_size`` is ``[rows]``.
    Returns the new state and each row's acceptance probability."""
    epsilon = step_size[:, None]
    momentum = torch.randn_like(state.z)
    start_energy = -state.log_target(beta) + 0.5 * momentum.pow(2).sum(-1)
    proposal = state
    momentum = momentum + 0.5 * epsilon * proposal.grad_target(beta)
    for step in range(leapfrog_steps):
        proposal = densities(proposal.z + epsilon * momentum)
        scale = 0.5 if step == leapfrog_steps - 1 else 1.0
        momentum = momentum + scale * epsilon * proposal.grad_target(beta)
    end_energy = -proposal.log_target(beta) + 0.5 * momentum.pow(2).sum(-1)
    log_accept = (start_energy - end_energy).clamp(max=0.0)
    log_accept = torch.nan_to_num(log_accept, nan=-math.inf)
    accept = torch.rand_like(log_accept).log() < log_accept
    return proposal.where(accept, state), log_accept.exp()


@contextlib.contextmanager
def _frozen_parameters(module: torch.nn.Module) -> Iterator[None]:
    """No parameter gradients while the chains run (only ∇_z is needed)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with warnings.catch_warnings():  # pyro.module notes each frozen parameter it skips
            warnings.filterwarnings("ignore", message=".*not registered in the param store")
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _tile(t: torch.Tensor, copies: int) -> torch.Tensor:
    return t.repeat(copies, *([1] * (t.dim() - 1)))


def _log_mean_exp(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log (1/C) Σ_c w_c over dim 0 and its delta-method variance (see the module docstring)."""
    chains = log_w.shape[0]
    log_sum = torch.logsumexp(log_w, 0)
    if chains < 2:
        return log_sum, torch.full_like(log_sum, float("nan"))
    ratio = torch.exp(torch.logsumexp(2 * log_w, 0) - 2 * log_sum) * chains
    return log_sum - math.log(chains), ((ratio - 1) / (chains - 1)).clamp_min(0.0)


@dataclass
class _Settings:
    steps: int
    chains: int
    leapfrog_steps: int
    adapt_chains: int
    initial_step_size: float
    target_acceptance: float
    adapt_rate: float
    schedule: str
    initial: str


def _anneal(vae: torch.nn.Module, sites: list[LatentSite], x: torch.Tensor,
            y: torch.Tensor | None, settings: _Settings, start: torch.Tensor | None = None,
            step_sizes: torch.Tensor | None = None,
            progress: Callable[[int], None] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One batch of datapoints: forward AIS from π₀ (``start`` None) or reverse AIS from the
    given ``start`` (``[B, Σ sizes]``, exact posterior draws) with the forward run's
    ``step_sizes`` (``[T − 1, B]``). Returns the log-weights ``[C, B]`` of the estimating
    chains, the step sizes used ``[T − 1, B]`` and the mean acceptance probability."""
    batch, chains = len(x), settings.chains
    reverse = start is not None
    adapt = 0 if reverse else settings.adapt_chains
    copies = chains + adapt
    tiled_y = None if y is None else _tile(y, copies)
    densities = LogDensities(vae, sites, _tile(x, copies), tiled_y, settings.initial)
    betas = annealing_schedule(settings.steps, settings.schedule).tolist()
    if reverse:
        state = densities(_tile(start, copies))
        betas = betas[::-1]
        levels = range(settings.steps - 1, 0, -1)  # transition t uses the forward ε at β_t
    else:
        state = densities(densities.sample_initial(copies * batch))
        levels = range(1, settings.steps)
    log_step = torch.full((batch,), math.log(settings.initial_step_size), device=x.device,
                          dtype=x.dtype)
    used = torch.empty(max(settings.steps - 1, 0), batch, device=x.device, dtype=x.dtype)
    log_w = torch.zeros(copies * batch, device=x.device, dtype=x.dtype)
    acceptance, transitions = 0.0, 0
    level_iter = iter(levels)
    for i in range(1, settings.steps + 1):
        log_w += (betas[i] - betas[i - 1]) * (state.log_joint - state.log_initial)
        if i < settings.steps:
            level = next(level_iter)
            if reverse:
                epsilon = step_sizes[level - 1]
            else:
                epsilon = log_step.exp()
                used[level - 1] = epsilon
            state, accept = hmc_transition(densities, state, betas[i], _tile(epsilon, copies),
                                           settings.leapfrog_steps)
            accept = torch.nan_to_num(accept, nan=0.0).reshape(copies, batch)
            acceptance += float(accept[:chains].mean())
            transitions += 1
            if adapt:  # ε from the adaptation chains only (rows after the first C · B)
                log_step += settings.adapt_rate * (accept[chains:].mean(0)
                                                   - settings.target_acceptance)
        if progress is not None:
            progress(batch)
    if reverse:
        used = step_sizes
    log_w = log_w.reshape(copies, batch)[:chains]
    return log_w, used, acceptance / transitions if transitions else float("nan")


def _check_settings(settings: _Settings) -> None:
    for name in ("steps", "chains", "leapfrog_steps"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"AIS {name} must be a positive integer, not "
                              f"{getattr(settings, name)}.")
    if settings.adapt_chains < 0:
        raise ConfigError(f"adapt_chains must be 0 (a fixed step size) or more, not "
                          f"{settings.adapt_chains}.")
    if settings.initial not in INITIAL_DISTRIBUTIONS:
        raise ConfigError(f"initial distribution {settings.initial!r} is not one of "
                          f"{INITIAL_DISTRIBUTIONS}.")
    if not settings.initial_step_size > 0:
        raise ConfigError(f"the initial step size must be positive, not "
                          f"{settings.initial_step_size}.")
    if not 0 < settings.target_acceptance < 1:
        raise ConfigError(f"the target acceptance rate must lie in (0, 1), not "
                          f"{settings.target_acceptance}.")
    annealing_schedule(1, settings.schedule)


def _batch_size(num_datapoints: int, rows_per_datapoint: int, max_rows: int) -> int:
    """Datapoints per vectorized batch: at most ``max_rows`` rows (at least one datapoint)."""
    return max(1, min(num_datapoints, max_rows // rows_per_datapoint))


@torch.no_grad()
def _row_batches(x: torch.Tensor, y: torch.Tensor | None, size: int
                 ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """(first row, rows, their labels) of ``x`` in batches of ``size`` rows."""
    for first in range(0, len(x), size):
        yield first, x[first: first + size], None if y is None else y[first: first + size]


def ais_log_likelihood(vae: torch.nn.Module, x: torch.Tensor, steps: int = 1000,
                       chains: int = 16, *, y: torch.Tensor | None = None,
                       leapfrog_steps: int = 10, adapt_chains: int = 4,
                       initial: str = "prior", initial_step_size: float = 0.1,
                       target_acceptance: float = 0.65, adapt_rate: float = 0.2,
                       schedule: str = "sigmoid", max_rows: int = DEFAULT_MAX_ROWS,
                       progress: Callable[[int], None] | None = None) -> AISEstimate:
    """AIS estimate of log p(x) (of log p(x | y) given labels ``y``) for every row of ``x``.

    ``steps`` annealing steps T along the geometric path from ``initial`` (``"prior"``: p(z);
    ``"posterior"``: the guide's q(z|x)) to p(z|x); ``chains`` estimating chains per datapoint
    plus ``adapt_chains`` that only steer the step size (0: ε stays ``initial_step_size``);
    HMC with ``leapfrog_steps`` leapfrog steps, its per-datapoint ε driven toward
    ``target_acceptance`` at ``adapt_rate``. Datapoints are processed so that at most
    ``max_rows`` (datapoints × chains) are evaluated at once. ``progress(n)`` is called after
    each annealing step with the n datapoints it advanced (``steps`` × N in all). See the
    module docstring for the maths and the cost of each option.
    """
    settings = _Settings(steps, chains, leapfrog_steps, adapt_chains, initial_step_size,
                         target_acceptance, adapt_rate, schedule, initial)
    _check_settings(settings)
    if not len(x):
        raise ConfigError("there are no datapoints to score.")
    sites = latent_sites(vae, x, y)
    log_likelihoods, variances, step_sizes, acceptances = [], [], [], []
    with vae.scoring(), _frozen_parameters(vae):
        size = _batch_size(len(x), chains + adapt_chains, max_rows)
        for _, batch, labels in _row_batches(x, y, size):
            log_w, used, acceptance = _anneal(vae, sites, batch, labels, settings,
                                              progress=progress)
            estimate, variance = _log_mean_exp(log_w)
            log_likelihoods.append(estimate)
            variances.append(variance)
            step_sizes.append(used)
            acceptances.append(acceptance * len(batch))
    return AISEstimate(torch.cat(log_likelihoods).cpu(), torch.cat(variances).cpu(), steps,
                       chains, sum(acceptances) / len(x), torch.cat(step_sizes, 1).cpu())


@torch.no_grad()
def simulate(vae: torch.nn.Module, example: torch.Tensor, num_datapoints: int,
             y: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(x, z) drawn from the model: z ~ p(z), x ~ p(x|z), for ``num_datapoints`` rows shaped
    like the rows of ``example`` (given labels ``y``, one per row, for a conditional model)."""
    latent = {site.name for site in latent_sites(vae, example, y)}
    template = torch.zeros((num_datapoints, *example.shape[1:]), device=example.device,
                           dtype=example.dtype)
    args = (template,) if y is None else (template, y[:num_datapoints])
    with vae.scoring():
        trace = poutine.trace(poutine.uncondition(vae.model)).get_trace(*args)
    sites = _sample_sites(trace)
    observed = [site for site in sites if site["name"] not in latent]
    if len(observed) != 1:
        raise ConfigError(
            f"BDMC simulates the data from the model's one observed site, but this model "
            f"observes {len(observed)} ({', '.join(s['name'] for s in observed) or 'none'}); "
            "score it with --estimator ais or is.")
    z = {site["name"]: site["value"].detach() for site in sites if site["name"] in latent}
    return observed[0]["value"].detach(), z


@torch.no_grad()
def bdmc(vae: torch.nn.Module, num_datapoints: int, steps: int = 1000, chains: int = 16, *,
         example: torch.Tensor, y: torch.Tensor | None = None, leapfrog_steps: int = 10,
         adapt_chains: int = 4, initial: str = "prior", initial_step_size: float = 0.1,
         target_acceptance: float = 0.65, adapt_rate: float = 0.2, schedule: str = "sigmoid",
         max_rows: int = DEFAULT_MAX_ROWS, progress: Callable[[int], None] | None = None,
         data: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None) -> BDMCResult:
    """Bidirectional Monte Carlo on ``num_datapoints`` pairs (z*, x) simulated from the model
    (rows shaped like ``example``'s; labels ``y`` for a conditional model), or on ``data``
    = (x, z*) given: forward AIS (lower bound) and reverse AIS from z* with the forward step
    sizes (upper bound), both with the settings of :func:`ais_log_likelihood`. ``progress(n)``
    is called as there, forward and reverse (2 × ``steps`` × N in all)."""
    settings = _Settings(steps, chains, leapfrog_steps, adapt_chains, initial_step_size,
                         target_acceptance, adapt_rate, schedule, initial)
    _check_settings(settings)
    if num_datapoints < 1:
        raise ConfigError(f"BDMC needs at least 1 simulated datapoint, not {num_datapoints}.")
    sites = latent_sites(vae, example, y)
    x, z = simulate(vae, example, num_datapoints, y) if data is None else data
    labels_all = None if y is None else y[:len(x)]
    flat_z = torch.cat([z[site.name].reshape(len(x), site.size) for site in sites], -1)
    lower, upper = [], []
    with vae.scoring(), _frozen_parameters(vae):
        size = _batch_size(len(x), chains + adapt_chains, max_rows)
        for first, batch, labels in _row_batches(x, labels_all, size):
            log_w, used, accept = _anneal(vae, sites, batch, labels, settings,
                                          progress=progress)
            reverse_w, _, reverse_accept = _anneal(vae, sites, batch, labels, settings,
                                                   start=flat_z[first: first + size],
                                                   step_sizes=used, progress=progress)
            lower.append((*_log_mean_exp(log_w), used, accept * len(batch)))
            estimate, variance = _log_mean_exp(reverse_w)
            upper.append((-estimate, variance, used, reverse_accept * len(batch)))

    def gather(parts: list) -> AISEstimate:
        return AISEstimate(torch.cat([p[0] for p in parts]).cpu(),
                           torch.cat([p[1] for p in parts]).cpu(), steps, chains,
                           sum(p[3] for p in parts) / len(x),
                           torch.cat([p[2] for p in parts], 1).cpu())

    return BDMCResult(gather(lower), gather(upper), x.cpu(), {k: v.cpu() for k, v in z.items()})
