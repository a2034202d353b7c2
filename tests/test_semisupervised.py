"""Semi-supervised M2: enumeration of the missing label, labelled and unlabelled batches."""

import json
import math

import numpy as np
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

from pyro_vae.cli import main
from pyro_vae.config import Config, ModelConfig
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.evaluate import log_importance_weights
from pyro_vae.objectives import ObjectiveModule
from pyro_vae.models.semisupervised import build_m2, labelled_subset
from pyro_vae.training import train
from helpers import model_config

M2_CONFIG = model_config(kind="m2", latent_dim=2, hidden_dims=[8], num_classes=3)


def _m2(prior: str = "normal"):
    if prior == "normal":
        return build_m2(M2_CONFIG, (1, 2, 2))
    torch.manual_seed(1)
    vae = build_m2(model_config(kind="m2", latent_dim=2, hidden_dims=[8], num_classes=3,
                               prior=prior, options={"prior": {"components": 6}}), (1, 2, 2))
    with torch.no_grad():  # classes' mixtures well apart, so p(z|y) matters
        vae.prior.loc.copy_(3 * torch.randn_like(vae.prior.loc))
    return vae


def test_unlabelled_label_is_enumerated_and_labelled_one_observed():
    vae = _m2()
    x = torch.rand(4, 4).round()
    with poutine.enum(first_available_dim=-2):
        guide = poutine.trace(vae.guide).get_trace(x)
    assert guide.nodes["y"]["value"].shape == (3, 1)  # all three classes, broadcast over data
    assert guide.nodes["z"]["value"].shape == (3, 4, 2)
    labelled = poutine.trace(vae.guide).get_trace(x, torch.tensor([0, 1, 2, 0]))
    assert "y" not in labelled.nodes
    model = poutine.trace(vae.model).get_trace(x, torch.tensor([0, 1, 2, 0]))
    assert model.nodes["y"]["is_observed"]


@pytest.mark.parametrize("prior", ["normal", "mixture"])
def test_enumerated_elbo_matches_kingmas_sum_over_labels(prior):
    """−U(x) = Σ_y q(y|x) L(x, y) + H(q(y|x)) (Kingma et al. 2014, eq. 7), with p(z) = N(0, I)
    and with a label-conditional prior p(z|y), whose enumerated y selects the mixture.

    The right side is estimated from K draws of z per (datapoint, label), the left by
    TraceEnum_ELBO with K vectorized particles; both are unbiased, so their difference is
    compared with 5 standard errors of the two independent estimates.
    """
    vae = _m2(prior)
    x = torch.rand(5, 4).round()
    num_particles = 4000
    torch.manual_seed(0)
    with vae.scoring():
        log_q_y = torch.log_softmax(vae.classifier(x), -1).detach()          # [B, C]
        per_label = [log_importance_weights(vae.model, vae.guide, x, num_particles,
                                            torch.full((5,), c)) for c in range(3)]
        log_w = torch.stack(per_label, -1).detach()                          # [K, B, C]
        q_y = log_q_y.exp()
        per_draw = (log_w * q_y).sum(-1).sum(-1)                              # [K]
        kingma = float(per_draw.mean() - (q_y * log_q_y).sum())
        kingma_se = float(per_draw.std() / math.sqrt(num_particles))
        elbo = TraceEnum_ELBO(num_particles=num_particles, vectorize_particles=True,
                              max_plate_nesting=1)
        enumerated = -elbo.loss(vae.model, vae.guide, x)
    assert abs(enumerated - kingma) < 5 * math.sqrt(2) * kingma_se + 1e-4


def test_labelled_and_unlabelled_batches_both_train():
    vae = _m2()
    vae.set_split_sizes(10, 90)
    module = ObjectiveModule(vae, TraceEnum_ELBO(max_plate_nesting=1))
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    x = torch.rand(6, 4).round()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for batch in ((x, y), (x,)):
        before = [p.detach().clone() for p in vae.classifier.parameters()]
        loss = module(*batch)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        # the classifier learns from both: the auxiliary loss, and q(y|x) of the unlabelled
        assert any(not torch.equal(a, b) for a, b in zip(before, vae.classifier.parameters()))


def test_auxiliary_site_only_in_labelled_training_batches():
    vae = _m2()
    x, y = torch.rand(3, 4).round(), torch.tensor([0, 1, 2])
    vae.set_split_sizes(10, 90)
    assert "y_aux" in poutine.trace(vae.model).get_trace(x, y).nodes
    assert "y_aux" not in poutine.trace(vae.model).get_trace(x).nodes
    with vae.scoring():  # evaluation scores the true model
        assert "y_aux" not in poutine.trace(vae.model).get_trace(x, y).nodes


