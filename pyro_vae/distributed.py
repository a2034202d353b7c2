"""Data-parallel training under ``torchrun`` with ``DistributedDataParallel``.

``torchrun --nproc_per_node=P -m pyro_vae train ...`` starts P processes; each holds the whole
(device-resident) training set and the same VAE. Every step all processes draw the same
random permutation and take the same global minibatch of B indices; process r keeps its share
``tensor_split(batch, P)[r]`` of B_r rows (the split a ``DistributedSampler`` makes, per batch).
The objective module (``ObjectiveModule``: model and guide as an ``nn.Module`` whose forward is
the negative bound) is wrapped in ``DistributedDataParallel``, which averages gradients over
processes. With the data plate scaling each share by N/B_r, process r's loss is multiplied by
P·B_r/B, so that the average gradient is

    (1/P) Σ_r P (B_r/B) (N/B_r) ∇ Σ_{n in share r} ℓ_n  =  (N/B) ∇ Σ_{n in batch} ℓ_n,

exactly the single-process minibatch gradient.

Identical results, not just equal in distribution: the reparameterization noise ε of each
latent site in the ``data`` plate is drawn for the *whole* global batch, from the same
generator state on every process, and process r keeps its rows (:class:`ShardedNoise`). So
every process consumes the global random stream exactly as one process would, all of them
stay in lockstep (same permutations, same dynamic binarization, same global-site draws), and
each datapoint sees the noise it would see in a one-process run. What differs is only the
order of floating-point reductions (the gradient all-reduce). Evaluation and diagnostics run
on every process alike, so that the streams stay in step; only rank 0 writes files or shows
progress.

Reference: Li et al. (2020), "PyTorch Distributed: Experiences on Accelerating Data Parallel
Training", VLDB.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as torch_dist
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import Independent, Normal

from pyro_vae.errors import ConfigError, PyroVAEError

T = TypeVar("T")

#: Environment variables torchrun sets for every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among ``world_size`` training processes."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: torch.Tensor) -> tuple[torch.Tensor, int]:
        """This process's rows of a global minibatch, and the offset of the first of them."""
        # tensor_split's sizes: the first (B mod P) shares hold one row more.
        size, extra = divmod(len(indices), self.world_size)
        offset = self.rank * size + min(self.rank, extra)
        return indices[offset: offset + size + (self.rank < extra)], offset

    def loss_weight(self, local_size: int, global_size: int) -> float:
        """P·B_r/B: makes DDP's gradient average the single-process minibatch gradient."""
        return self.world_size * local_size / global_size

    def average(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over the processes (a new tensor)."""
        total = tensor.clone()
        torch_dist.all_reduce(total, op=torch_dist.ReduceOp.SUM)
        return total / self.world_size

    def barrier(self) -> None:
        torch_dist.barrier()


def on_main(group: ProcessGroup | None, action: Callable[[], None]) -> None:
    """Run ``action`` (writing files) on rank 0 alone; if it fails with a
    :class:`PyroVAEError`, every process raises it, so none is left waiting for a peer."""
    if group is None:
        action()
        return
    failure: PyroVAEError | None = None
    if group.is_main:
        try:
            action()
        except PyroVAEError as error:
            failure = error
    message = [None if failure is None else str(failure)]
    torch_dist.broadcast_object_list(message, src=0)
    if failure is not None:
        raise failure
    if message[0] is not None:
        raise PyroVAEError(message[0])


def node_first(group: ProcessGroup | None, action: Callable[[], T]) -> T:
    """``action()`` in the first process of each node, then in the others (a download must
    happen once per node, not race with itself)."""
    if group is None:
        return action()
    if group.local_rank == 0:
        result = action()
        group.barrier()
        return result
    group.barrier()
    return action()


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def start(device_name: str) -> tuple[ProcessGroup | None, torch.device | None]:
    """Join the process group torchrun set up (``None`` when not started by torchrun).

    Returns the group and this process's device (``cuda:LOCAL_RANK`` for CUDA, else ``None``
    to keep the configured device). The backend is NCCL on CUDA and gloo on the CPU.
    """
    if not launched_by_torchrun():
        return None, None
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    device = None
    if device_name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("[train] device = \"cuda\" was asked for, but torch sees no "
                              "CUDA GPU here; use --device cpu (gloo), or install a CUDA build "
                              "of torch.")
        if torch.cuda.device_count() <= local_rank:
            raise ConfigError(f"torchrun started process {local_rank} on this node, but torch "
                              f"sees {torch.cuda.device_count()} CUDA GPU(s); start at most "
                              "that many processes per node (--nproc_per_node).")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device_name == "cuda" else "gloo"
    if not torch_dist.is_initialized():
        try:
            # Long enough for the other processes to wait out rank 0's final test scoring
            # (a K = 5000 evaluation can take hours on a CPU); torchrun stops every process as
            # soon as one fails, so a long timeout hides no failure.
            torch_dist.init_process_group(backend, timeout=datetime.timedelta(hours=12))
        except (RuntimeError, ValueError) as error:
            raise PyroVAEError(
                f"could not join torchrun's process group ({backend} backend): {error}. Start "
                "all processes with the same torchrun command (e.g. torchrun "
                "--nproc_per_node=2 -m pyro_vae train ...) and check MASTER_ADDR/MASTER_PORT."
            ) from None
    return ProcessGroup(rank, world_size, local_rank), device


def finish(group: ProcessGroup | None) -> None:
    """Wait until every process is done (rank 0 scores the test split last): a process that
    tore down its connections while rank 0 still held them could abort the job."""
    if group is not None:
        group.barrier()


def stop(group: ProcessGroup | None) -> None:
    if group is not None and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def wrap(module: nn.Module, group: ProcessGroup | None, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(module)`` in a process group, else ``module`` itself."""
    if group is None:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def check_batches(num_items: int, batch_size: int, group: ProcessGroup | None) -> None:
    """Every global minibatch must give every process at least one row."""
    if group is None:
        return
    if batch_size < group.world_size:
        raise ConfigError(f"batch_size {batch_size} is smaller than the {group.world_size} "
                          "processes; every process needs at least one image of each "
                          f"minibatch. Use a batch size of at least {group.world_size}.")
    last = num_items % batch_size or batch_size
    if last < group.world_size:
        raise ConfigError(
            f"with {num_items} training images and batch_size {batch_size}, the last minibatch "
            f"has only {last} images for {group.world_size} processes; every "
            "process needs at least one. Choose a batch size whose last batch "
            f"(N mod B) is 0 or at least {group.world_size}, or start fewer processes.")


