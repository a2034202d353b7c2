"""The model/guide pair is an ordinary Pyro program: stock SVI trains it (README example)."""

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import Config, build_vae, estimate_log_likelihood, load_dataset


@pytest.mark.parametrize("objective", [Trace_ELBO, TraceMeanField_ELBO])
@pytest.mark.slow
def test_stock_svi_trains_the_vae(objective):
    data = load_dataset("digits")
    vae = build_vae(Config().model, data.image_shape, num_data=len(data.train_x))
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), objective())
    test_x = torch.bernoulli(data.test_x)
    before = estimate_log_likelihood(vae, test_x, num_samples=20)
    for _ in range(300):
        batch = data.train_x[torch.randint(len(data.train_x), (64,))]
        svi.step(torch.bernoulli(batch))
    after = estimate_log_likelihood(vae, test_x, num_samples=20)
    assert after.mean_elbo > before.mean_elbo + 5 * (after.elbo_stderr + before.elbo_stderr)
    # The plate scales a minibatch of 64 up to the whole training set of N points.
    loss = svi.evaluate_loss(torch.bernoulli(data.train_x[:64]))
    assert 0.5 < loss / (len(data.train_x) * -after.mean_elbo) < 2


def test_networks_are_registered_in_the_param_store():
    data = load_dataset("digits")
    vae = build_vae(Config().model, data.image_shape)
    vae.model(data.train_x[:4].round())
    names = set(pyro.get_param_store().keys())
    assert "vae$$$encoder.head.loc.weight" in names and "vae$$$decoder.net.0.weight" in names


def test_no_public_name_shadows_a_module():
    """``pyro_vae.X`` is the module ``pyro_vae/X.py`` whenever that file exists (the training
    loop lives in ``pyro_vae.training``, so ``pyro_vae.train`` can be the function)."""
    import importlib
    import pkgutil

    import pyro_vae

    for info in pkgutil.iter_modules(pyro_vae.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"pyro_vae.{info.name}")
        assert getattr(pyro_vae, info.name) is module, info.name
    assert callable(pyro_vae.train) and pyro_vae.training.optimizer_step