def test_minibatch_scaling_per_split():
    vae = _m2()
    vae.set_split_sizes(10, 90)
    x, y = torch.rand(5, 4).round(), torch.tensor([0, 1, 2, 0, 1])
    labelled = poutine.trace(vae.model).get_trace(x, y).nodes["x"]["scale"]
    unlabelled = poutine.trace(vae.model).get_trace(x).nodes["x"]["scale"]
    assert labelled == pytest.approx(10 / 5) and unlabelled == pytest.approx(90 / 5)


def test_labelled_subset_is_balanced_and_checked():
    y = torch.arange(100) % 4
    chosen = labelled_subset(y, 20, 4)
    assert torch.bincount(y[chosen], minlength=4).tolist() == [5, 5, 5, 5]
    assert len(set(chosen.tolist())) == 20
    with pytest.raises(DataError, match="more labels than"):
        labelled_subset(y, 101, 4)


def test_m2_config_checks():
    with pytest.raises(ConfigError, match="TraceEnum_ELBO"):
        Config.from_dict({"model": {"kind": "m2"}, "train": {"objective": "iwae"}})
    with pytest.raises(ConfigError, match="needs \\[model\\] kind = \"m2\""):
        Config.from_dict({"data": {"num_labels": 100}})


@pytest.mark.slow
def test_m2_on_digits_with_100_labels_learns_to_classify(tmp_path, capsys):
    """Two epochs with 100 of 1,294 labels. Chance is 0.1, with standard error
    sqrt(0.1·0.9/359) = 0.016 on the 359 test digits; 0.4 is over 18 standard errors above."""
    config = Config().with_overrides({"model": {"kind": "m2"}, "data": {"num_labels": 100},
                                      "train": {"epochs": 2},
                                      "evaluate": {"num_samples": 5}})
    summary = train(config, tmp_path / "m2")
    assert summary["test_accuracy"] > 0.4
    assert math.isfinite(summary["test_log_likelihood"])
    assert (tmp_path / "m2" / "samples.png").exists()

    # Unlabelled images: M2's log p(x) sums the label out, so evaluate and anomaly score
    # them (they refused, asking for labels). Dense noise is far less likely than digits.
    noise = tmp_path / "noise.npz"
    generator = np.random.default_rng(0)
    np.savez(noise, x=(generator.random((300, 8, 8)) < 0.5).astype(np.uint8) * 255)
    run, other = str(tmp_path / "m2"), f"file:{noise}"
    capsys.readouterr()
    assert main(["evaluate", run, "--dataset", other, "--num-samples", "5", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert "test_accuracy" not in scored and scored["score_name"] == "log p(x)"
    assert scored["test_log_likelihood"] < summary["test_log_likelihood"] - 10
    assert main(["anomaly", run, "--against", other, "--score", "log-likelihood", "--limit",
                 "100", "--num-samples", "5", "--out", str(tmp_path / "anomaly")]) == 0
    report = json.loads((tmp_path / "anomaly" / "anomaly.json").read_text())
    assert report["metrics"][other]["log-likelihood"]["auroc"] > 0.9


@pytest.mark.slow
def test_resumed_m2_run_matches_the_uninterrupted_one(tmp_path):
    from pyro_vae.runs import load_checkpoint

    def config(epochs):
        return Config().with_overrides({
            "model": {"kind": "m2", "hidden_dims": [16]}, "data": {"num_labels": 50},
            "train": {"epochs": epochs, "batch_size": 256}, "evaluate": {"num_samples": 2}})

    train(config(2), tmp_path / "straight")
    train(config(1), tmp_path / "resumed")
    train(config(2), tmp_path / "resumed", resume=True)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["model"]
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


@pytest.mark.slow
def test_m2_with_every_label_and_no_aux_term_is_refused(tmp_path):
    """Nothing would train q(y|x): no unlabelled ELBO and no labelled classification term."""
    config = Config().with_overrides({"model": {"kind": "m2", "hidden_dims": [8]},
                                      "train": {"epochs": 1, "aux_loss_weight": 0.0}})
    with pytest.raises(ConfigError, match="nothing trains the classifier"):
        train(config, tmp_path / "m2")
    assert not (tmp_path / "m2" / "checkpoint.pt").exists()
