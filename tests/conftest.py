"""Shared fixtures (built from the helpers in tests/helpers.py). Real datasets are read from
$PYRO_VAE_DATA_DIR, else ../shared/data.

Test tiers: ``pytest`` runs everything (what CI and the README's command run); ``pytest -m
"not slow"`` leaves out the tests marked ``@pytest.mark.slow`` (end-to-end trainings, processes
killed mid-run, notebooks, the wheel build) for a fast everyday run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyro
import pytest
import torch

from helpers import one_epoch_config

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("PYRO_VAE_DATA_DIR") or ROOT.parent / "shared" / "data")
os.environ["PYRO_VAE_DATA_DIR"] = str(DATA_DIR)


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    # Two torch threads on the 2-core CI machine; $OMP_NUM_THREADS when set (one thread is
    # several times faster on a machine busy with other jobs).
    threads = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0
                          else max(1, min(2, os.cpu_count() or 1)))
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The MNIST-family data; missing data is a failure, never a silent skip."""
    assert (DATA_DIR / "mnist").is_dir(), (
        f"MNIST-family data not found in {DATA_DIR}; set PYRO_VAE_DATA_DIR to the folder that "
        "holds mnist/, fashion-mnist/ and binarized-mnist/.")
    return DATA_DIR


@pytest.fixture(scope="session")
def fast(tmp_path_factory) -> list[str]:
    """Arguments of a quick `pyro-vae train`: a small recipe, one epoch."""
    recipe = tmp_path_factory.mktemp("recipe") / "small.toml"
    recipe.write_text(one_epoch_config().to_toml())
    return [str(recipe)]


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, Path]:
    """One small trained run of each kind (vae, cvae, m2, quadrant_cvae), trained once and
    shared by the tests that only read runs."""
    from pyro_vae.training import train

    root = tmp_path_factory.mktemp("runs")
    made = {}
    for kind in ("vae", "cvae", "m2", "quadrant_cvae"):
        made[kind] = root / kind
        train(one_epoch_config(kind), made[kind])
    return made
