"""The settings of Pyro's SS-VAE example that recipes can ask for: Adam's β₁
(``[train] adam_beta1``), grey levels as Bernoulli targets (``[data] binarize = "grey"``) and
the label fed to the decoder's first layer only (``[model] decoder_label = "input"``)."""

import math

import numpy as np
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from torch import nn

from pyro_vae.cli import main
from pyro_vae.config import Config, ModelConfig
from pyro_vae.models.conditional import LabelledDecoder, LabelledMLPDecoder
from pyro_vae.models.semisupervised import build_m2
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.runs import load_checkpoint
from pyro_vae.training import prepare_data, train
from helpers import model_config


def small(**sections) -> Config:
    base = {"model": {"hidden_dims": [16], "latent_dim": 2},
            "train": {"epochs": 1, "batch_size": 256},
            "evaluate": {"num_samples": 8}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return Config().with_overrides(base)


@pytest.mark.slow
def test_adam_beta1_reaches_the_optimizer_of_a_run(tmp_path):
    train(small(train={"adam_beta1": 0.95}), tmp_path / "run")
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert [group["betas"] for group in saved["optimizer"]["param_groups"]] == [(0.95, 0.999)]
    assert Config().train.adam_beta1 == 0.9  # torch's default unless asked


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1])
def test_adam_beta1_outside_0_1_is_refused_with_a_clear_message(value):
    with pytest.raises(ConfigError, match=r"adam_beta1 = .* must lie in \[0, 1\)"):
        small(train={"adam_beta1": value})


@pytest.mark.slow
def test_grey_targets_keep_the_grey_levels_for_the_bernoulli_likelihood():
    grey = prepare_data(small(data={"binarize": "grey"}))
    assert not bool(((grey.train_x == 0) | (grey.train_x == 1)).all())  # grey levels kept
    torch.testing.assert_close(grey.train_x, grey.grey("train"))
    torch.testing.assert_close(grey.test_x, grey.grey("test"))  # test targets grey too
    # "none" still refuses grey pixels under a Bernoulli likelihood (no silent cross-entropy).
    with pytest.raises(DataError, match="grey pixels"):
        prepare_data(small(data={"binarize": "none"}))


@pytest.mark.slow
def test_a_run_on_grey_targets_does_not_call_its_score_a_likelihood(tmp_path):
    summary = train(small(data={"binarize": "grey"}), tmp_path / "grey")
    assert summary["score_name"].startswith("log p(x) on grey levels")
    assert "not a likelihood" in summary["score_name"]
    assert train(small(), tmp_path / "binary")["score_name"] == "log p(x)"


def test_grey_targets_with_another_likelihood_are_refused():
    with pytest.raises(ConfigError, match=r"binarize = \"grey\".*not the Bernoulli"):
        small(data={"binarize": "grey"}, model={"likelihood": "gaussian"})


def test_cli_refuses_grey_targets_for_a_gaussian_in_one_paragraph(tmp_path, capsys):
    code = main(["train", "--likelihood", "gaussian", "--binarize", "grey", "--epochs", "1",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "not the Bernoulli" in err
    assert not (tmp_path / "run").exists()


def test_grey_targets_outside_0_1_are_refused_before_training(tmp_path):
    path = tmp_path / "bright.npz"
    np.savez(path, x=np.full((20, 16), 2.0, dtype=np.float32))
    with pytest.raises(DataError, match=r"values in \[2, 2\], but grey targets"):
        prepare_data(small(data={"dataset": f"file:{path}", "binarize": "grey",
                                 "validation_fraction": 0.0}))


def test_decoder_label_input_feeds_the_label_to_the_first_layer_only():
    every = build_m2(model_config(kind="m2", latent_dim=2, hidden_dims=[8], num_classes=3),
                     (1, 2, 2))
    first = build_m2(model_config(kind="m2", latent_dim=2, hidden_dims=[8], num_classes=3,
                                 decoder_label="input"), (1, 2, 2))
    assert isinstance(every.decoder, LabelledMLPDecoder)  # the default
    assert isinstance(first.decoder, LabelledDecoder)
    widths = [m.in_features for m in first.decoder.modules() if isinstance(m, nn.Linear)]
    assert widths == [2 + 3, 8]  # [z, one_hot(y)] in, then the hidden layer alone
    z = torch.randn(4, 2)
    outputs = [first.decoder(z, torch.full((4,), c)) for c in range(3)]
    assert not torch.allclose(outputs[0], outputs[1])  # the label reaches the pixels
    # Enumerated labels ([3, 1]) broadcast against the batch, as TraceEnum_ELBO needs.
    x = torch.rand(4, 4).round()
    first.set_split_sizes(2, 4, 4)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(first.model, first.guide, x)
    assert math.isfinite(loss)


def test_decoder_label_choice_is_checked():
    with pytest.raises(ConfigError, match="decoder_label = 'last'"):
        small(model={"kind": "m2", "decoder_label": "last"})
