"""Training and evaluation cost against hand-written PyTorch, measured in one process.

Every contender uses the same 784-400-50 MLP VAE (Bernoulli likelihood from logits) and the
same ``torch.optim.Adam``; contenders are timed in interleaved rounds, so that machine noise
hits all of them alike, and each is reported as a median and its ratio to the hand-written
reference measured in the same run.

Per training step (random binary batches already on the device):

* ``torch``          — hand-written: encoder, reparameterized sample, BCE-with-logits, analytic
                       KL, backward, Adam step, one read of the loss;
* ``pyro_svi``       — Pyro's stock ``SVI`` with ``Trace_ELBO`` and ``pyro.optim.Adam``;
* ``lib_NAME``       — this library's training step: ``ObjectiveModule`` (``elbo``,
                       ``meanfield``, ``iwae`` K = 5 and 50, ``dreg`` K = 50),
                       ``pyro_vae.training.optimizer_step`` (backward, one read of loss and
                       gradient norm to stop on non-finite values, Adam step) and the
                       optimizer the training loop builds (``pyro_vae.steps.adam``: torch's
                       fused Adam on a CPU or CUDA device);
* ``lib_elbo_adam``  — the same ``elbo`` step with the reference's optimizer, the default
                       ``torch.optim.Adam`` (the library's own overhead, like for like);
* ``torch_fused``    — the hand-written step with fused Adam (``fused=True``), for comparison
                       with ``lib_elbo``;
* ``torch_iwae_kK``  — hand-written vectorized IWAE(K), the reference of the K-particle rows
                       (DReG is compared with IWAE(50): the same bound, another gradient).

Per epoch (``--epoch-images``, default the 60,000 of MNIST's training set, on the device):
``lib_epoch`` is the library's epoch loop (``pyro_vae.training``'s, with ``minibatches``),
``torch_epoch`` a hand-written loop over ``randperm`` slices of the same device tensor,
``dataloader_epoch`` the hand-written step fed by a shuffling ``torch.utils.data.DataLoader``.

Evaluation: importance samples per second of ``estimate_log_likelihood`` (K = 5000) on the first
``--eval-images`` MNIST test images (``--data-dir`` or ``$PYRO_VAE_DATA_DIR``), against a
hand-written vectorized estimate with the same chunking.

Run by hand, not in CI:

    python benchmarks/step_time.py --batch-sizes 128 1024 --rounds 5 --steps 20 \
        --eval-images 100

On a CPU shared with other jobs, ``--clock cpu`` (with ``OMP_NUM_THREADS=1``) times each step by
the CPU seconds of the thread that runs it (with one torch thread, forward, backward and the
optimizer all run there) instead of the wall clock, which also counts the waits for a core.

Results are printed and written to benchmarks/results/step_time.json (benchmarks/results.py).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from torch.utils.data import DataLoader, TensorDataset

from pyro_vae.config import ModelConfig
from pyro_vae.data import binarize, load_dataset
from pyro_vae.evaluate import estimate_log_likelihood
from pyro_vae.models import build_vae
from pyro_vae.objectives import ObjectiveModule, make_objective
from pyro_vae.steps import adam
from pyro_vae.training import KLSchedule, Progress, _train_epoch, optimizer_step

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as result_files  # noqa: E402  (benchmarks/results.py: the result file)
PIXELS, HIDDEN, LATENT, NUM_DATA = 784, [400], 50, 60_000
LEARNING_RATE = 1e-3

Step = Callable[[torch.Tensor], float]


def _model_config() -> ModelConfig:
    return ModelConfig(latent_dim=LATENT, hidden_dims=HIDDEN, activation="relu")


def _vae(device: torch.device, num_data: int | None = None):
    torch.manual_seed(0)
    return build_vae(_model_config(), (1, 28, 28), num_data=num_data).to(device)


def _hand_written_step(loss_fn: Callable, vae, fused: bool | None = None) -> Step:
    optimizer = torch.optim.Adam(vae.parameters(), lr=LEARNING_RATE, fused=fused)

    def step(x: torch.Tensor) -> float:
        loss = loss_fn(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()  # a training loop reads its loss (the library reads it too)
    return step


def torch_step_fn(device: torch.device, fused: bool | None = None) -> Step:
    """The reference: the same networks as the library's VAE, the ELBO written by hand."""
    vae = _vae(device)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        loc, scale = vae.encoder(x)
        z = loc + scale * torch.randn_like(loc)
        log_lik = -F.binary_cross_entropy_with_logits(vae.decoder(z), x, reduction="sum")
        kl = (0.5 * (loc.pow(2) + scale.pow(2) - 1) - torch.log(scale)).sum()
        return -(log_lik - kl) * (NUM_DATA / len(x))
    return _hand_written_step(loss_fn, vae, fused)


