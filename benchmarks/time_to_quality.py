"""Time to quality: the library's VAE against a hand-written PyTorch VAE, same wall clock.

Both contestants get the same networks (the library's 784-200-200-50 tanh MLPs of
``models/mnist_prior_normal.toml``, the hand-written copy starting from the same initial
weights, output-bias start included), the same dynamically binarized MNIST minibatches (batch
100, one generator each with the same seed), the same estimator (one reparameterized sample of
log p(x|z) + log p(z) − log q(z|x), or the analytic KL with ``--objective meanfield``), the same
N/B scaling and the same Adam (learning rate, betas). The library trains through its own
training step: ``ObjectiveModule`` (Pyro's ``Trace_ELBO`` / ``TraceMeanField_ELBO`` over the
model/guide pair, recorded after the first step), ``pyro_vae.steps.optimizer_step`` (backward,
the non-finite check) and the optimizer the training loop builds (``pyro_vae.steps.adam``:
torch's fused Adam). The hand-written one computes the ELBO in plain torch and steps
``torch.optim.Adam`` as a PyTorch user writes it (the default, unfused implementation);
``--fused-reference`` adds a third contestant, the hand-written VAE with fused Adam, to
separate the library's own overhead from the optimizer's implementation.

They take turns for ``--slice`` seconds of training each, so a busy machine slows both alike,
until each has trained ``--minutes`` (wall-clock minutes, or with ``--clock cpu`` CPU minutes
of the training thread, the fair budget on a machine shared with other jobs). Every ``--eval-every`` minutes of a contestant's own
training time its test log-likelihood is estimated by one shared plain-torch evaluator
(importance sampling with q(z|x), ``--eval-samples`` per image, on the first ``--eval-points``
test images; evaluation time is not counted). Run by hand, not in CI:

    python benchmarks/time_to_quality.py --minutes 5 --data-dir ../shared/data

Prints a table of test NLL at equal minutes and writes benchmarks/results/time_to_quality.json
(benchmarks/results.py)
(and, with ``--plot PATH``, the curves).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import pyro
import torch
from torch import nn

from pyro_vae.config import Config
from pyro_vae.data import binarize, load_dataset, minibatches
from pyro_vae.models import build_vae
from pyro_vae.objectives import ObjectiveModule, make_objective
from pyro_vae.steps import adam, optimizer_step

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as result_files  # noqa: E402  (benchmarks/results.py: the result file)
LOG_2PI = math.log(2 * math.pi)


class HandWrittenVAE(nn.Module):
    """784-200-200-50 tanh encoder (μ, log σ²) and decoder (logits), in plain torch."""

    def __init__(self, pixels: int, hidden: list[int], latent: int):
        super().__init__()
        sizes = [pixels, *hidden]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(n_in, n_out), nn.Tanh()]
        self.encoder = nn.Sequential(*layers)
        self.loc = nn.Linear(hidden[-1], latent)
        self.log_var = nn.Linear(hidden[-1], latent)
        sizes = [latent, *reversed(hidden)]
        layers = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(n_in, n_out), nn.Tanh()]
        self.decoder = nn.Sequential(*layers, nn.Linear(hidden[0], pixels))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x)
        return self.loc(features), torch.exp(0.5 * self.log_var(features))

    def loss(self, x: torch.Tensor, num_data: int, analytic_kl: bool) -> torch.Tensor:
        """N/B × the batch's summed negative ELBO (one reparameterized sample)."""
        loc, scale = self.encode(x)
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        logits = self.decoder(z)
        log_px = -nn.functional.binary_cross_entropy_with_logits(
            logits, x, reduction="none").sum(-1)
        if analytic_kl:
            kl = (0.5 * (loc.pow(2) + scale.pow(2) - 1) - scale.log()).sum(-1)
        else:
            log_q = (-0.5 * eps.pow(2) - scale.log() - 0.5 * LOG_2PI).sum(-1)
            log_p = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(-1)
            kl = log_q - log_p
        return -(log_px - kl).sum() * (num_data / len(x))


def copy_library_weights(hand: HandWrittenVAE, vae) -> None:
    """Start the hand-written networks at the library model's initial weights."""
    body = [m for m in vae.encoder.body if isinstance(m, nn.Linear)]
    mine = [m for m in hand.encoder if isinstance(m, nn.Linear)]
    pairs = list(zip(mine, body)) + [(hand.loc, vae.encoder.head.loc),
                                     (hand.log_var, vae.encoder.head.raw_scale)]
    pairs += list(zip([m for m in hand.decoder if isinstance(m, nn.Linear)],
                      [m for m in vae.decoder.net if isinstance(m, nn.Linear)]))
    with torch.no_grad():
        for target, source in pairs:
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)


