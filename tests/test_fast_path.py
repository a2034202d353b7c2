"""The fast training path gives Pyro's numbers: recorded ELBOs against Pyro's own classes, and
parameter registration skipped only where it changes nothing."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from pyro_vae.config import Config, ModelConfig
from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import (
    DEFAULT_MAX_CHUNK,
    auto_max_chunk,
    estimate_log_likelihood,
    resolve_max_chunk,
)
from pyro_vae.models import build_vae
from pyro_vae.objectives import (
    FastTrace_ELBO,
    FastTraceMeanField_ELBO,
    ObjectiveModule,
    make_objective,
)
from pyro_vae.objectives.fast_elbo import Structure
from pyro_vae.params import parameters_owned, register_module
from helpers import model_config

IMAGE = (1, 4, 5)
PIXELS = 20
PYRO_CLASSES = {"elbo": Trace_ELBO, "meanfield": TraceMeanField_ELBO}


def small_vae(num_data=None, **model):
    config = model_config(latent_dim=3, hidden_dims=[8], **model)
    torch.manual_seed(1)
    return build_vae(config, IMAGE, num_data=num_data)


def batch(size=6, seed=2):
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((size, PIXELS), 0.3), generator=generator)


def loss_and_grads(loss_fn, vae, seed):
    pyro.set_rng_seed(seed)
    vae.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in vae.parameters() if p.grad is not None]


def assert_same_as_pyro(vae, name, args, particles=1, vectorize=True, calls=3, recorded=True):
    """Every call of the library's objective (the first traced by Pyro, the rest recorded)
    gives Pyro's loss (to rounding) and exactly Pyro's gradients at the same seed."""
    objective = make_objective(name, particles, vectorize=vectorize)
    module = ObjectiveModule(vae, objective)
    reference = PYRO_CLASSES[name](num_particles=particles,
                                   vectorize_particles=vectorize and particles > 1,
                                   max_plate_nesting=1)
    with pyro.validation_enabled(False):
        for seed in range(calls):
            fast_loss, fast_grads = loss_and_grads(lambda: module(*args), vae, seed)
            ref_loss, ref_grads = loss_and_grads(
                lambda: reference.differentiable_loss(vae.model, vae.guide, *args), vae, seed)
            assert torch.allclose(fast_loss, ref_loss, rtol=1e-6, atol=0), (seed, name)
            assert len(fast_grads) == len(ref_grads) > 0
            for fast, ref in zip(fast_grads, ref_grads):
                assert torch.equal(fast, ref), (seed, name)
    structure = objective._structures[(vae.model, vae.guide)]
    assert isinstance(structure, Structure) if recorded else structure is None


@pytest.mark.parametrize("name", ["elbo", "meanfield"])
def test_plain_vae_matches_pyro(name):
    assert_same_as_pyro(small_vae(), name, (batch(),))


@pytest.mark.parametrize("name", ["elbo", "meanfield"])
def test_minibatch_scaling_and_kl_weight_match_pyro(name):
    vae = small_vae(num_data=1000)
    vae.kl_weight = 0.3
    assert_same_as_pyro(vae, name, (batch(),))


@pytest.mark.parametrize("name", ["elbo", "meanfield"])
def test_hierarchical_vae_matches_pyro(name):
    vae = small_vae(num_data=500, stochastic_layers=2, top_latent_dim=2, top_hidden_dims=[5])
    vae.kl_weight = 0.5
    assert_same_as_pyro(vae, name, (batch(),))


@pytest.mark.parametrize("name", ["elbo", "meanfield"])
@pytest.mark.parametrize("vectorize", [True, False])
def test_several_particles_match_pyro(name, vectorize):
    assert_same_as_pyro(small_vae(num_data=100), name, (batch(),), particles=4,
                        vectorize=vectorize)


def test_mixture_prior_has_no_closed_form_kl_and_matches_pyro():
    # TraceMeanField_ELBO falls back to log q − log p at the site: so must the recorded path.
    assert_same_as_pyro(small_vae(prior="mixture", options={"prior": {"components": 3}}), "meanfield",
                        (batch(),))


@pytest.mark.parametrize("name", ["elbo", "meanfield"])
def test_conditional_vae_matches_pyro(name):
    vae = small_vae(num_data=100, kind="cvae", num_classes=3)
    assert_same_as_pyro(vae, name, (batch(), torch.tensor([0, 1, 2, 0, 1, 2])))


@pytest.mark.slow
def test_bayesian_decoder_goes_through_pyro():
    # Global weight sites lie outside the data plate: never recorded, Pyro's numbers.
    vae = small_vae(num_data=100, bayesian_decoder="last")
    assert_same_as_pyro(vae, "elbo", (batch(),), recorded=False)
    assert_same_as_pyro(vae, "meanfield", (batch(),), particles=2, vectorize=False,
                        recorded=False)


class CountingTraces:
    """Counts how many times Pyro builds a guide trace."""

    def __init__(self, monkeypatch):
        from pyro.infer import trace_elbo

        self.count = 0
        original = trace_elbo.get_importance_trace

        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(trace_elbo, "get_importance_trace", counted)


def test_pyro_traces_only_the_first_call(monkeypatch):
    traces = CountingTraces(monkeypatch)
    vae = small_vae()
    module = ObjectiveModule(vae, make_objective("elbo"))
    with pyro.validation_enabled(False):
        for _ in range(4):
            module(batch())
    assert traces.count == 1


def test_validation_enabled_uses_pyro_every_call(monkeypatch):
    traces = CountingTraces(monkeypatch)
    module = ObjectiveModule(small_vae(), make_objective("meanfield"))
    with pyro.validation_enabled(True):
        for _ in range(3):
            module(batch())
    assert traces.count == 3


class DiscreteLatent(nn.Module):
    """A guide with a non-reparameterized site: Pyro's score-function terms are needed."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([0.2, -0.1]))

    def model(self, x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(logits=torch.zeros(len(x))))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(self, x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(logits=self.logits.sum().expand(len(x))))


