"""M2's test accuracy against training steps, epochs and minutes, for the README's M2 table.

Trains the recipe's M2 through the library's own pieces, as ``pyro-vae train`` does (the
data preparation, the output-bias start, ``prepare_labelled``'s labelled subset and
``TraceEnum_ELBO``, ``ObjectiveModule`` and the epoch function of the configured
``[train] m2_schedule``), and every ``--eval-every`` unlabelled steps measures the test accuracy
of argmax q(y|x) on the 10,000 test images (evaluation time not counted). Stops after
``--epochs`` or ``--minutes`` of training, whichever comes first. Run by hand, not in CI:

    OMP_NUM_THREADS=1 python benchmarks/m2_accuracy.py models/mnist_m2_100.toml \\
        --data-dir ../shared/data --minutes 20

Prints one line per evaluation, writes the curve as JSON (``--out``) and the last figures to
``benchmarks/results/m2_accuracy.json`` (``--result-name`` for a variant).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path

import pyro
import torch

from pyro_vae.config import Config
from pyro_vae.data import binarize
from pyro_vae.models import build_vae
from pyro_vae.objectives import ObjectiveModule, make_objective
from pyro_vae.protocol import Epoch, hooks
from pyro_vae.training import LearningRateDecay, _run_steps, prepare_data

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as result_files  # noqa: E402  (benchmarks/results.py: the result file)


class _OutOfTime(Exception):
    pass


class _Curve:
    """The epoch functions' progress hook: evaluates every ``every`` steps, stops at the limit."""

    def __init__(self, vae, test_x, test_y, every: int, seconds: float, epoch_steps: int,
                 max_steps: int):
        self.vae, self.test_x, self.test_y = vae, test_x, test_y
        self.every, self.seconds, self.epoch_steps = every, seconds, epoch_steps
        self.max_steps = max_steps  # --epochs, counted over the whole curve (resumes included)
        self.steps, self.trained, self.rows = 0, 0.0, []
        self.started = time.perf_counter()

    def step(self, value: float) -> None:
        self.steps += 1
        if self.steps % self.every == 0 or self.steps >= self.max_steps:
            self.evaluate(value)

    def evaluate(self, value: float) -> None:
        self.trained += time.perf_counter() - self.started
        self.vae.eval()
        accuracy = float((self.vae.classify(self.test_x) == self.test_y).float().mean())
        self.vae.train()
        row = {"steps": self.steps, "epochs": round(self.steps / self.epoch_steps, 3),
               "minutes": round(self.trained / 60, 2), "test_accuracy": accuracy,
               "stderr": math.sqrt(accuracy * (1 - accuracy) / len(self.test_y)),
               "train_elbo": value}
        self.rows.append(row)
        print(f"epoch {row['epochs']:6.2f}  {row['minutes']:6.1f} min  test accuracy "
              f"{accuracy:.4f} ± {row['stderr']:.4f}  ELBO/point {value:.1f}", flush=True)
        self.started = time.perf_counter()
        if self.trained > self.seconds or self.steps >= self.max_steps:
            raise _OutOfTime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="models/mnist_m2_100.toml")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--num-labels", type=int)
    parser.add_argument("--schedule", choices=("paired", "interleaved"))
    parser.add_argument("--labelled-every", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--beta1", type=float, help="Adam's beta1 ([train] adam_beta1)")
    parser.add_argument("--binarize", choices=("dynamic", "static", "grey"),
                        help="[data] binarize; grey: grey levels as Bernoulli targets (Pyro)")
    parser.add_argument("--aux-loss-weight", type=float)
    parser.add_argument("--beta", type=float, help="[train] beta, the KL weight on z")
    parser.add_argument("--decoder-label", choices=("every_layer", "input"),
                        help="[model] decoder_label")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--epochs", type=float, default=None,
                        help="epochs of the whole curve, a resumed one included (fractions "
                             "allowed; default: the recipe's [train] epochs)")
    parser.add_argument("--lr-decay-epochs", type=int, help="[train] lr_decay_epochs")
    parser.add_argument("--lr-decay-to", type=float, help="[train] lr_decay_to")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--eval-every", type=int, default=100, help="unlabelled steps")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--result-name", default="m2_accuracy",
                        help="the result file benchmarks/results/NAME.json (name variants apart)")
    parser.add_argument("--state", type=Path, default=None,
                        help="save the training state here at the end; resume from it if it "
                             "exists (the curve continues)")
    args = parser.parse_args()
    started = result_files.begin()

    overrides = {"model": {"decoder_label": args.decoder_label},
                 "data": {"data_dir": args.data_dir, "num_labels": args.num_labels,
                          "binarize": args.binarize},
                 "train": {"m2_schedule": args.schedule, "labelled_every": args.labelled_every,
                           "learning_rate": args.lr, "adam_beta1": args.beta1,
                           "aux_loss_weight": args.aux_loss_weight, "beta": args.beta,
                           "lr_decay_epochs": args.lr_decay_epochs,
                           "lr_decay_to": args.lr_decay_to,
                           "seed": args.seed}}
    overrides = {section: {k: v for k, v in values.items() if v is not None}
                 for section, values in overrides.items()}
    config = Config.from_toml(args.recipe).with_overrides(overrides)
    if args.epochs is None:
        args.epochs = config.train.epochs
    # The library's learning-rate schedule, over the curve's epochs.
    decay = LearningRateDecay(math.ceil(args.epochs), config.train.lr_decay_epochs,
                              config.train.lr_decay_to)
    torch.manual_seed(config.train.seed)
    pyro.set_rng_seed(config.train.seed)
    data = prepare_data(config)
    vae = build_vae(config.model, data.image_shape, num_data=len(data.train_x))
    vae.start_output_bias(data.train_x)
    kind = hooks(config)  # the m2 kind's own data preparation and epoch steps
    objective, state = kind.prepare(config, data, vae, make_objective(config.train.objective))
    labelled, unlabelled = state[0], state[1]
    module = ObjectiveModule(vae, objective)
    optimizer = torch.optim.Adam(module.parameters(), lr=config.train.learning_rate,
                                 betas=(config.train.adam_beta1, 0.999))
    batch = config.train.batch_size
    epoch_steps = math.ceil(len(unlabelled) / batch)
    curve = _Curve(vae, data.grey("test"), data.test_y, args.eval_every, args.minutes * 60,
                   epoch_steps, round(args.epochs * epoch_steps))
    kind = config.model.options_of("kind")
    print(f"{config.data.num_labels} labels, schedule {kind['m2_schedule']} "
          f"(labelled_every {kind['labelled_every']}), lr {config.train.learning_rate}, "
          f"beta1 {config.train.adam_beta1}, binarize {config.binarization}, "
          f"alpha {kind['aux_loss_weight']}, batch {batch}, seed {config.train.seed}, "
          f"lr decay over the last {config.train.lr_decay_epochs} of {args.epochs:g} epochs "
          f"to {config.train.lr_decay_to:g}",
          flush=True)

    class _Flat:
        def weight(self, step: int) -> float:
            return config.train.beta

    def _stop(signum, frame):  # SIGTERM: stop as at the time limit (the state is saved)
        raise _OutOfTime

    signal.signal(signal.SIGTERM, _stop)
    step, epoch = 0, 0
    if args.state is not None and args.state.exists():
        saved = torch.load(args.state, weights_only=False)
        vae.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        step, epoch, curve.rows = saved["step"], saved["epoch"], saved["curve"]
        curve.steps = saved["curve_steps"]
        curve.trained = curve.rows[-1]["minutes"] * 60 if curve.rows else 0.0
        curve.seconds += curve.trained
        torch.set_rng_state(saved["rng"])
        print(f"resumed at epoch {curve.steps / curve.epoch_steps:.2f}", flush=True)
    try:
        with pyro.validation_enabled(False):
            while curve.steps < curve.max_steps:  # a resumed run counts the curve's epochs
                # A resumed run restarts the interrupted epoch's data order (close enough here).
                decay.set_rate(optimizer, round(curve.steps / curve.epoch_steps),
                               config.train.learning_rate)
                x = binarize(data.train_x) if config.binarization == "dynamic" else data.train_x
                steps = kind.batches(Epoch(module, x, None, data, batch, state))
                _, step = _run_steps(module, optimizer, steps, _Flat(), step, curve)
                epoch += 1
    except _OutOfTime:
        pass
    if args.state is not None:
        torch.save({"model": vae.state_dict(), "optimizer": optimizer.state_dict(),
                    "step": step, "epoch": epoch, "curve": curve.rows,
                    "curve_steps": curve.steps, "rng": torch.get_rng_state()}, args.state)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"config": config.to_dict() if hasattr(config, "to_dict")
                                        else str(config), "curve": curve.rows}, indent=1))
    if curve.rows:
        last = curve.rows[-1]
        figures = {"test_accuracy": {"value": round(100 * last["test_accuracy"], 2),
                                     "stderr": round(100 * last["stderr"], 2), "decimals": 2,
                                     "unit": "%", "label": f"test accuracy of argmax q(y|x), "
                                     f"{config.data.num_labels} labels"},
                   "epochs": {"value": last["epochs"]}, "minutes": {"value": last["minutes"]}}
        path = result_files.write_result(args.result_name, figures, started=started,
                                         details={"curve": curve.rows})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