def iwae_log_weights(vae, x: torch.Tensor, particles: int) -> torch.Tensor:
    """Hand-written log w[k, n] = log p(x_n, z_kn) − log q(z_kn | x_n), shape [K, B]."""
    loc, scale = vae.encoder(x)
    eps = torch.randn((particles,) + loc.shape, device=x.device, dtype=x.dtype)
    z = loc + scale * eps
    log_lik = -F.binary_cross_entropy_with_logits(
        vae.decoder(z), x.expand(particles, *x.shape), reduction="none").sum(-1)
    log_prior = -0.5 * z.pow(2).sum(-1)
    log_q = -0.5 * eps.pow(2).sum(-1) - torch.log(scale).sum(-1)
    return log_lik + log_prior - log_q  # the 2π terms cancel


def torch_iwae_step_fn(particles: int, device: torch.device) -> Step:
    """Hand-written vectorized IWAE(K): the reference of the library's K-particle rows."""
    vae = _vae(device)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        bound = torch.logsumexp(iwae_log_weights(vae, x, particles), 0).sum()
        return -bound * (NUM_DATA / len(x))
    return _hand_written_step(loss_fn, vae)


def pyro_svi_step_fn(device: torch.device) -> Step:
    vae = _vae(device, NUM_DATA)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": LEARNING_RATE}), Trace_ELBO())
    return svi.step


def library_module(objective: str, particles: int, device: torch.device, num_data: int,
                   default_adam: bool = False) -> tuple[ObjectiveModule, torch.optim.Optimizer]:
    """The module and optimizer that ``pyro_vae.training.train`` builds (``default_adam``:
    the reference's unfused ``torch.optim.Adam`` instead)."""
    module = ObjectiveModule(_vae(device, num_data), make_objective(objective, particles))
    if default_adam:
        return module, torch.optim.Adam(module.parameters(), lr=LEARNING_RATE)
    return module, adam(module.parameters(), LEARNING_RATE)


def library_step_fn(objective: str, particles: int, device: torch.device,
                    default_adam: bool = False) -> Step:
    """One step of the library's training path: ObjectiveModule + train.optimizer_step."""
    module, optimizer = library_module(objective, particles, device, NUM_DATA, default_adam)
    parameters = list(module.parameters())
    counter = itertools.count()
    return lambda x: optimizer_step(module(x), optimizer, parameters, x, next(counter))


