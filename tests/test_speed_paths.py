"""The training step's cheaper paths change no numbers: fused Adam, remembered registration,
the shared batch indices of the data plate."""

import pyro
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_vae.models import data_plate
from pyro_vae.params import parameters_owned, register_module
from pyro_vae.steps import adam


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


@pytest.mark.slow
def test_adam_is_fused_on_a_cpu_and_steps_as_the_default_adam():
    fused, default = _net(0), _net(0)
    optimizers = [adam(fused.parameters(), 1e-2), torch.optim.Adam(default.parameters(), 1e-2)]
    assert optimizers[0].defaults["fused"] is True
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
    for _ in range(20):
        for net, optimizer in zip((fused, default), optimizers):
            optimizer.zero_grad()
            net(x).pow(2).sum().backward()
            optimizer.step()
    moved = [(a - a0).abs().max() for a, a0 in zip(default.parameters(), _net(0).parameters())]
    assert min(moved) > 1e-2  # twenty steps of lr 1e-2 moved every tensor
    for a, b in zip(fused.parameters(), default.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # float rounding apart


def test_adam_falls_back_to_the_default_for_what_has_no_fused_kernel():
    two_dtypes = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3, dtype=torch.float64))]
    assert adam(two_dtypes, 1e-3).defaults["fused"] is True  # float64 has the kernel
    meta = [nn.Parameter(torch.zeros(3, device="meta"))]
    assert not adam(meta, 1e-3).defaults["fused"]


def test_registration_is_remembered_but_follows_the_param_store():
    net = _net(0)
    pyro.clear_param_store()
    with parameters_owned():
        with poutine.trace() as first:
            register_module("net", net)
        with poutine.trace() as again:
            register_module("net", net)
        pyro.clear_param_store()  # a cleared store is filled again, as pyro.module would
        with poutine.trace() as cleared:
            register_module("net", net)
    assert len(first.trace.nodes) == 4 and len(again.trace.nodes) == 0
    assert len(cleared.trace.nodes) == 4
    assert set(pyro.get_param_store().keys()) == {"net$$$0.weight", "net$$$0.bias",
                                                  "net$$$2.weight", "net$$$2.bias"}


def test_the_data_plate_scales_by_n_over_b_with_its_shared_indices():
    x = torch.zeros(4, 2)
    with data_plate(x, 10) as first:
        pass
    with poutine.trace() as tape:
        with data_plate(x, 10) as second:
            pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))
    assert torch.equal(first, torch.arange(4)) and second is first
    assert tape.trace.nodes["z"]["scale"] == 10 / 4
