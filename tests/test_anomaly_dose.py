"""DoSE and Fisher's combination (issue 33): the density of statistics sees a joint shift that
no single statistic sees; the combined p-values are uniform on in-distribution data; the CLI
prints each score's calibration and warns when the scores' verdicts disagree."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from pyro_vae.anomaly import FISHER_PARTS, detection_metrics
from pyro_vae.config import Config
from pyro_vae.dose import DoSE
from pyro_vae.errors import ConfigError
from pyro_vae.fisher import (RULES, SIDES, TAILS, FisherCombination, log_tail_p, tail_p,
                             upper_tail_p)
from pyro_vae.training import train
from helpers import run_cli


def test_tail_probabilities_on_hand_cases():
    reference = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # p⁺(3) = (1 + #{3, 4}) / 5; beyond the largest: 1/5; below the smallest: 1.
    assert upper_tail_p(reference, torch.tensor([3.0, 9.0, 0.0])).tolist() == [0.6, 0.2, 1.0]
    # both tails: p⁻(0.5) = 1/5, so 2 min(1, 1/5) = 0.4; in the middle it is capped at 1.
    assert tail_p(reference, torch.tensor([0.5, 2.5]), two_sided=True).tolist() == [0.4, 1.0]


def _correlated(count, sign, generator):
    """Three statistics: t2 = ±t1 + small noise, t3 independent. Every marginal is the same for
    both signs; only the joint distribution tells them apart."""
    first = torch.randn(count, generator=generator)
    return torch.stack([first, sign * first + 0.1 * torch.randn(count, generator=generator),
                        torch.randn(count, generator=generator)], dim=-1)


def test_dose_separates_a_cloud_that_no_single_statistic_separates():
    generator = torch.Generator().manual_seed(0)
    fit, normal = _correlated(600, 1.0, generator), _correlated(400, 1.0, generator)
    shifted = _correlated(400, -1.0, generator)
    dose = DoSE().fit(fit)
    assert f"{dose.bandwidth:.4g}" in dose.selection  # chosen from the grid by CV
    auroc = detection_metrics(dose.score(normal), dose.score(shifted)).auroc
    # The true in-distribution density (a Gaussian: score = Mahalanobis distance) reaches
    # about 0.95 here; DoSE, a kernel estimate from 600 points, must come close to it. The
    # tolerance: 3 standard errors of the two AUROCs (≈ 0.015 each) plus what the isotropic
    # kernel loses by smoothing the ridge of width 0.1.
    precision = torch.linalg.inv(torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.01, 0.0],
                                               [0.0, 0.0, 1.0]], dtype=torch.float64))
    exact = detection_metrics(*[(t.double() @ precision * t.double()).sum(-1)
                                for t in (normal, shifted)]).auroc
    assert exact > 0.9 and auroc > 0.85 and auroc > exact - 0.08
    # A cloud moved off the in-distribution one (5 standard deviations in t3) is plain to see.
    moved = normal + torch.tensor([0.0, 0.0, 5.0])
    assert detection_metrics(dose.score(normal), dose.score(moved)).auroc > 0.95
    # Each statistic alone, in either direction, is near chance (AUROC standard error ≈ 0.02).
    for column in range(3):
        alone = detection_metrics(normal[:, column], shifted[:, column]).auroc
        assert abs(alone - 0.5) < 0.1
    with pytest.raises(ConfigError):
        DoSE().fit(fit[:5])


def _dependent_scores(count, generator, shift=0.0):
    """Three scores sharing one factor (as log p(x) enters several real scores)."""
    common = torch.randn(count, generator=generator)
    return {name: common + 0.3 * torch.randn(count, generator=generator) + shift
            for name in ("log-likelihood", "complexity", "dose")}


def test_fisher_p_values_are_uniform_under_the_null_despite_dependence():
    generator = torch.Generator().manual_seed(0)
    # Fisher's rule on empirical tails, where reading T from χ²(2k) would be exact for
    # independent scores (the last check below).
    fisher = FisherCombination("fisher", "empirical").fit(_dependent_scores(2000, generator),
                                                          seed=0)
    null = _dependent_scores(2000, generator)
    # The combined p-value is T's rank among the calibration images' T, so it is uniform
    # exactly when fresh in-distribution T and the calibration T share one distribution: the
    # two-sample KS test checks that, with the calibration set's own finite size accounted for
    # (a one-sample test against U(0, 1) would charge its sampling noise, ~1/√1000, to the
    # method).
    fresh = fisher.statistic(null).numpy()
    assert stats.ks_2samp(fresh, fisher.null.numpy()).pvalue > 0.01
    combined = fisher.combined_p(null)
    assert abs(float((combined < 0.05).double().mean()) - 0.05) < 3 * (0.05 * 0.95 / 2000) ** 0.5 \
        + 3 * (0.05 * 0.95 / 1000) ** 0.5  # the level holds: binomial errors of both sets
    # Read from χ²(2k), as if the scores were independent, the same statistic is not uniform:
    # this is why T is calibrated on held-out in-distribution images instead.
    naive = stats.chi2.sf(fisher.statistic(null).numpy(), df=2 * len(fisher.parts))
    assert stats.kstest(naive, "uniform").pvalue < 1e-3
    # A shift the scores see is flagged: most shifted images fall below α = 0.05, also when
    # log p(x) is too *high* (its lower tail counts) while the other scores rise.
    for sign in (1.0, -1.0):
        shifted = _dependent_scores(500, generator, 3.0)
        shifted["log-likelihood"] = sign * shifted["log-likelihood"]
        assert float((fisher.combined_p(shifted) < 0.05).double().mean()) > 0.5
    assert set(fisher.parts) <= set(FISHER_PARTS)


@pytest.mark.parametrize("tail", ["kernel", "exponential"])
def test_smoothed_tails_are_not_floored_and_match_the_true_tail_inside(tail):
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(1000, generator=generator, dtype=torch.float64)
    beyond = torch.tensor([5.0, 7.0, 10.0, 1000.0], dtype=torch.float64)
    # The empirical p-value cannot go below 1/(n + 1), however far out the score is ...
    assert torch.all(upper_tail_p(reference, beyond) == 1 / 1001)
    # ... the smoothed ones keep falling, and their logarithm stays finite (no underflow).
    logs = log_tail_p(reference, beyond, two_sided=False, tail=tail)
    assert torch.all(torch.isfinite(logs)) and torch.all(logs < -np.log(1001))
    assert torch.all(logs[1:] < logs[:-1])
    # Inside the reference range they estimate P(S ≥ s) of the N(0, 1) reference: within 3
    # binomial standard errors, plus 0.01 for the kernel's smoothing bias (the smoothed
    # distribution is N(0, 1 + h²), h ≈ 0.23: at most 0.006 off).
    inside = torch.linspace(-2.0, 2.5, 10, dtype=torch.float64)
    truth = torch.special.ndtr(-inside)
    error = (tail_p(reference, inside, two_sided=False, tail=tail) - truth).abs()
    assert torch.all(error < 3 * (truth * (1 - truth) / 1000).sqrt() + 0.01)
    # Both tails: the lower one is read the same way; at the centre 2 min(p⁺, p⁻) is near 1
    # (each p near 1/2, the sample median not exactly 0) and never above it.
    both = tail_p(reference, torch.tensor([-6.0, 0.0, 6.0], dtype=torch.float64), True, tail)
    assert both[0] < 2 / 1001 and both[2] < 2 / 1001 and 0.9 < both[1] <= 1.0


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("sides", SIDES)
def test_every_combination_is_calibrated_on_in_distribution_scores(rule, tail, sides):
    generator = torch.Generator().manual_seed(1)
    combination = FisherCombination(rule, tail, sides).fit(_dependent_scores(2000, generator))
    fresh = _dependent_scores(2000, generator)
    combined = combination.combined_p(fresh)
    # The combined p-value is conformal: P(p ≤ α) = α up to the calibration half's own
    # sampling error (1,000 images) and the fresh images' (2,000): 3 standard errors of each.
    for alpha in (0.05, 0.2, 0.5):
        variance = alpha * (1 - alpha)
        tolerance = 3 * (variance / 1000) ** 0.5 + 3 * (variance / 2000) ** 0.5
        assert abs(float((combined <= alpha).double().mean()) - alpha) < tolerance
    # Each part's own tail probability is close to uniform too (the smoothed ones up to their
    # bias, 0.01): checked at 0.05 with 3 standard errors of the 1,000 reference images.
    for name, values in combination.p_values(fresh).items():
        share = float((values <= 0.05).double().mean())
        assert abs(share - 0.05) < 3 * (0.05 * 0.95 / 1000) ** 0.5 + 0.01, name


@pytest.mark.parametrize("tail", ["kernel", "exponential"])
def test_a_single_extreme_score_is_not_diluted_by_typical_ones(tail):
    generator = torch.Generator().manual_seed(2)
    reference = _dependent_scores(2000, generator)
    smoothed = FisherCombination("fisher", tail).fit(reference)
    empirical = FisherCombination("fisher", "empirical").fit(reference)
    typical = {name: torch.zeros(3, dtype=torch.float64) for name in reference}
    typical["dose"] = torch.tensor([6.0, 12.0, 24.0], dtype=torch.float64)
    # The empirical T is the same for all three images (each beyond every reference value);
    # the smoothed T grows with the distance, so the farther image ranks higher.
    assert len(set(empirical.statistic(typical).tolist())) == 1
    grown = smoothed.statistic(typical)
    assert torch.all(grown[1:] > grown[:-1]) and grown[0] > empirical.statistic(typical)[0]
    # Flagged at α = 0.05, and the farthest is beyond every calibration image: the smallest
    # combined p-value there is.
    combined = smoothed.combined_p(typical)
    assert torch.all(combined < 0.05) and combined[-1] == 1 / (len(smoothed.null) + 1)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("tail", TAILS)
def test_a_wrong_way_score_cannot_hide_a_strong_one_beyond_the_empirical_floor(rule, tail):
    generator = torch.Generator().manual_seed(3)
    combination = FisherCombination(rule, tail, "likelihood").fit(
        _dependent_scores(2000, generator))
    # DoSE far out (15 standard deviations), input complexity far the *other* way (an upper-
    # tail score: p = 1, as on mixtures of two images), log p(x) typical.
    image = {"log-likelihood": torch.zeros(1, dtype=torch.float64),
             "complexity": torch.full((1,), -15.0, dtype=torch.float64),
             "dose": torch.full((1,), 15.0, dtype=torch.float64)}
    assert combination.p_values(image)["complexity"].item() == 1.0
    combined = combination.combined_p(image).item()
    if tail != "empirical" or rule == "tippett":
        assert combined < 0.05
    else:
        # The known weakness of Fisher's rule on empirical tails (the default): DoSE's p-value
        # stops at 1/(n + 1), and with the wrong-way score at p = 1 the image is *not*
        # flagged at α = 0.05. The smoothed tails and Tippett's rule above remove it; the
        # default stays because it was not worse on any validation shift (pyro_vae.fisher).
        assert combined > 0.05


def test_combination_settings_are_checked():
    reference = _dependent_scores(100, torch.Generator().manual_seed(0))
    for settings in ({"rule": "stouffer"}, {"tail": "gaussian"}, {"sides": "none"}):
        with pytest.raises(ConfigError):
            FisherCombination(**settings).fit(reference)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A small digits VAE and two other 8×8 datasets: inverted digits and blank images (all
    zeros: far more likely than a digit under the model, and trivially easy to re-fit)."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("dose")
    digits = load_digits().images[:400] / 16.0
    np.savez(folder / "inverted.npz", x=((1.0 - digits) * 255).astype(np.uint8))
    np.savez(folder / "blank.npz", x=np.zeros((400, 8, 8), dtype=np.uint8))
    config = Config().with_overrides({"train": {"epochs": 40, "batch_size": 64},
                                      "evaluate": {"num_samples": 2, "latent_map": "pca"}})
    train(config, folder / "run")
    return folder


@pytest.mark.slow
def test_cli_prints_the_calibration_and_warns_when_verdicts_disagree(digits_run, capsys):
    out = digits_run / "out"
    inverted, blank = (f"file:{digits_run / name}.npz" for name in ("inverted", "blank"))
    code, printed, err = run_cli(capsys, "anomaly", digits_run / "run", "--against", inverted,
                                 blank, "--limit", "300", "--num-samples", "20",
                                 "--regret-steps", "10", "--regret-draws", "4", "--out", out)
    assert code == 0
    report = json.loads((out / "anomaly.json").read_text())
    assert report["default_verdict"] == "fisher"
    assert report["fisher_rule"] == {"rule": "fisher", "tail": "empirical",
                                     "sides": "likelihood"}
    assert report["scores"][:10] == ["log-likelihood", "elbo", "regret", "complexity",
                                     "transformations", "features", "dose", "knn", "fisher",
                                     "typicality"]
    # The nearest-neighbour score: a bank of half the validation images scored, k = ⌈√n⌉,
    # calibrated like the others (its line is in the calibration print below).
    assert report["knn"]["k"] == math.ceil(math.sqrt(report["knn"]["bank"]))
    assert "knn" in report["calibration"]
    assert "in-distribution calibration at α = 0.05" in printed
    for score, result in report["calibration"].items():
        assert f"{score:<18} false-positive rate {result['false_positive_rate']:.3f}" in printed
        if result["tolerance"] >= 0.05:  # a score that never flags would pass: not judged
            assert result["reliable"] is None
            assert f"{score:<18}" in printed and "too few images to judge" in printed
        else:
            assert result["reliable"] == (abs(result["false_positive_rate"] - 0.05)
                                          <= result["tolerance"])
    assert "fisher" in report["calibration"] and "(default verdict)" in printed
    assert report["metrics"][inverted]["fisher"]["auroc"] > 0.95
    # Blank images: both tails of log p(x) flag them, the regret of re-fitting them is ~0.
    shares = report["flagged_share"][blank]
    assert max(shares.values()) - min(shares.values()) >= 0.5
    assert f"the scores disagree on {blank}" in err
    # Inverted digits: every score of the likelihood or the coding flags nearly all of them; the
    # code's distance to its neighbours need not (an inverted digit's code may land among
    # in-distribution codes), and the warning is printed exactly when the shares differ by 0.5.
    shares = report["flagged_share"][inverted]
    assert all(share > 0.9 for score, share in shares.items() if score != "knn")
    assert (f"the scores disagree on {inverted}" in err) == \
        (max(shares.values()) - min(shares.values()) >= 0.5)

    # --score fisher alone brings the scores it combines; a bad level is refused, nothing written.
    code, _, _ = run_cli(capsys, "anomaly", digits_run / "run", "--against", inverted,
                         "--score", "fisher", "--limit", "200", "--num-samples", "10",
                         "--regret-steps", "5", "--regret-draws", "2", "--out", out)
    assert code == 0
    report = json.loads((out / "anomaly.json").read_text())
    assert report["fisher_parts"] == ["log-likelihood", "regret", "complexity", "transformations",
                                      "features", "dose"]
    code, _, err = run_cli(capsys, "anomaly", digits_run / "run", "--against", inverted,
                           "--alpha", "1.5", "--out", digits_run / "refused")
    assert code == 2 and "--alpha" in err
    assert not (digits_run / "refused").exists()
