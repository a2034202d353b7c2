"""The likelihood ratio of Ren et al. (2019): the background's perturbation of grey images (before
binarization) and the score as the difference of the two log-likelihood estimates."""

import math

import torch

from pyro_vae.anomaly import ScoreSettings, perturb, score_images
from pyro_vae.evaluate import estimate_log_likelihood
from pyro_vae.models import build_vae
from helpers import model_config


def test_grey_pixels_are_replaced_at_the_rate_by_uniform_values():
    """Grey training images (dynamic binarization keeps them grey) are perturbed before they are
    binarized: a share μ of the pixels, within binomial standard errors, is replaced, and the
    replacements are uniform on [0, 1] (mean 1/2, variance 1/12, within their standard errors)."""
    generator = torch.Generator().manual_seed(3)
    rate = 0.2
    grey = torch.full((400, 784), 0.25) + 0.01 * (torch.arange(784) % 7)  # never a uniform draw
    perturbed = perturb(grey, rate, generator)
    replaced = perturbed != grey
    count = grey.numel()
    assert abs(float(replaced.double().mean()) - rate) < 4 * math.sqrt(rate * (1 - rate) / count)
    values = perturbed[replaced].double()
    n = len(values)
    assert values.min() >= 0.0 and values.max() <= 1.0
    assert abs(float(values.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / n)
    # Var of (U − 1/2)² is 1/80 − 1/144 = 1/180.
    assert abs(float(values.var()) - 1 / 12) < 4 * math.sqrt(1 / 180 / n)
    assert torch.equal(perturbed[~replaced], grey[~replaced])


def test_likelihood_ratio_is_background_minus_model_log_likelihood():
    """s(x) = log p̂_bg(x) − log p̂(x): the two importance-sampled estimates on the same draws,
    subtracted in that order (higher = more anomalous: the background explains x better)."""
    shape = (1, 4, 4)
    torch.manual_seed(0)
    vae = build_vae(model_config(hidden_dims=[8], latent_dim=2), shape)
    background = build_vae(model_config(hidden_dims=[8], latent_dim=2), shape)
    with torch.no_grad():  # make the two models differ clearly
        for parameter in background.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    x = (torch.rand(50, 16, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    settings = ScoreSettings(num_samples=20)

    torch.manual_seed(7)
    scored = score_images(vae, x, shape, ("likelihood-ratio",), settings, background)
    torch.manual_seed(7)
    log_p = estimate_log_likelihood(vae, x, 20).log_likelihood.double()
    log_bg = estimate_log_likelihood(background, x, 20).log_likelihood.double()
    assert torch.allclose(scored["likelihood-ratio"], log_bg - log_p, atol=1e-9)
    assert torch.allclose(scored["_log_p"], log_p, atol=1e-9)
    assert float((log_bg - log_p).abs().mean()) > 0.1  # the identity is not 0 = 0


def test_anomaly_trains_the_background_for_the_runs_own_epochs(tmp_path, capsys):
    """The default verdict was validated with a background model of the run's own budget, so
    ``--background`` trains it for the run's epochs unless ``--background-epochs`` says
    otherwise; the verdict then combines the likelihood ratio."""
    import json

    from pyro_vae.training import train
    from helpers import run_cli, three_epoch_config

    run = tmp_path / "run"
    train(three_epoch_config(), run, progress=None)
    out = tmp_path / "anomaly"
    code, _, err = run_cli(capsys, "anomaly", run, "--against", "digits", "--background",
                           "--score", "fisher", "--limit", 60, "--num-samples", 2,
                           "--regret-steps", 2, "--regret-draws", 2, "--out", out)
    assert code == 0, err
    stamp = json.loads((out / "background" / "perturbation.json").read_text())
    assert stamp["epochs"] == 3 and stamp["rate"] == 0.2
    report = json.loads((out / "anomaly.json").read_text())
    assert "likelihood-ratio" in report["scores"]
    assert "likelihood-ratio" in report["fisher_parts"]