CONTENDERS: dict[str, Callable[[torch.device], Step]] = {
    "torch": torch_step_fn,
    "pyro_svi": pyro_svi_step_fn,
    "lib_elbo": lambda d: library_step_fn("elbo", 1, d),
    "lib_elbo_adam": lambda d: library_step_fn("elbo", 1, d, default_adam=True),
    "torch_fused": lambda d: torch_step_fn(d, fused=True),
    "lib_meanfield": lambda d: library_step_fn("meanfield", 1, d),
    "torch_iwae_k5": lambda d: torch_iwae_step_fn(5, d),
    "lib_iwae_k5": lambda d: library_step_fn("iwae", 5, d),
    "torch_iwae_k50": lambda d: torch_iwae_step_fn(50, d),
    "lib_iwae_k50": lambda d: library_step_fn("iwae", 50, d),
    "lib_dreg_k50": lambda d: library_step_fn("dreg", 50, d),
}
REFERENCES = {"lib_iwae_k5": "torch_iwae_k5", "lib_iwae_k50": "torch_iwae_k50",
              "lib_dreg_k50": "torch_iwae_k50", "torch_iwae_k5": "torch_iwae_k5",
              "torch_iwae_k50": "torch_iwae_k50"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


#: The clock ``timed`` reads: wall-clock seconds, or (``--clock cpu``) the CPU seconds of the
#: timing thread, which with one torch thread on a CPU is the whole step's work and does not
#: count the time the process waits for a core that other jobs hold.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}
_clock = CLOCKS["wall"]


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds ``fn()`` takes, the device synchronized before and after."""
    _sync(device)
    started = _clock()
    fn()
    _sync(device)
    return _clock() - started


def _ratios(medians: dict[str, float], references: dict[str, str], default: str
            ) -> dict[str, dict[str, float | None]]:
    rows = {}
    for name, median in medians.items():
        reference = medians.get(references.get(name, default))
        rows[name] = {"median": round(median, 4),
                      "ratio_to_reference": round(median / reference, 3) if reference else None}
    return rows


def bench_steps(batch_size: int, names: list[str], rounds: int, steps: int,
                device: torch.device) -> dict:
    torch.manual_seed(0)
    batches = [torch.bernoulli(torch.full((batch_size, PIXELS), 0.2, device=device))
               for _ in range(steps)]
    contenders = {name: CONTENDERS[name](device) for name in names}
    for step in contenders.values():  # warm-up
        for x in batches[:3]:
            step(x)
    # Each reference is timed step by step alternating with the contenders compared with it,
    # in rotating order, so that load changes and cache effects hit all of them alike; groups
    # of very different sizes (IWAE(50) against the plain VAE) are not mixed.
    groups: dict[str, list[str]] = {}
    for name in contenders:
        groups.setdefault(REFERENCES.get(name, "torch"), []).append(name)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for group in groups.values():
            for i, x in enumerate(batches):
                for name in group[i % len(group):] + group[:i % len(group)]:
                    step = contenders[name]
                    times[name].append(1000 * timed(lambda: step(x), device))  # noqa: B023
    return _ratios({n: statistics.median(t) for n, t in times.items()}, REFERENCES, "torch")


def bench_epochs(batch_size: int, num_images: int, rounds: int, device: torch.device) -> dict:
    """Seconds per epoch over ``num_images`` device-resident images, data feeding included."""
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((num_images, PIXELS), 0.2, device=device))
    module, optimizer = library_module("elbo", 1, device, num_images)
    hand_written = torch_step_fn(device)
    loader = DataLoader(TensorDataset(x.cpu()), batch_size=batch_size, shuffle=True)

    def lib_epoch() -> None:
        _train_epoch(module, optimizer, x, batch_size, KLSchedule(), 0, Progress())

    def torch_epoch() -> None:
        for indices in torch.randperm(num_images, device=device).split(batch_size):
            hand_written(x[indices])

    def dataloader_epoch() -> None:
        for (batch,) in loader:
            hand_written(batch.to(device, non_blocking=True))

    epochs = {"torch_epoch": torch_epoch, "lib_epoch": lib_epoch,
              "dataloader_epoch": dataloader_epoch}
    times: dict[str, list[float]] = {name: [] for name in epochs}
    with pyro.validation_enabled(False):
        hand_written(x[:batch_size])  # warm-up: the library's first call traces with Pyro
        module(x[:batch_size])
        for _ in range(rounds):
            for name, epoch in epochs.items():
                times[name].append(timed(epoch, device))
    return _ratios({n: statistics.median(t) for n, t in times.items()}, {}, "torch_epoch")


def bench_evaluation(num_images: int, num_samples: int, max_chunk: int, rounds: int,
                     data_dir: str | None, device: torch.device) -> dict:
    """Importance samples per second of log p(x) estimates on MNIST test images."""
    test_x = load_dataset("mnist", data_dir).test_x[:num_images]
    x = binarize(test_x, torch.Generator().manual_seed(0)).to(device)
    vae = _vae(device)
    data_chunk = max(1, min(len(x), max_chunk // num_samples))
    particle_chunk = max(1, min(num_samples, max_chunk // data_chunk))

    @torch.no_grad()
    def torch_eval() -> None:  # the same chunks, log-sum-exp accumulated the same way
        for start in range(0, len(x), data_chunk):
            batch = x[start: start + data_chunk]
            log_sum_w = torch.full((len(batch),), -math.inf, device=device)
            for done in range(0, num_samples, particle_chunk):
                log_w = iwae_log_weights(vae, batch, min(particle_chunk, num_samples - done))
                log_sum_w = torch.logaddexp(log_sum_w, torch.logsumexp(log_w, 0))
            log_sum_w.cpu()

    def lib_eval() -> None:
        estimate_log_likelihood(vae, x, num_samples, max_chunk)

    evaluations = {"torch_eval": torch_eval, "lib_eval": lib_eval}
    times: dict[str, list[float]] = {name: [] for name in evaluations}
    with pyro.validation_enabled(False):
        for _ in range(rounds):
            for name, evaluation in evaluations.items():
                times[name].append(timed(evaluation, device))
    rows = {}
    for name, t in times.items():
        rate = len(x) * num_samples / statistics.median(t)
        rows[name] = {"seconds": round(statistics.median(t), 3),
                      "samples_per_second": round(rate)}
    rows["lib_eval"]["ratio_to_reference"] = round(
        rows["lib_eval"]["seconds"] / rows["torch_eval"]["seconds"], 3)
    return {"images": len(x), "num_samples": num_samples, "max_chunk": max_chunk, **rows}


def _load_average() -> list[float] | None:
    try:
        return [round(load, 2) for load in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _figures(results: dict) -> dict:
    """The result file's figures: medians and ratios by contender and batch size."""
    figures: dict = {"step_ms": {}, "epoch_seconds": {}}
    for group in ("step_ms", "epoch_seconds"):
        for batch_size, rows in results[group].items():
            for name, row in rows.items():
                cell = figures[group].setdefault(name, {})
                cell[f"B{batch_size}"] = {"value": round(row["median"], 3)}
                cell[f"B{batch_size}_ratio"] = {"value": row["ratio_to_reference"]}
    if "evaluation" in results:
        figures["evaluation_samples_per_second"] = {
            name: {"value": results["evaluation"][name]["samples_per_second"]}
            for name in ("torch_eval", "lib_eval")}
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[128, 1024],
                        help="training batch sizes (none: only the evaluation benchmark)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS),
                        choices=list(CONTENDERS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall: elapsed seconds; cpu: this thread's CPU seconds (for a "
                             "CPU shared with other jobs, with one torch thread)")
    parser.add_argument("--epoch-images", type=int, default=NUM_DATA,
                        help="images per timed epoch (0: skip the epoch benchmark)")
    parser.add_argument("--epoch-rounds", type=int, default=3)
    parser.add_argument("--eval-images", type=int, default=10_000,
                        help="MNIST test images to score (0: skip the evaluation benchmark)")
    parser.add_argument("--eval-samples", type=int, default=5000)
    parser.add_argument("--eval-rounds", type=int, default=2)
    parser.add_argument("--max-chunk", type=int, default=20_000,
                        help="decoded images per chunk of the evaluation")
    parser.add_argument("--data-dir", default=None,
                        help="folder holding mnist/ (default: $PYRO_VAE_DATA_DIR)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "step_time.json"))
    args = parser.parse_args()
    started = result_files.begin()
    device = torch.device(args.device)
    if args.clock == "cpu" and (device.type != "cpu" or torch.get_num_threads() != 1):
        parser.error("--clock cpu measures one CPU thread: use it with --device cpu and "
                     "OMP_NUM_THREADS=1")
    global _clock
    _clock = CLOCKS[args.clock]
    pyro.enable_validation(False)
    results: dict = {
        "command": " ".join(sys.argv), "device": str(device), "torch": torch.__version__,
        "pyro": pyro.__version__, "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "clock": args.clock,
        "load_average": _load_average(),
        "step_ms": {}, "epoch_seconds": {}}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    for batch_size in args.batch_sizes:
        rows = bench_steps(batch_size, args.contenders, args.rounds, args.steps, device)
        results["step_ms"][str(batch_size)] = rows
        print(f"step, batch {batch_size} (ms, ratio to its hand-written reference):")
        for name, row in rows.items():
            print(f"  {name:18s} {row['median']:9.3f}   x{row['ratio_to_reference']}")
        if args.epoch_images:
            rows = bench_epochs(batch_size, args.epoch_images, args.epoch_rounds, device)
            results["epoch_seconds"][str(batch_size)] = rows
            print(f"epoch of {args.epoch_images} images, batch {batch_size} (s):")
            for name, row in rows.items():
                print(f"  {name:18s} {row['median']:9.3f}   x{row['ratio_to_reference']}")
    if args.eval_images:
        rows = bench_evaluation(args.eval_images, args.eval_samples, args.max_chunk,
                                args.eval_rounds, args.data_dir, device)
        results["evaluation"] = rows
        print(f"evaluation, K = {args.eval_samples} on {rows['images']} test images:")
        for name in ("torch_eval", "lib_eval"):
            print(f"  {name:18s} {rows[name]['seconds']:9.3f} s   "
                  f"{rows[name]['samples_per_second']:,} samples/s")
    results["load_average_after"] = _load_average()
    out = Path(args.out)
    path = result_files.write_result(out.stem, _figures(results), started=started,
                                     details=results, out_dir=out.parent)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