def test_non_reparameterized_guides_go_through_pyro():
    model = DiscreteLatent()
    objective = FastTrace_ELBO()
    x = torch.tensor([0.5, 1.5])
    with pyro.validation_enabled(False):
        for seed in range(3):
            fast_loss, fast_grads = loss_and_grads(
                lambda: objective.differentiable_loss(model.model, model.guide, x), model, seed)
            ref_loss, ref_grads = loss_and_grads(
                lambda: Trace_ELBO().differentiable_loss(model.model, model.guide, x), model,
                seed)
            assert torch.equal(fast_loss, ref_loss)
            assert torch.equal(fast_grads[0], ref_grads[0])
    assert objective._structures[(model.model, model.guide)] is None


class ChangingModel(nn.Module):
    """A pair whose sites change after the first call (an extra observed site)."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.tensor(0.3))
        self.calls = 0

    def model(self, x):
        self.calls += 1
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)
            if self.calls > 1:
                pyro.sample("x2", dist.Normal(z, 2.0), obs=x)

    def guide(self, x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(self.loc, 1.0))


def test_a_changed_structure_falls_back_to_pyro():
    pair = ChangingModel()
    objective = FastTraceMeanField_ELBO()
    x = torch.tensor([0.5, 1.5, -0.2])
    with pyro.validation_enabled(False):
        objective.differentiable_loss(pair.model, pair.guide, x)
        assert isinstance(objective._structures[(pair.model, pair.guide)], Structure)
        loss = objective.differentiable_loss(pair.model, pair.guide, x)
        assert objective._structures[(pair.model, pair.guide)] is None
        # Pyro's value for the new structure: both observed sites count.
        pyro.set_rng_seed(5)
        loss = objective.differentiable_loss(pair.model, pair.guide, x)
        pyro.set_rng_seed(5)
        expected = TraceMeanField_ELBO().differentiable_loss(pair.model, pair.guide, x)
    assert torch.equal(loss, expected)


@pytest.mark.slow
def test_training_with_the_fast_path_follows_pyro_step_for_step():
    # Ten Adam steps through ObjectiveModule and through Pyro's Trace_ELBO end at the same
    # weights: the recorded path changes nothing along a whole run.
    def run(make_loss):
        vae = small_vae(num_data=200)
        optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
        loss_fn = make_loss(vae)
        pyro.set_rng_seed(3)
        with pyro.validation_enabled(False):
            for step in range(10):
                optimizer.zero_grad()
                loss_fn(batch(seed=step)).backward()
                optimizer.step()
        return [p.detach().clone() for p in vae.parameters()]

    fast = run(lambda vae: ObjectiveModule(vae, make_objective("elbo")))
    ref = run(lambda vae: lambda x: Trace_ELBO(max_plate_nesting=1).differentiable_loss(
        vae.model, vae.guide, x))
    for a, b in zip(fast, ref):
        assert torch.equal(a, b)


# -- parameter registration ----------------------------------------------------------------------

def param_sites(fn, *args):
    trace = poutine.trace(fn).get_trace(*args)
    return [name for name, site in trace.nodes.items() if site["type"] == "param"]


def test_registration_is_skipped_only_once_registered():
    vae = small_vae()
    x = batch()
    with parameters_owned():
        # An empty param store: the first call registers, as pyro.module would.
        assert param_sites(vae.model, x)
        assert "vae$$$encoder.head.loc.weight" in pyro.get_param_store()
        assert param_sites(vae.model, x) == []
        assert param_sites(vae.guide, x) == []
    # Outside the block, every call registers: plain SVI finds its parameters.
    assert len(param_sites(vae.guide, x)) == len(list(vae.parameters()))


def test_svi_still_trains_the_registered_parameters():
    vae = small_vae(num_data=100)
    before = [p.detach().clone() for p in vae.parameters()]
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    svi.step(batch())
    changed = [not torch.equal(a, b) for a, b in zip(before, vae.parameters())]
    assert all(changed)


def test_register_module_outside_the_block_is_pyro_module():
    net = nn.Linear(2, 3)
    register_module("net", net)
    assert set(pyro.get_param_store().keys()) == {"net$$$weight", "net$$$bias"}


# -- per-datapoint objectives: recorded sites against Pyro's trace and replay --------------------

def traced_particles(model, guide, num_particles, args, kwargs, max_plate_nesting=1,
                     detach_samples=False, who="this objective"):
    """run_particles as it was written with poutine.trace and poutine.replay."""
    from pyro_vae.objectives import particles

    def in_particle_plate(fn):
        def wrapped(*a, **k):
            with pyro.plate("particles", num_particles, dim=-(max_plate_nesting + 1)):
                return fn(*a, **k)
        return wrapped

    if detach_samples:
        guide = particles._DetachSamples()(guide)
    guide_trace = poutine.trace(in_particle_plate(guide)).get_trace(*args, **kwargs)
    if detach_samples:
        for site in particles._sample_sites(guide_trace):
            site["value"] = site["value"].detach()
    model_trace = poutine.trace(
        poutine.replay(in_particle_plate(model), trace=guide_trace)).get_trace(*args, **kwargs)
    frame = particles._data_frame(particles._sample_sites(model_trace)[0], who)
    return particles.ParticleTraces(model_trace, guide_trace, num_particles, frame.size,
                                    (frame.full_size or frame.size) / frame.size)


# DReG and STL refuse guides with several latent sites (the two-layer model), so they are
# compared on the one-layer model only.
@pytest.mark.parametrize("name,layers", [
    (name, layers) for name in ("iwae", "dreg", "stl", "renyi", "score") for layers in (1, 2)
    if not (name in ("dreg", "stl") and layers == 2)])
def test_per_datapoint_objectives_match_pyro_traces(name, layers, monkeypatch):
    from pyro_vae.objectives import particles

    model = {"stochastic_layers": 2, "top_latent_dim": 2, "top_hidden_dims": [5]} \
        if layers == 2 else {}
    vae = small_vae(num_data=300, **model)
    vae.kl_weight = 0.7
    x = batch()
    results = []
    for runner in (particles.run_particles, traced_particles):
        monkeypatch.setattr(particles, "run_particles", runner)
        objective = make_objective(name, particles=5)
        module = ObjectiveModule(vae, objective)
        results.append([loss_and_grads(lambda m=module: m(x), vae, seed) for seed in range(2)])
    for (fast_loss, fast_grads), (ref_loss, ref_grads) in zip(*results):
        assert torch.equal(fast_loss, ref_loss)
        assert len(fast_grads) == len(ref_grads) > 0
        for fast, ref in zip(fast_grads, ref_grads):
            assert torch.equal(fast, ref)


def test_evaluation_matches_pyro_traces(monkeypatch):
    from pyro_vae import evaluate

    vae = small_vae()
    x = batch(size=7)
    estimates = []
    for runner in (evaluate.run_particles, traced_particles):
        monkeypatch.setattr(evaluate, "run_particles", runner)
        pyro.set_rng_seed(4)
        estimates.append(evaluate.estimate_log_likelihood(vae, x, num_samples=30, max_chunk=40))
    assert torch.equal(estimates[0].log_likelihood, estimates[1].log_likelihood)
    assert torch.equal(estimates[0].elbo, estimates[1].elbo)


# -- evaluation chunk size -----------------------------------------------------------------------

def test_auto_max_chunk_fills_the_given_share_of_free_memory():
    gib = 2 ** 30
    # 100 GiB free, 4 KiB per decoded image: half of it holds 12.5 M images.
    assert auto_max_chunk(100 * gib, 4096) == 100 * gib // 2 // 4096
    # Little free memory never goes below the fixed default; a failed probe neither.
    assert auto_max_chunk(gib // 100, 4096) == DEFAULT_MAX_CHUNK
    assert auto_max_chunk(100 * gib, 0) == DEFAULT_MAX_CHUNK


def test_auto_max_chunk_on_a_cpu_is_the_default():
    vae = small_vae()
    x = batch(size=5)
    assert resolve_max_chunk("auto", vae, x) == DEFAULT_MAX_CHUNK
    assert resolve_max_chunk(123, vae, x) == 123
    pyro.set_rng_seed(1)
    auto = estimate_log_likelihood(vae, x, num_samples=50, max_chunk="auto")
    pyro.set_rng_seed(1)
    fixed = estimate_log_likelihood(vae, x, num_samples=50, max_chunk=DEFAULT_MAX_CHUNK)
    assert torch.equal(auto.log_likelihood, fixed.log_likelihood)


def test_max_chunk_auto_in_a_recipe():
    assert Config.from_dict({"evaluate": {"max_chunk": "auto"}}).evaluate.max_chunk == "auto"
    assert Config.from_dict({"evaluate": {"max_chunk": 500}}).evaluate.max_chunk == 500
    with pytest.raises(ConfigError, match="max_chunk"):
        Config.from_dict({"evaluate": {"max_chunk": "big"}})


# -- the rearranged log-densities are the originals bit for bit --------------------------------

def _value_and_grad(make_log_prob, leaf):
    leaf.grad = None
    out = make_log_prob()
    (out * torch.linspace(0.5, 1.5, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach(), leaf.grad.clone()


@pytest.mark.parametrize("value_shape,batch_shape", [((6, 3), (6,)), ((4, 6, 3), (4, 6)),
                                                     ((3,), (6,))])
def test_standard_normal_is_normal_0_1(value_shape, batch_shape):
    from pyro_vae.distributions import StandardNormal

    z = (torch.randn(value_shape) * 3).requires_grad_()
    new = _value_and_grad(
        lambda: StandardNormal((*batch_shape, 3)).to_event(1).log_prob(z), z)
    old = _value_and_grad(lambda: dist.Normal(torch.zeros(*batch_shape, 3), 1.0)
                          .to_event(1).log_prob(z), z)
    assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1])


def test_standard_normal_kl_samples_and_expand():
    from pyro_vae.distributions import StandardNormal

    loc = torch.randn(6, 3, requires_grad=True)
    q = dist.Normal(loc, torch.rand(6, 3) + 0.1).to_event(1)
    new = _value_and_grad(lambda: torch.distributions.kl_divergence(
        q, StandardNormal((6, 3)).to_event(1)), loc)
    old = _value_and_grad(lambda: torch.distributions.kl_divergence(
        q, dist.Normal(torch.zeros(6, 3), 1.0).to_event(1)), loc)
    assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1])
    expanded = StandardNormal((6, 3)).to_event(1).expand((5, 6))
    assert isinstance(expanded.base_dist, StandardNormal)
    assert expanded.batch_shape == (5, 6) and expanded.sample().shape == (5, 6, 3)
    pyro.set_rng_seed(0)
    draw = StandardNormal((6, 3)).sample()
    pyro.set_rng_seed(0)
    assert torch.equal(draw, dist.Normal(torch.zeros(6, 3), 1.0).sample())


@pytest.mark.parametrize("logit_shape,value_shape", [((6, 20), (6, 20)),
                                                     ((4, 6, 20), (6, 20))])
def test_bernoulli_pixels_is_independent_bernoulli(logit_shape, value_shape):
    from pyro_vae.distributions import BernoulliPixels

    logits = (torch.randn(logit_shape) * 4).requires_grad_()
    x = torch.bernoulli(torch.full(value_shape, 0.4))
    new = _value_and_grad(lambda: BernoulliPixels(logits).log_prob(x), logits)
    old = _value_and_grad(lambda: dist.Bernoulli(logits=logits).to_event(1).log_prob(x),
                          logits)
    assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1])
    pixels = BernoulliPixels(logits.detach())
    assert pixels.batch_shape == logit_shape[:-1] and pixels.event_shape == (20,)
    expanded = pixels.expand((3,) + logit_shape[:-1])
    assert isinstance(expanded, BernoulliPixels) and expanded.sample().shape == (3, *logit_shape)
    assert torch.equal(pixels.mean, torch.sigmoid(logits.detach()))
