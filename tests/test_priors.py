"""Priors on z: normalized densities, sampling that matches the density, every objective with
every prior, the mean-field objective's Monte Carlo fallback, free bits and the KL monitor."""

import math

import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.config import Config, ModelConfig
from pyro_vae.errors import ConfigError
from pyro_vae.evaluate import latent_activity, monte_carlo_kl
from pyro_vae.models import build_vae
from pyro_vae.networks import MLPEncoder
from pyro_vae.objectives import OBJECTIVES, ObjectiveModule, free_bits_penalty, make_objective
from pyro_vae.priors import DiagonalGaussianMixture as _gaussian_mixture_for_test
from pyro_vae.priors import FlowPrior, MixturePrior, StandardNormalPrior, VampPrior
from pyro_vae.registry import OBJECTIVES as OBJECTIVE_REGISTRY

PIXELS = 16

# A 2-D grid for quadrature: the trapezoid rule on [-L, L]^2 with spacing h.
L, POINTS = 9.0, 901
AXIS = torch.linspace(-L, L, POINTS, dtype=torch.float64)
CELL = (AXIS[1] - AXIS[0]) ** 2
GRID = torch.stack(torch.meshgrid(AXIS, AXIS, indexing="ij"), -1).reshape(-1, 2)


def _perturb(module: torch.nn.Module, size: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(size * torch.randn(parameter.shape, generator=generator,
                                              dtype=parameter.dtype))


def _priors_2d() -> dict:
    """The three learned priors in two dimensions, moved away from their initial values."""
    torch.manual_seed(0)
    mixture = MixturePrior(2, components=3)
    _perturb(mixture, 0.5, 1)
    encoder = MLPEncoder(PIXELS, 2, hidden_dims=[8])
    vamp = VampPrior(2, encoder, PIXELS, components=5)
    _perturb(vamp, 1.0, 2)
    _perturb(encoder, 0.3, 3)
    flow = FlowPrior(2, num_flows=3, hidden_dims=[8])
    _perturb(flow, 0.1, 4)  # far from N(0, I): log-density differs by up to ~0.8 nats
    return {"mixture": mixture.double(), "vamp": vamp.double(), "flow": flow.double(),
            "encoder": encoder.double()}


def _density_on_grid(prior) -> torch.Tensor:
    with torch.no_grad():
        return prior(torch.Size([]), GRID.device, GRID.dtype).log_prob(GRID).exp()


@pytest.mark.parametrize("name", ["mixture", "vamp", "flow"])
def test_prior_density_integrates_to_one(name):
    prior = _priors_2d()[name]
    density = _density_on_grid(prior)
    mass = float(density.sum() * CELL)
    # Quadrature error of a smooth density on a 0.02 grid is far below 1e-3; mass beyond ±9
    # is negligible for these scales (checked: the density on the border is < 1e-8).
    square = density.reshape(POINTS, POINTS)
    border = max(square[[0, -1]].max(), square[:, [0, -1]].max())
    assert float(border) < 1e-8
    assert abs(mass - 1.0) < 1e-3


@pytest.mark.parametrize("name", ["mixture", "vamp", "flow"])
@pytest.mark.slow
def test_prior_samples_match_its_density(name):
    """Moments of 100,000 draws agree with the same moments integrated against the density,
    within 5 standard errors of the sample means."""
    prior = _priors_2d()[name]
    density = _density_on_grid(prior) * CELL
    torch.manual_seed(5)
    with torch.no_grad():
        draws = prior(torch.Size([100_000]), GRID.device, GRID.dtype).sample()
    features = {
        "z1": lambda z: z[..., 0], "z2": lambda z: z[..., 1],
        "z1^2": lambda z: z[..., 0] ** 2, "z1*z2": lambda z: z[..., 0] * z[..., 1],
        # A threshold midway between grid lines, so the quadrature cells do not straddle it.
        "z1>0.01": lambda z: (z[..., 0] > 0.01).double(),
    }
    for label, f in features.items():
        exact = float((f(GRID) * density).sum())
        values = f(draws)
        stderr = float(values.std() / math.sqrt(len(values)))
        assert abs(float(values.mean()) - exact) < 5 * stderr, label


def test_vamp_prior_is_the_mixture_of_encoder_posteriors_at_its_pseudo_inputs():
    priors = _priors_2d()
    vamp, encoder = priors["vamp"], priors["encoder"]
    z = torch.randn(7, 2, dtype=torch.float64)
    loc, scale = encoder(torch.sigmoid(vamp.pseudo_inputs))
    by_hand = torch.distributions.Normal(loc, scale).log_prob(z[:, None]).sum(-1)
    by_hand = torch.logsumexp(by_hand, -1) - math.log(len(loc))
    got = vamp(torch.Size([7]), z.device, z.dtype).log_prob(z)
    assert torch.allclose(got, by_hand, atol=1e-10)


def test_vamp_prior_shares_the_encoder_without_storing_it_twice():
    config = ModelConfig(latent_dim=3, hidden_dims=[12], prior="vamp",
                         options={"prior": {"components": 4}})
    vae = build_vae(config, (1, 4, 4))
    assert vae.prior.encoder is vae.encoder
    assert not [key for key in vae.state_dict() if key.startswith("prior.encoder")]
    assert len(list(vae.parameters())) == len(set(map(id, vae.parameters())))


def test_flow_prior_starts_as_the_standard_normal():
    flow = FlowPrior(3, num_flows=2)
    z = torch.randn(5, 3)
    expected = StandardNormalPrior(3)(torch.Size([5]), z.device, z.dtype).log_prob(z)
    assert torch.allclose(flow(torch.Size([5]), z.device, z.dtype).log_prob(z), expected,
                          atol=1e-6)


def _small(prior: str, num_data: int = 32, seed: int = 0):
    torch.manual_seed(seed)
    config = ModelConfig(latent_dim=3, hidden_dims=[12], prior=prior,
                         options={"prior": {"mixture": {"components": 4},
                                            "vamp": {"components": 4},
                                            "flow": {"layers": 2}}.get(prior, {})})
    vae = build_vae(config, (1, 4, 4), num_data=num_data)
    x = torch.rand(num_data, PIXELS).round()
    return vae, x


@pytest.mark.parametrize("prior", ["normal", "mixture", "vamp", "flow"])
def test_every_objective_trains_with_every_prior(prior):
    for objective in (o for o in OBJECTIVE_REGISTRY.choices()
                      if "discrete_only" not in OBJECTIVE_REGISTRY.capabilities(o)):
        vae, x = _small(prior)
        module = ObjectiveModule(vae, make_objective(objective, particles=2))
        loss = module(x[:8])
        loss.backward()
        assert torch.isfinite(loss), objective
        # The prior's own parameters learn under every objective (the flow's inner layers
        # only once its zero-initialized output layers have moved).
        grads = [p.grad.abs().sum() for p in vae.prior.parameters() if p.grad is not None]
        assert (sum(grads) > 0) == (prior != "normal"), objective
        assert vae.encoder.head.loc.weight.grad.abs().sum() > 0, objective


@pytest.mark.parametrize("prior", ["mixture", "vamp", "flow"])
@pytest.mark.slow
def test_meanfield_falls_back_to_monte_carlo_kl_and_estimates_the_same_elbo(prior):
    """No closed-form KL exists for these priors: TraceMeanField_ELBO must run without error
    and estimate the same ELBO as Trace_ELBO (means of 50 losses of 20 vectorized draws each
    agree within 5 standard errors of their difference)."""
    vae, x = _small(prior)
    vae.num_data = None
    with torch.no_grad():
        means, errors = [], []
        for cls in (TraceMeanField_ELBO, Trace_ELBO):
            elbo = cls(num_particles=20, vectorize_particles=True, max_plate_nesting=1)
            losses = torch.tensor([elbo.loss(vae.model, vae.guide, x) for _ in range(50)])
            means.append(float(losses.mean()))
            errors.append(float(losses.std() / math.sqrt(len(losses))))
    assert abs(means[0] - means[1]) < 5 * math.hypot(*errors)


def test_monte_carlo_kl_matches_the_closed_form_within_standard_error():
    vae, x = _small("normal")
    loc, scale = vae.encoder(x)
    exact = vae.kl_per_dim(loc, scale).sum(-1).detach()
    estimates = torch.stack([monte_carlo_kl(vae, x, num_samples=25) for _ in range(40)])
    stderr = estimates.std(0) / math.sqrt(len(estimates))
    assert ((estimates.mean(0) - exact).abs() < 5 * stderr).all()


def test_latent_activity_reports_total_kl_for_every_prior():
    for prior in ("normal", "mixture", "vamp", "flow"):
        vae, x = _small(prior)
        activity = latent_activity(vae, x)
        assert math.isfinite(activity["kl"]) and activity["kl"] > 0
        if prior == "normal":
            assert abs(activity["kl"] - sum(activity["kl_per_dim"])) < 1e-4
        else:
            assert activity["kl_per_dim"] is None


def test_free_bits_penalty_is_the_shortfall_below_the_floor():
    vae, x = _small("normal")
    vae.kl_weight = 0.5
    loc, scale = vae.encoder(x)
    kl = vae.kl_per_dim(loc, scale).mean(0)
    floor = float(kl.detach().max()) + 0.1  # every dimension below the floor
    penalty = free_bits_penalty(vae, x, floor)
    assert torch.allclose(penalty, 0.5 * len(x) * (floor - kl).sum())
    assert float(free_bits_penalty(vae, x, float(kl.detach().min()) * 0.5).detach()) == 0.0


def test_free_bits_stop_pushing_dimensions_below_the_floor_towards_the_prior():
    """With a decoder that ignores z, the mean-field loss's only encoder gradient is the KL's;
    free bits above every dimension's KL cancel it exactly."""
    vae, x = _small("normal")
    with torch.no_grad():
        vae.decoder.net[0].weight.zero_()
    loc, scale = vae.encoder(x)
    floor = float(vae.kl_per_dim(loc, scale).mean(0).max()) + 1.0
    objective = make_objective("meanfield")
    for free_bits, expect_zero in ((0.0, False), (floor, True)):
        vae.zero_grad()
        ObjectiveModule(vae, objective, free_bits)(x).backward()
        norm = float(vae.encoder.head.loc.weight.grad.norm())
        assert (norm < 1e-5) if expect_zero else (norm > 1e-3)


@pytest.mark.parametrize("overrides, words", [
    ({"model": {"prior": "flow", "latent_dim": 1}}, "latent_dim ≥ 2"),
    ({"model": {"prior": "mixture", "stochastic_layers": 2}}, "already hierarchical"),
    ({"model": {"prior": "vamps"}}, "Did you mean 'vamp'"),
    ({"model": {"prior_components": 0}}, "prior_components"),
    ({"train": {"free_bits": 0.5, "objective": "iwae"}}, "free_bits"),
    ({"train": {"free_bits": 0.5}, "model": {"prior": "vamp"}}, "splits over dimensions"),
    ({"train": {"free_bits": -1.0}}, "non-negative"),
    ({"model": {"prior_components": 5}}, "prior_components is the option 'components' of "
                                         "prior = \"mixture\" or prior = \"vamp\""),
    ({"model": {"prior": "mixture", "flow_layers": 2}}, "flow_layers is the option 'layers'"),
    ({"model": {"prior": "mixture"}, "prior": {"components": 0}}, "must be positive"),
    ({"model": {"prior": "flow"}, "prior": {"layer": 2}}, "Did you mean 'layers'"),
    ({"model": {"guide": "lowrank"}, "guide": {"rank": 1.5}}, "should be an integer"),
    ({"model": {"weight_prior_scale": 0.5}}, "weight_prior_scale is only used"),
])
def test_bad_prior_settings_are_explained(overrides, words):
    with pytest.raises(ConfigError, match=words):
        Config().with_overrides(overrides)


def test_mixture_density_by_matrix_products_matches_mixture_same_family():
    import pyro.distributions as dist

    torch.manual_seed(2)
    logits, loc = torch.randn(6), torch.randn(6, 4) * 2
    scale = torch.rand(6, 4) + 0.2
    reference = dist.MixtureSameFamily(dist.Categorical(logits=logits),
                                       dist.Normal(loc, scale).to_event(1))
    mixture = MixturePrior(4, components=6)
    with torch.no_grad():
        mixture.logits.copy_(logits)
        mixture.loc.copy_(loc)
        mixture.raw_scale.copy_(torch.log(torch.expm1(scale)))
    z = torch.randn(5, 3, 4) * 3  # [particles, batch, D]
    got = mixture(torch.Size([3]), z.device, z.dtype).log_prob(z)
    assert got.shape == (5, 3)
    assert torch.allclose(got, reference.log_prob(z), rtol=1e-5, atol=1e-4)


def test_vamp_pseudo_inputs_start_at_training_images():
    vae, x = _small("vamp")  # 4 pseudo-inputs, 32 images
    vae.prior.initialize_from(x * 0.8 + 0.1)
    starts = torch.sigmoid(vae.prior.pseudo_inputs)
    for start in starts:  # each pseudo-input is one of the images
        assert ((x * 0.8 + 0.1) - start).abs().amax(-1).min() < 1e-5
    with pytest.raises(ValueError, match="pseudo-inputs need"):
        vae.prior.initialize_from(x[:2])


def test_mixture_density_keeps_float32_precision_at_small_scales():
    """The expanded square cancels badly in float32 when scales are ~0.01; the float64
    products keep the density within 1e-3 nats of a float64 reference."""
    torch.manual_seed(4)
    components, dims = 50, 40
    loc = torch.randn(components, dims) * 3
    scale = torch.full((components, dims), 0.01)
    z = loc[torch.randint(components, (64,))] + 0.01 * torch.randn(64, dims)
    got = _gaussian_mixture_for_test(torch.zeros(components), loc, scale).log_prob(z)
    reference = torch.logsumexp(torch.distributions.Normal(loc.double(), scale.double())
                                .log_prob(z.double()[:, None]).sum(-1), -1) - math.log(components)
    assert got.dtype == torch.float32
    assert (got.double() - reference).abs().max() < 1e-3
