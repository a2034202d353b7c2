"""The estimator lab reproduces the qualitative SNR results of Rainforth et al. and Tucker et al."""

import json

import pytest
import torch

from pyro_vae import Config, build_vae, load_dataset
from pyro_vae.cli import main
from pyro_vae.data import binarize_fixed
from pyro_vae.lab import compare_estimators


@pytest.mark.slow
def test_snr_trends_on_a_fresh_digits_model():
    data = binarize_fixed(load_dataset("digits"), ("test",))
    torch.manual_seed(0)
    vae = build_vae(Config().model, data.image_shape)
    reports = compare_estimators(vae, data.test_x[:64], ["iwae", "dreg", "elbo"], [1, 20],
                                 repeats=25)
    row = {(r.objective, r.particles): r for r in reports}
    # IWAE's encoder SNR falls with K; DReG's does not fall like it; decoders' SNR rises.
    assert row["iwae", 20].encoder_snr < 0.8 * row["iwae", 1].encoder_snr
    assert row["dreg", 20].encoder_snr > 1.2 * row["iwae", 20].encoder_snr
    assert row["iwae", 20].decoder_snr > 1.3 * row["iwae", 1].decoder_snr
    assert row["elbo", 20].encoder_snr > 2 * row["elbo", 1].encoder_snr
    # IWAE's bound rises with K; K = 1 is the ELBO for every estimator (same seed, same draws).
    assert row["iwae", 20].bound > row["iwae", 1].bound + 5 * row["iwae", 20].bound_stderr
    assert abs(row["iwae", 1].bound - row["elbo", 1].bound) < 1e-3


@pytest.mark.slow
def test_compare_command_writes_table_and_plots(tmp_path, capsys):
    out = tmp_path / "lab"
    assert main(["compare", "--objectives", "iwae,renyi", "--particles", "1,3",
                 "--repeats", "4", "--batch-size", "16", "--out", str(out)]) == 0
    assert "| renyi | 3 |" in capsys.readouterr().out
    report = json.loads((out / "compare.json").read_text())
    assert len(report["reports"]) == 4
    for name in ("compare.csv", "bound_vs_k.png", "snr_vs_k.png"):
        assert (out / name).stat().st_size > 0


def test_compare_rejects_bad_lists(tmp_path, capsys):
    assert main(["compare", "--objectives", "iwea", "--out", str(tmp_path)]) == 2
    assert "iwea" in capsys.readouterr().err
    assert main(["compare", "--particles", "1,zero", "--out", str(tmp_path)]) == 2
