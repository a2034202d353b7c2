"""Sizes beyond memory: training, scoring, sampling and the estimator lab refuse a size that
cannot fit with the figure it would need and what to lower, and an allocation failure
anywhere is one paragraph, never a traceback.
"""

import sys

import pytest
import torch

from pyro_vae.errors import ConfigError
from pyro_vae.training import train

from helpers import QUICK_TRAIN, one_epoch_config, run_cli


# --- sizes beyond memory -----------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["--latent-dim", 10 ** 12], ["--particles", 10 ** 12],
    ["--prior", "mixture", "--prior-components", 10 ** 12],
])
def test_training_sizes_beyond_memory_are_refused_with_the_figure(tmp_path, capsys, argv):
    code, _, err = run_cli(capsys, "train", *argv, "--out", tmp_path / "run")
    assert code == 2 and "needs at least" in err and "is available" in err
    assert not (tmp_path / "run").exists()


def test_a_memory_limit_is_respected(tmp_path, capsys, monkeypatch):
    from pyro_vae import faults

    monkeypatch.setattr(faults, "available_memory", lambda device="cpu": 8 * 10 ** 9)
    code, _, err = run_cli(capsys, "train", "--latent-dim", 10 ** 6, "--out", tmp_path / "r")
    assert code == 2 and "8 GB is available" in err


@pytest.mark.slow
def test_sample_and_compare_sizes_beyond_memory(trained, tmp_path, capsys):
    code, _, err = run_cli(capsys, "sample", trained["vae"], "--n", 10 ** 12)
    assert code == 2 and "sample --n" in err and "needs at least" in err
    code, _, err = run_cli(capsys, "compare", trained["vae"], "--particles", f"1,{10 ** 12}",
                           "--out", tmp_path / "c")
    assert code == 2 and "compare --particles" in err and not (tmp_path / "c").exists()


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                 "memory: you tried to allocate 4000000000000 bytes."),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
])
def test_an_allocation_failure_anywhere_is_one_paragraph(fast, tmp_path, capsys,
                                                         monkeypatch, failure):
    training = sys.modules["pyro_vae.training"]

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(training, "build_vae", fail)
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "run", *fast)
    assert code == 2 and "ran out of memory" in err and len(err.strip().splitlines()) == 2


def test_an_evaluation_chunk_too_big_for_memory_is_refused(tmp_path):
    config = one_epoch_config().with_overrides({"evaluate": {"max_chunk": 10 ** 15,
                                                  "num_samples": 10 ** 12}})
    with pytest.raises(ConfigError, match="max_chunk"):
        train(config, tmp_path / "run")


def test_a_label_fidelity_size_beyond_memory_is_refused_before_training(tmp_path, capsys):
    """It was found only after the last epoch, as an allocation failure with no summary."""
    recipe = tmp_path / "r.toml"
    recipe.write_text('[model]\nkind = "cvae"\n[evaluate]\nlabel_fidelity_samples = '
                      f'{10 ** 12}\n')
    code, _, err = run_cli(capsys, "train", recipe, *QUICK_TRAIN, "--out", tmp_path / "run")
    assert code == 2 and "label_fidelity_samples" in err and "needs at least" in err
    assert not (tmp_path / "run").exists()


def test_a_num_classes_beyond_memory_is_refused_with_the_figure(tmp_path, capsys):
    """one_hot(y) enters the encoder and the decoder: 10⁹ classes are terabytes of weights
    (it ended in an allocation failure that named every setting but num_classes)."""
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[model]\nkind = "cvae"\nnum_classes = {10 ** 9}\n')
    code, _, err = run_cli(capsys, "train", recipe, *QUICK_TRAIN, "--out", tmp_path / "run")
    assert code == 2 and "needs at least" in err and "num_classes" in err
    assert not (tmp_path / "run").exists()