@torch.no_grad()
def test_log_likelihood(encode, decode, x: torch.Tensor, num_samples: int,
                        chunk: int = 100) -> float:
    """Mean over ``x`` of log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x)."""
    total = 0.0
    for start in range(0, len(x), chunk):
        batch = x[start: start + chunk]
        loc, scale = encode(batch)
        eps = torch.randn(num_samples, *loc.shape)
        z = loc + scale * eps
        logits = decode(z)
        log_px = -nn.functional.binary_cross_entropy_with_logits(
            logits, batch.expand_as(logits), reduction="none").sum(-1)
        log_q = (-0.5 * eps.pow(2) - scale.log() - 0.5 * LOG_2PI).sum(-1)
        log_p = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(-1)
        log_w = log_px + log_p - log_q
        total += float((torch.logsumexp(log_w, 0) - math.log(num_samples)).sum())
    return total / len(x)


#: Training time as the wall clock counts it, or (``--clock cpu``) as the CPU seconds of the
#: training thread: with one torch thread every step runs there, and a core held by other jobs
#: does not count against either contestant.
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


class Contestant:
    """One model with its optimizer, data stream and clock of training seconds."""

    def __init__(self, name: str, loss_fn, parameters, x_train: torch.Tensor, batch: int,
                 seed: int, evaluate, optimizer: torch.optim.Optimizer,
                 library_step: bool = False):
        self.name, self.loss_fn, self.evaluate = name, loss_fn, evaluate
        self.parameters = list(parameters)
        self.optimizer, self.library_step = optimizer, library_step
        self.clock = CLOCKS["wall"]
        self.x_train, self.batch = x_train, batch
        self.generator = torch.Generator().manual_seed(seed)
        # The global torch RNG (Pyro's draws, batch order) is swapped in per contestant.
        self.rng = torch.Generator().manual_seed(seed).get_state()
        self.seconds, self.steps = 0.0, 0
        self.batches = iter(())
        self.x_epoch = x_train
        self.curve: list[dict] = []

    def _next_batch(self) -> torch.Tensor:
        indices = next(self.batches, None)
        if indices is None:
            self.x_epoch = binarize(self.x_train, self.generator)
            self.batches = minibatches(len(self.x_train), self.batch, "cpu")
            indices = next(self.batches)
        return self.x_epoch[indices]

    def train_for(self, seconds: float, limit: float) -> None:
        """Train for ``seconds`` (not beyond ``limit`` seconds in all)."""
        saved = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        started = self.clock()
        stop = min(seconds, limit - self.seconds)
        while self.clock() - started < stop:
            x = self._next_batch()
            loss = self.loss_fn(x)
            if self.library_step:  # the training loop's step: backward, checks, Adam
                optimizer_step(loss, self.optimizer, self.parameters, x, self.steps)
            else:
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                loss.item()  # a training loop reads its loss (the library's step does)
            self.steps += 1
        self.seconds += self.clock() - started
        self.rng = torch.get_rng_state()
        torch.set_rng_state(saved)


