"""M2's interleaved schedule (Pyro's SS-VAE example): where the labelled steps go, the weight
of each step's terms, and that it trains a classifier far above chance."""

import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

from pyro_vae import Config
from pyro_vae.models.conditional import labelled_subset
from pyro_vae.config import ModelConfig
from pyro_vae.data import load_dataset
from pyro_vae.errors import ConfigError
from types import SimpleNamespace

from pyro_vae.m2_schedule import classification_loss, labelled_steps, unscaled
from pyro_vae.objectives import ObjectiveModule
from pyro_vae.models.semisupervised import batches, build_m2
from pyro_vae.protocol import Epoch
from pyro_vae.training import _run_steps
from helpers import model_config

M2_CONFIG = model_config(kind="m2", latent_dim=2, hidden_dims=[8], num_classes=3)


def test_labelled_batches_come_once_an_epoch_spread_evenly_or_every_k_steps():
    # Pyro's example at 100 labels, batch 200: one labelled step in the epoch's 300.
    assert labelled_steps(300, 1, 0) == [1]
    # 3,000 labels: 15 labelled batches, each once, evenly spread.
    steps = labelled_steps(285, 15, 0)
    assert len(steps) == 15 and len(set(steps)) == 15
    assert {b - a for a, b in zip(steps, steps[1:])} == {19}
    # Every k-th step (the labelled split cycles).
    assert labelled_steps(300, 1, 10) == list(range(1, 300, 10))
    assert labelled_steps(5, 1, 1) == [0, 1, 2, 3, 4]


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
def test_each_step_is_an_unscaled_sum_and_the_aux_step_weighs_alpha_per_labelled_point():
    """Pyro's example: every datapoint weighs 1 in its step, −log q(y|x) weighs α."""
    alpha = 7.0
    vae = build_m2(M2_CONFIG, (1, 2, 2), aux_loss_weight=alpha)
    vae.set_split_sizes(10, 990, 30)  # the paired schedule would scale by 33 and 990/30
    generator = torch.Generator().manual_seed(3)
    x, y = torch.rand(5, 4, generator=generator).round(), torch.tensor([0, 1, 2, 0, 1])
    grey = torch.rand(5, 4, generator=generator)
    params = list(vae.classifier.parameters())
    got = torch.autograd.grad(classification_loss(vae, x, y, grey), params)
    by_hand = torch.autograd.grad(
        alpha * F.cross_entropy(vae.classifier(grey), y, reduction="sum"), params)
    for g, h in zip(got, by_hand):
        assert torch.allclose(g, h, rtol=1e-5, atol=1e-7)
    with unscaled(vae):
        labelled = poutine.trace(vae.model).get_trace(x, y)
        with poutine.enum(first_available_dim=-2):
            guide = poutine.trace(vae.guide).get_trace(x)
        unlabelled = poutine.trace(poutine.replay(vae.model, guide)).get_trace(x)
    # No classification term inside the ELBO step (it is its own step), every site unscaled.
    assert "y_aux" not in labelled.nodes
    for trace in (labelled, unlabelled):
        assert all(site["scale"] == 1.0 for site in trace.nodes.values()
                   if site["type"] == "sample")
    assert vae.num_data == 1000  # restored


@pytest.fixture
def one_thread():
    """One torch thread: two are many times slower on shared, busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _CountingAdam(torch.optim.Adam):
    def __init__(self, params):
        super().__init__(params, lr=1e-3)
        self.calls = 0

    def step(self, closure=None):
        self.calls += 1
        return super().step(closure)


def train_epoch_interleaved(module, optimizer, x_labelled, y_labelled, x_unlabelled, batch_size,
                            schedule, step, progress, labelled_every=0):
    """One epoch of the interleaved schedule through the m2 kind's batches hook and the
    training loop's step runner; returns (mean ELBO per datapoint, new step)."""
    x = torch.cat([x_labelled, x_unlabelled])
    y = torch.cat([y_labelled, torch.zeros(len(x_unlabelled), dtype=y_labelled.dtype)])
    data = SimpleNamespace(train_y=y, grey=lambda split: x)
    state = (torch.arange(len(x_labelled)), torch.arange(len(x_labelled), len(x)),
             "interleaved", labelled_every)
    epoch = Epoch(module, x, None, data, batch_size, state)
    return _run_steps(module, optimizer, batches(epoch), schedule, step, progress)


class _NoProgress:
    def step(self, value):
        assert math.isfinite(value)


class _Constant:
    def weight(self, step):
        return 1.0


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
@pytest.mark.parametrize("every, labelled_steps_expected", [(0, 1), (2, 5)])
def test_an_epoch_takes_two_steps_per_labelled_batch_and_one_per_unlabelled(
        every, labelled_steps_expected):
    pyro.set_rng_seed(0)
    vae = build_m2(M2_CONFIG, (1, 2, 2), aux_loss_weight=3.0)
    x = torch.rand(46, 4).round()
    y = torch.arange(46) % 3
    vae.set_split_sizes(6, 40, 4)
    module = ObjectiveModule(vae, TraceEnum_ELBO(max_plate_nesting=1))
    optimizer = _CountingAdam(module.parameters())
    elbo, step = train_epoch_interleaved(module, optimizer, x[:6], y[:6], x[6:], 4, _Constant(),
                                         0, _NoProgress(), labelled_every=every)
    # 6 labelled points in batches of 4: two labelled batches, each once (k = 0) or cycling.
    expected = 10 + 2 * (2 if every == 0 else labelled_steps_expected)
    assert step == optimizer.calls == expected
    assert math.isfinite(elbo) and elbo < 0


def test_config_checks_the_schedule():
    with pytest.raises(ConfigError, match="m2_schedule"):
        Config.from_dict({"model": {"kind": "m2"}, "train": {"m2_schedule": "pyro"}})
    with pytest.raises(ConfigError, match="labelled_every"):
        Config.from_dict({"model": {"kind": "m2"}, "train": {"labelled_every": -1}})


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
@pytest.mark.slow
def test_interleaved_m2_on_digits_with_100_labels_classifies_far_above_chance(one_thread):
    """Five epochs, 100 of the 1,438 training digits labelled, a labelled batch every 2nd step.
    Chance is 0.1 with standard error sqrt(0.1·0.9/359) = 0.016 on the 359 test digits; 0.4 is
    over 18 standard errors above it."""
    pyro.set_rng_seed(0)
    data = load_dataset("digits", validation_fraction=0.0)
    labelled = labelled_subset(data.train_y, 100, 10)
    mask = torch.ones(len(data.train_y), dtype=torch.bool)
    mask[labelled] = False
    unlabelled = mask.nonzero().squeeze(-1)
    vae = build_m2(ModelConfig(kind="m2", latent_dim=8, hidden_dims=[128],
                               activation="softplus"), data.image_shape, aux_loss_weight=50.0)
    vae.start_output_bias(data.train_x)
    vae.set_split_sizes(len(labelled), len(unlabelled), 100)
    module = ObjectiveModule(vae, TraceEnum_ELBO(max_plate_nesting=1))
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    x = data.train_x
    step = 0
    with pyro.validation_enabled(False):
        for _ in range(5):
            _, step = train_epoch_interleaved(
                module, optimizer, x[labelled], data.train_y[labelled], x[unlabelled], 100,
                _Constant(), step, _NoProgress(), labelled_every=2)
    accuracy = float((vae.classify(data.test_x) == data.test_y).float().mean())
    print(f"test accuracy {accuracy:.3f}")
    assert accuracy > 0.4
