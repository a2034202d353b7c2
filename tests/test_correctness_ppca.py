"""Must hold: a Gaussian VAE trained from the command line with DEFAULT flags on data from a
linear-Gaussian (probabilistic PCA) model, given as an .npz file, scores within 0.25 nats of
the exact held-out log-likelihood, and never above it beyond its
error bar.

p(z) = N(0, 1), x = Wz + b + σε in 4 dimensions, values far outside [0, 1]:
log p(x) = log N(x; b, WWᵀ + σ²I) exactly.
"""

import json
import math

import numpy as np
import pytest
import torch

from pyro_vae.cli import main

DIMS, SIGMA = 4, 0.3


@pytest.mark.slow
def test_default_gaussian_vae_on_ppca_data_comes_within_a_quarter_nat(tmp_path, capsys):
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(DIMS, 1))
    bias = 2.0 * rng.normal(size=DIMS)

    def draw(n):
        return (rng.normal(size=(n, 1)) @ weight.T + bias
                + SIGMA * rng.normal(size=(n, DIMS))).astype(np.float32)

    x, x_test = draw(400), draw(60)
    assert x.min() < 0 or x.max() > 1  # real-valued data: no binarization may touch it
    path = tmp_path / "ppca.npz"
    np.savez(path, x=x, x_test=x_test)
    code = main(["train", "--dataset", f"file:{path}", "--likelihood", "gaussian",
                 "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())

    covariance = torch.tensor(weight @ weight.T + SIGMA ** 2 * np.eye(DIMS), dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(torch.tensor(bias), covariance).log_prob(
        torch.tensor(x_test, dtype=torch.float64)).float()
    gap = summary["test_log_likelihood"] - float(exact.mean())
    error_bar = math.hypot(summary["test_log_likelihood_stderr"],
                           summary["test_log_likelihood_mc_stderr"])
    # Within 0.25 nats (measured -0.003 at seed 0; before the learned sigma started at its
    # maximum-likelihood value the gap was -0.38), never above beyond the error bar. The gap is
    # a paired difference on the same held-out points, so far less noisy than error_bar.
    assert -0.25 < gap <= 2 * error_bar
    assert 0 < summary["test_log_likelihood_mc_stderr"] < summary["test_log_likelihood_stderr"]