def _figures(library: list[dict], hand: list[dict]) -> tuple[dict, list[list[str]]]:
    """The result file's figures at each mark, and the docs' table rows that quote them."""
    figures, rows = {}, []
    for mine, theirs in zip(library, hand):
        key = f"minute_{mine['minutes']:g}".replace(".", "_")
        figures[key] = {"library_nll": {"value": round(mine["test_nll"], 2), "decimals": 2},
                        "hand_written_nll": {"value": round(theirs["test_nll"], 2), "decimals": 2},
                        "difference": {"value": round(mine["test_nll"] - theirs["test_nll"], 2),
                                       "decimals": 2},
                        "library_steps": {"value": mine["steps"]},
                        "hand_written_steps": {"value": theirs["steps"]}}
        rows.append([f"{mine['minutes']:g}", f"{{{key}.library_nll}}",
                     f"{{{key}.hand_written_nll}}", f"{{{key}.difference}}",
                     f"{{{key}.library_steps}} / {{{key}.hand_written_steps}}"])
    return figures, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="training minutes for each contestant")
    parser.add_argument("--slice", type=float, default=20.0,
                        help="seconds of training per turn")
    parser.add_argument("--eval-every", type=float, default=1.0, help="minutes")
    parser.add_argument("--eval-points", type=int, default=1000)
    parser.add_argument("--eval-samples", type=int, default=100)
    parser.add_argument("--objective", choices=["elbo", "meanfield"], default="elbo")
    parser.add_argument("--recipe", default=str(ROOT / "models" / "mnist_prior_normal.toml"))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="count training time on the wall clock or in CPU seconds of the "
                             "training thread (for a machine shared with other jobs; needs "
                             "OMP_NUM_THREADS=1)")
    parser.add_argument("--fused-reference", action="store_true",
                        help="add the hand-written VAE with fused Adam as a third contestant")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--plot", default=None, help="write the curves to this PNG")
    args = parser.parse_args()
    started = result_files.begin()

    config = Config.from_toml(args.recipe)
    data = load_dataset(config.data.dataset, args.data_dir, 0.0)
    x_train = data.train_x
    x_test = binarize(data.test_x[: args.eval_points], torch.Generator().manual_seed(1))
    num_data = len(x_train)

    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    vae = build_vae(config.model, data.image_shape, num_data=num_data)
    vae.start_output_bias(x_train)
    module = ObjectiveModule(vae, make_objective(args.objective))
    analytic = args.objective == "meanfield"
    lr, batch = config.train.learning_rate, config.train.batch_size
    contestants = [
        Contestant("library", module, module.parameters(), x_train, batch, args.seed,
                   lambda: test_log_likelihood(vae.encoder, vae.decoder, x_test,
                                               args.eval_samples),
                   adam(module.parameters(), lr), library_step=True)]
    for name, fused in [("hand-written", None)] + [("hand-written, fused Adam", True)] * bool(
            args.fused_reference):
        hand = HandWrittenVAE(x_train.shape[1], config.model.hidden_dims,
                              config.model.latent_dim)
        copy_library_weights(hand, vae)
        contestants.append(Contestant(
            name, lambda x, hand=hand: hand.loss(x, num_data, analytic), hand.parameters(),
            x_train, batch, args.seed,
            lambda hand=hand: test_log_likelihood(hand.encode, hand.decoder, x_test,
                                                  args.eval_samples),
            torch.optim.Adam(hand.parameters(), lr=lr, fused=fused)))
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        parser.error("--clock cpu counts one thread's CPU time: set OMP_NUM_THREADS=1")
    for contestant in contestants:
        contestant.clock = CLOCKS[args.clock]
    limit = args.minutes * 60
    load_before = [round(load, 2) for load in os.getloadavg()]
    marks = [args.eval_every * 60 * (i + 1) for i in range(int(args.minutes / args.eval_every))]
    with pyro.validation_enabled(False):
        for mark in marks:
            while any(c.seconds < mark - 1e-9 for c in contestants):
                for contestant in contestants:
                    contestant.train_for(min(args.slice, mark - contestant.seconds), limit)
            for contestant in contestants:
                torch.manual_seed(12345)
                nll = -contestant.evaluate()
                contestant.curve.append({"minutes": round(mark / 60, 3), "test_nll": nll,
                                         "steps": contestant.steps})
            print(f"{mark / 60:5.1f} min  " + "  ".join(
                f"{c.name}: {c.curve[-1]['test_nll']:.2f} nats ({c.steps} steps)"
                for c in contestants), flush=True)
    result = {
        "recipe": Path(args.recipe).name, "objective": args.objective, "seed": args.seed,
        "minutes_each": args.minutes, "slice_seconds": args.slice, "clock": args.clock,
        "eval_points": len(x_test), "eval_samples": args.eval_samples,
        "torch_threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": [round(load, 2) for load in os.getloadavg()],
        "curves": {c.name: c.curve for c in contestants},
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    figures, rows = _figures(contestants[0].curve, contestants[1].curve)
    columns = [("training CPU minutes (each)" if args.clock == "cpu" else "training minutes (each)"),
               "library NLL", "hand-written NLL", "difference", "steps (library / hand)"]
    path = result_files.write_result("time_to_quality", figures, started=started,
                                     table={"columns": columns, "rows": rows}, details=result,
                                     out_dir=args.out)
    print(f"wrote {path}")
    print("\n| minutes | " + " | ".join(f"{c.name} NLL (steps)" for c in contestants)
          + " | library − hand-written |")
    print("|---" * (len(contestants) + 2) + "|")
    for points in zip(*(c.curve for c in contestants)):
        print(f"| {points[0]['minutes']:g} | " + " | ".join(
            f"{p['test_nll']:.2f} ({p['steps']})" for p in points)
            + f" | {points[0]['test_nll'] - points[1]['test_nll']:+.2f} |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(5, 3.2), constrained_layout=True)
        for contestant in contestants:
            axes.plot([p["minutes"] for p in contestant.curve],
                      [p["test_nll"] for p in contestant.curve], "o-", label=contestant.name)
        axes.set_xlabel(("training CPU minutes" if args.clock == "cpu" else "training minutes")
                        + " (each, taking turns)")
        axes.set_ylabel(f"test NLL (nats, K={args.eval_samples})")
        axes.legend()
        figure.savefig(args.plot, dpi=100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
