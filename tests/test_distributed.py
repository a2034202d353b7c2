"""Data-parallel training: shares of a minibatch reproduce the one-process gradient exactly,
and two gloo processes under torchrun end where one process ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.config import Config, ModelConfig
from pyro_vae.distributed import (ProcessGroup, ShardedNoise, check_batches, on_main,
                                  sharded_noise)
from pyro_vae.errors import ConfigError
from pyro_vae.models import build_vae
from pyro_vae.objectives import ObjectiveModule, make_objective
from pyro_vae.runs import load_checkpoint
from pyro_vae.training import _check_distributable
from helpers import model_config

NUM_DATA, BATCH = 1000, 13
MODELS = {
    "vae": ModelConfig(latent_dim=3, hidden_dims=[16]),
    "two_layer": model_config(latent_dim=3, hidden_dims=[16], stochastic_layers=2),
    "cvae": ModelConfig(latent_dim=3, hidden_dims=[16], kind="cvae"),
}


def _module(kind: str, objective: str, particles: int) -> ObjectiveModule:
    torch.manual_seed(1)
    vae = build_vae(MODELS[kind], (1, 8, 8), num_data=NUM_DATA)
    vae.kl_weight = 0.7  # a β/annealing scale must be shared out too
    return ObjectiveModule(vae, make_objective(objective, particles))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    x = torch.bernoulli(torch.full((BATCH, 64), 0.3), generator=generator)
    return x, torch.randint(0, 10, (BATCH,), generator=generator)


def _loss_and_grads(module: ObjectiveModule, x: torch.Tensor, y: torch.Tensor | None,
                    group: ProcessGroup | None, seed: int = 3
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """As one process of ``group`` (all of the batch when ``group`` is None)."""
    pyro.set_rng_seed(seed)
    module.zero_grad(set_to_none=True)
    indices = torch.arange(len(x))
    local, offset = (indices, 0) if group is None else group.shard(indices)
    labels = () if y is None else (y[local],)
    with sharded_noise(group, len(indices), offset):
        loss = module(x[local], *labels)
    if group is not None:
        loss = loss * group.loss_weight(len(local), len(indices))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in module.parameters()]


def test_shares_cover_the_batch_in_order():
    indices = torch.randperm(10)
    parts = [ProcessGroup(rank, 3, rank).shard(indices) for rank in range(3)]
    assert [len(part) for part, _ in parts] == [4, 3, 3]
    assert [offset for _, offset in parts] == [0, 4, 7]
    assert torch.equal(torch.cat([part for part, _ in parts]), indices)


@pytest.mark.parametrize("kind,objective,particles", [
    ("vae", "elbo", 1), ("vae", "meanfield", 1), ("vae", "iwae", 5), ("vae", "dreg", 4),
    ("two_layer", "elbo", 2), ("cvae", "elbo", 1)])
def test_one_share_draws_exactly_what_one_process_draws(kind, objective, particles):
    x, y = _batch()
    labels = y if kind == "cvae" else None
    module = _module(kind, objective, particles)
    plain_loss, plain_grads = _loss_and_grads(module, x, labels, None)
    shared_loss, shared_grads = _loss_and_grads(module, x, labels, ProcessGroup(0, 1, 0))
    assert torch.equal(plain_loss, shared_loss)
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, shared_grads))


@pytest.mark.parametrize("kind,objective,particles", [
    ("vae", "elbo", 1), ("vae", "meanfield", 1), ("vae", "iwae", 5), ("vae", "dreg", 4),
    ("two_layer", "elbo", 2), ("cvae", "elbo", 1)])
@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.slow
def test_averaged_share_gradients_are_the_whole_batch_gradient(kind, objective, particles,
                                                                world_size):
    """What DDP computes (the mean over processes of the weighted share gradients) equals the
    one-process minibatch gradient: same noise per datapoint, so equal up to rounding."""
    x, y = _batch()
    labels = y if kind == "cvae" else None
    module = _module(kind, objective, particles)
    whole_loss, whole_grads = _loss_and_grads(module, x, labels, None)
    shares = [_loss_and_grads(module, x, labels, ProcessGroup(rank, world_size, rank))
              for rank in range(world_size)]
    mean_loss = sum(loss for loss, _ in shares) / world_size
    torch.testing.assert_close(mean_loss, whole_loss, rtol=1e-6, atol=0)
    for index, whole in enumerate(whole_grads):
        mean = sum(grads[index] for _, grads in shares) / world_size
        torch.testing.assert_close(mean, whole, rtol=1e-5, atol=1e-5 * whole.abs().max())
    # and the noise matters: another seed gives another gradient
    _, other_grads = _loss_and_grads(module, x, labels, None, seed=4)
    assert not torch.allclose(other_grads[0], whole_grads[0], rtol=1e-3)


def test_a_latent_that_is_not_normal_is_refused():
    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("c", dist.Bernoulli(torch.full((len(x),), 0.5)))

    with pytest.raises(ConfigError, match="site 'c' is a Bernoulli"), \
            ShardedNoise(global_size=8, offset=0):
        guide(torch.zeros(4, 2))


def test_a_global_latent_is_drawn_as_usual():
    def guide():
        return pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))

    pyro.set_rng_seed(5)
    plain = guide()
    pyro.set_rng_seed(5)
    with ShardedNoise(global_size=8, offset=4):
        assert torch.equal(guide(), plain)


def test_every_process_needs_rows_of_every_batch():
    two = ProcessGroup(1, 2, 1)
    check_batches(100, 50, two)
    check_batches(102, 50, two)  # a last batch of 2: one row each
    with pytest.raises(ConfigError, match="only 1 images for 2 processes"):
        check_batches(101, 50, two)
    check_batches(101, 50, None)
    with pytest.raises(ConfigError, match="batch_size 1 is smaller than the 2 processes"):
        check_batches(100, 1, two)


@pytest.mark.parametrize("override,reason", [
    ({"train": {"free_bits": 0.5, "objective": "meanfield"}}, "free bits"),
    ({"train": {"objective": "score"}}, "running baseline"),
    ({"model": {"kind": "m2"}, "data": {"num_labels": 100}}, "enumerates a discrete latent variable")])
def test_what_cannot_be_shared_out_is_refused(override, reason):
    config = Config().with_overrides(override)
    _check_distributable(config, None)
    with pytest.raises(ConfigError, match=reason):
        _check_distributable(config, ProcessGroup(0, 2, 0))


def test_one_process_writes_for_all():
    written = []
    on_main(None, lambda: written.append(1))
    assert written == [1]


@pytest.mark.parametrize("rank,local_rank,says", [
    ("0", "0", "pyro-vae: error: under torchrun, give --out"),
    ("1", "1", ""),  # the same node's rank 0 says it
    ("2", "0", "pyro-vae (process 2): error: under torchrun, give --out")])  # another node
def test_torchrun_without_out_is_refused_once_per_node(monkeypatch, capsys, rank, local_rank,
                                                       says):
    for name, value in {"RANK": rank, "WORLD_SIZE": "4", "LOCAL_RANK": local_rank,
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(name, value)
    assert main(["train", "--epochs", "1"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(says) if says else error == ""


def _train_command(run_dir, processes: int | None, resume: bool = False) -> list[str]:
    launcher = [] if processes is None else [
        "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    options = ["--resume", "--epochs", "4"] if resume else [
        "--epochs", "3", "--batch-size", "63", "--eval-samples", "20"]
    return [sys.executable, *launcher, "-m", "pyro_vae", "train", "--out", str(run_dir),
            *options]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def _assert_same_runs(one, two, epochs: int) -> None:
    rows = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            for run in (one, two)]
    assert len(rows[0]) == len(rows[1]) == epochs
    for single, double in zip(*rows):
        assert single["step"] == double["step"]
        assert _relative(double["train_elbo"], single["train_elbo"]) < 1e-4
        assert _relative(double["validation_elbo"], single["validation_elbo"]) < 1e-4
    summaries = [json.loads((run / "summary.json").read_text()) for run in (one, two)]
    assert _relative(summaries[1]["test_elbo"], summaries[0]["test_elbo"]) < 1e-4
    assert _relative(summaries[1]["test_log_likelihood"],
                     summaries[0]["test_log_likelihood"]) < 1e-4
    weights = [load_checkpoint(run / "checkpoint.pt")["model"] for run in (one, two)]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_gloo_processes_under_torchrun_end_where_one_process_ends(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _run(_train_command(one, None))
    done = _run(_train_command(two, 2))
    assert done.stderr.count("training into") == 1  # rank 0 alone reports
    assert done.stdout.count("dataset: digits") == 1
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    _assert_same_runs(one, two, epochs=3)
    # A run continues in either mode: the checkpoint is the same whoever wrote it.
    _run(_train_command(one, 2, resume=True))
    _run(_train_command(two, None, resume=True))
    _assert_same_runs(one, two, epochs=4)
