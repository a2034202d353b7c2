"""The k-th nearest neighbour distance of the code (issue 33, pyro_vae.knn_score): it is the
brute-force distance, its in-distribution tail probabilities are calibrated, a code far from
every in-distribution code is flagged, and a model without a code of x alone is refused."""

import math

import pytest
import torch

from pyro_vae.errors import ConfigError
from pyro_vae.fisher import tail_p
from pyro_vae.knn_score import (KNNScore, check_knn_supported, default_k,
                                kth_neighbour_distance)

#: A code of 8 dimensions with unequal scales, as a VAE's posterior means have.
SCALES = torch.tensor([0.2, 0.5, 1.0, 1.0, 2.0, 3.0, 0.1, 1.5], dtype=torch.float64)


def _codes(count, generator):
    return torch.randn(count, len(SCALES), generator=generator, dtype=torch.float64) * SCALES


def test_the_distance_is_the_brute_force_kth_nearest_distance():
    generator = torch.Generator().manual_seed(0)
    bank, queries = _codes(300, generator), _codes(50, generator)
    knn = KNNScore().fit(bank)
    assert knn.k == default_k(300) == 18  # ⌈√300⌉
    scale = bank.std(0)
    for row, score in zip(queries, knn.score(queries)):
        distances = sorted(math.dist((row / scale).tolist(), (code / scale).tolist())
                           for code in bank)
        assert score.item() == pytest.approx(distances[knn.k - 1], rel=1e-9)
    # The nearest (k = 1) of a bank point is itself; chunking does not change the answer.
    assert torch.equal(kth_neighbour_distance(bank, bank, 1),
                       torch.zeros(300, dtype=torch.float64))
    assert torch.equal(kth_neighbour_distance(bank, queries, 5, chunk=7),
                       kth_neighbour_distance(bank, queries, 5))
    with pytest.raises(ConfigError):
        kth_neighbour_distance(bank, queries, 301)
    with pytest.raises(ConfigError):
        KNNScore().fit(bank[:1])


def test_k_follows_the_square_root_rule():
    assert [default_k(n) for n in (1, 4, 500, 1000)] == [1, 2, 23, 32]


def test_tail_probabilities_are_calibrated_on_held_out_codes():
    generator = torch.Generator().manual_seed(1)
    knn = KNNScore().fit(_codes(1000, generator))
    reference = knn.score(_codes(1000, generator))  # other in-distribution codes: the null
    fresh = tail_p(reference, knn.score(_codes(2000, generator)), two_sided=False)
    # Conformal: P(p ≤ α) = α up to the reference's sampling error (1,000 codes) and the fresh
    # codes' (2,000): 3 binomial standard errors of each.
    for alpha in (0.05, 0.2, 0.5):
        variance = alpha * (1 - alpha)
        tolerance = 3 * (variance / 1000) ** 0.5 + 3 * (variance / 2000) ** 0.5
        assert abs(float((fresh <= alpha).double().mean()) - alpha) < tolerance


def test_a_code_far_from_every_in_distribution_code_gets_a_small_p_value():
    generator = torch.Generator().manual_seed(2)
    knn = KNNScore().fit(_codes(1000, generator))
    reference = knn.score(_codes(1000, generator))
    typical = torch.zeros(1, len(SCALES), dtype=torch.float64)
    # 6 standard deviations out along the narrowest dimension: small in raw units (0.6), far
    # once standardized, so beyond every reference distance.
    far = typical.clone()
    far[0, 6] = 6 * SCALES[6]
    p = tail_p(reference, knn.score(torch.cat([typical, far])), two_sided=False)
    assert p[0] > 0.5 and p[1].item() == pytest.approx(1 / 1001)


def test_a_model_without_a_code_of_x_alone_is_refused():
    with pytest.raises(ConfigError, match="latent_mean"):
        check_knn_supported(torch.nn.Linear(2, 2))


def test_a_model_that_encodes_an_image_with_its_label_is_refused():
    class Labelled(torch.nn.Module):
        def forward(self, x, y):
            return x, y

    class LabelledModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = Labelled()

        def latent_mean(self, x):
            return x

    with pytest.raises(ConfigError, match="label"):
        check_knn_supported(LabelledModel())


def test_the_bank_is_the_first_half_of_the_reference_and_the_other_half_calibrates():
    from pyro_vae.anomaly import ScoreSettings, reference_halves, score_with_reference
    from pyro_vae.config import Config
    from pyro_vae.knn_score import latent_codes
    from pyro_vae.models.base import build_vae

    torch.manual_seed(0)
    vae = build_vae(Config().model, (1, 8, 8))
    generator = torch.Generator().manual_seed(3)
    reference_x = (torch.rand(80, 64, generator=generator) < 0.3).float()
    other = (torch.rand(30, 64, generator=generator) < 0.3).float()
    scored, reference = score_with_reference(vae, reference_x, {"other": other}, (1, 8, 8),
                                             ("log-likelihood", "knn"),
                                             ScoreSettings(num_samples=2))
    fit_half, reference_half = reference_halves(80)
    codes = latent_codes(vae, reference_x)
    assert reference.knn.k == 7  # ⌈√40⌉
    assert torch.allclose(reference.knn.bank * reference.knn.scale, codes[fit_half])
    # The reference values are the held-out half's distances to the bank (none of them in it).
    assert torch.equal(reference.scores["knn"], reference.knn.score(codes[reference_half]))
    assert torch.all(reference.scores["knn"] > 0)
    assert torch.equal(scored["other"]["knn"], reference.knn.score(latent_codes(vae, other)))


@pytest.mark.slow
def test_anomaly_of_an_m2_run_leaves_knn_out_with_a_note_and_refuses_it_by_name(tmp_path,
                                                                               capsys):
    """M2 encodes q(z|x, y): no code of an image alone. Not asked for, ``knn`` is left out with
    a note; asked for by name, a refusal in one paragraph and nothing written."""
    import json

    import numpy as np
    from sklearn.datasets import load_digits

    from helpers import QUICK_TRAIN_PCA, run_cli

    np.savez(tmp_path / "x.npz", x=(load_digits().data[:200] / 16).astype(np.float32))
    run = tmp_path / "m2"
    assert run_cli(capsys, "train", "--model", "m2", "--num-labels", 100, *QUICK_TRAIN_PCA,
                   "--batch-size", "256", "--out", run)[0] == 0
    other = f"file:{tmp_path / 'x.npz'}"
    code, _, err = run_cli(capsys, "anomaly", run, "--against", other, "--score",
                           "log-likelihood", "--score", "knn", "--num-samples", 2, "--limit",
                           60, "--out", tmp_path / "refused")
    assert code == 2 and "q(z|x, y)" in err and "--score knn" in err
    assert not (tmp_path / "refused").exists()
    code, _, err = run_cli(capsys, "anomaly", run, "--against", other, "--num-samples", 2,
                           "--limit", 60, "--regret-steps", 2, "--regret-draws", 2,
                           "--out", tmp_path / "out")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "anomaly.json").read_text())
    assert "no nearest-neighbour score for this model" in err
    assert "knn" not in report["scores"] and report["knn"] is None