def _data_dim(msg: dict) -> int | None:
    for frame in msg["cond_indep_stack"]:
        if frame.name == "data":
            return frame.dim
    return None


def _normal_base(fn: torch.distributions.Distribution) -> Normal | None:
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return fn if isinstance(fn, Normal) else None


class ShardedNoise(Messenger):
    """Draw each latent site's ε ~ N(0, I) for the whole global batch and keep this share.

    For a site in the ``data`` plate holding rows ``offset : offset + B_r`` of a global batch
    of ``global_size``, the value is ``loc + ε[rows] * scale`` — the same arithmetic as
    ``Normal.rsample`` on the same random numbers one process would draw for the whole batch.
    Sites outside the data plate (global latents) are drawn as usual: every process draws
    them identically. Other per-datapoint distributions cannot be shared out this way and are
    refused.
    """

    def __init__(self, global_size: int, offset: int):
        super().__init__()
        self.global_size = global_size
        self.offset = offset

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or msg["value"] is not None or msg["done"] \
                or site_is_subsample(msg):
            return
        dim = _data_dim(msg)
        if dim is None:
            return
        fn = msg["fn"]
        base = _normal_base(fn)
        if base is None or msg["args"] or msg["kwargs"]:
            raise ConfigError(
                f"distributed training draws per-datapoint latent variables as Normal "
                f"reparameterized noise shared out between processes, but site "
                f"{msg['name']!r} is a {type(fn).__name__}; train this model in one process.")
        shape = list(fn.batch_shape + fn.event_shape)
        dim -= len(fn.event_shape)
        local_size = shape[dim]
        shape[dim] = self.global_size
        eps = torch.empty(shape, dtype=base.loc.dtype, device=base.loc.device).normal_()
        eps = eps.narrow(dim, self.offset, local_size)
        value = base.loc + eps * base.scale
        msg["value"] = value if fn.has_rsample else value.detach()


@contextlib.contextmanager
def sharded_noise(group: ProcessGroup | None, global_size: int, offset: int) -> Iterator[None]:
    if group is None:
        yield
        return
    with ShardedNoise(global_size, offset):
        yield
