"""Pyro's SS-VAE example (``examples/vae/ss_vae_M2.py``, pyro 1.9) re-run as its script trains,
outside this library, for the README's M2 comparison: test accuracy per epoch at 100 labels.

What it keeps from the example: MLPs 784-500-10 (softmax), [784+10]-500-[50, 50] (exp scale)
and [50+10]-500-784 (sigmoid), softplus, hidden layers initialised N(0, 10⁻³); grey images in
[0, 1] as Bernoulli targets and classifier input; the first 50,000 training images split into
labelled (balanced) and unlabelled, the last 10,000 for validation; ``TraceEnum_ELBO`` with
parallel enumeration of y; the auxiliary loss α · Σ −log q(y|x) as a second ``SVI`` on the
same ``pyro.optim.Adam`` (so it also steps, with zero gradients, after every unlabelled
batch); the labelled batch at step 1 of each epoch; lr 4.2·10⁻⁴, β₁ 0.95, batch 200, α 46.
The example's own check rejects 100 labels at batch 200; here the labelled batch simply
holds all 100. Run by hand:

    OMP_NUM_THREADS=1 python benchmarks/pyro_ssvae_reference.py --data-dir ../shared/data \\
        --minutes 35
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam
from torch import nn

from pyro_vae.data import load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as result_files  # noqa: E402  (benchmarks/results.py: the result file)


class _Exp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)


def _mlp(n_in: int, hidden: int, outs: list[int], out_acts: list[nn.Module | None]) -> nn.Module:
    layer = nn.Linear(n_in, hidden)
    layer.weight.data.normal_(0, 0.001)
    layer.bias.data.normal_(0, 0.001)
    heads = nn.ModuleList(nn.Sequential(nn.Linear(hidden, o), *([a] if a else []))
                          for o, a in zip(outs, out_acts))
    return nn.ModuleDict({"body": nn.Sequential(layer, nn.Softplus()), "heads": heads})


def _run(net: nn.Module, *inputs: torch.Tensor) -> list[torch.Tensor]:
    shape = torch.broadcast_shapes(*[t.shape[:-1] for t in inputs])
    h = net["body"](torch.cat([t.expand(*shape, t.shape[-1]) for t in inputs], -1))
    return [head(h) for head in net["heads"]]


class SSVAE(nn.Module):
    def __init__(self, z_dim: int = 50, hidden: int = 500, alpha: float = 46.0):
        super().__init__()
        self.z_dim, self.alpha = z_dim, alpha
        self.encoder_y = _mlp(784, hidden, [10], [nn.Softmax(dim=-1)])
        self.encoder_z = _mlp(794, hidden, [z_dim, z_dim], [None, _Exp()])
        self.decoder = _mlp(z_dim + 10, hidden, [784], [nn.Sigmoid()])

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        b = xs.size(0)
        with pyro.plate("data"):
            zs = pyro.sample("z", dist.Normal(xs.new_zeros(b, self.z_dim),
                                              xs.new_ones(b, self.z_dim)).to_event(1))
            ys = pyro.sample("y", dist.OneHotCategorical(xs.new_ones(b, 10) / 10.0), obs=ys)
            loc = _run(self.decoder, zs, ys)[0]
            pyro.sample("x", dist.Bernoulli(loc, validate_args=False).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(_run(self.encoder_y, xs)[0]))
            loc, scale = _run(self.encoder_z, xs, ys)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def model_classify(self, xs, ys=None):
        pyro.module("ss_vae", self)
        with pyro.plate("data"):
            if ys is not None:
                with pyro.poutine.scale(scale=self.alpha):
                    pyro.sample("y_aux", dist.OneHotCategorical(_run(self.encoder_y, xs)[0]),
                                obs=ys)

    def guide_classify(self, xs, ys=None):
        pass

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float((_run(self.encoder_y, x)[0].argmax(-1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--num-labels", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=35.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    pyro.set_rng_seed(args.seed)
    np.random.seed(args.seed)
    data = load_dataset("mnist", args.data_dir, validation_fraction=0.0)
    x_all, y_all = data.train_x.reshape(len(data.train_x), -1), data.train_y
    x_valid, y_valid = x_all[50000:], y_all[50000:]
    x, y = x_all[:50000], y_all[:50000]
    per_class = args.num_labels // 10
    sup, unsup = [], []
    for c in range(10):
        idx = np.flatnonzero(y.numpy() == c)
        np.random.shuffle(idx)
        sup.extend(idx[:per_class])
        unsup.extend(idx[per_class:])
    x_sup, y_sup = x[sup], torch.nn.functional.one_hot(y[sup], 10).float()
    x_unsup = x[unsup]
    test_x, test_y = data.test_x.reshape(len(data.test_x), -1), data.test_y
    vae = SSVAE()
    optimizer = Adam({"lr": 4.2e-4, "betas": (0.95, 0.999)})
    guide = config_enumerate(vae.guide, "parallel", expand=True)
    losses = [SVI(vae.model, guide, optimizer,
                  loss=TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)),
              SVI(vae.model_classify, vae.guide_classify, optimizer, loss=Trace_ELBO())]
    batch = 200
    sup_batches = -(-len(x_sup) // batch)
    unsup_batches = -(-len(x_unsup) // batch)
    period = int(50000 / args.num_labels)
    rows, trained = [], 0.0
    run_started = result_files.begin()
    print(f"reference SS-VAE, {args.num_labels} labels, seed {args.seed}", flush=True)
    for epoch in range(args.epochs):
        started = time.perf_counter()
        sup_order = torch.randperm(len(x_sup)).split(batch)
        unsup_order = iter(torch.randperm(len(x_unsup)).split(batch))
        done_sup = 0
        for i in range(sup_batches + unsup_batches):
            if i % period == 1 and done_sup < sup_batches:
                idx = sup_order[done_sup]
                done_sup += 1
                for loss in losses:
                    loss.step(x_sup[idx], y_sup[idx])
            else:
                idx = next(unsup_order)
                for loss in losses:
                    loss.step(x_unsup[idx])
        trained += time.perf_counter() - started
        row = {"epoch": epoch + 1, "minutes": round(trained / 60, 2),
               "test_accuracy": vae.accuracy(test_x, test_y),
               "validation_accuracy": vae.accuracy(x_valid, y_valid)}
        rows.append(row)
        print(f"epoch {row['epoch']:3d}  {row['minutes']:6.1f} min  test accuracy "
              f"{row['test_accuracy']:.4f}  validation {row['validation_accuracy']:.4f}",
              flush=True)
        if args.out is not None:
            args.out.write_text(json.dumps(rows, indent=1))
        if trained > args.minutes * 60:
            break
    if rows:
        best = max(rows, key=lambda row: row["validation_accuracy"])
        figures = {"test_accuracy": {"value": round(100 * rows[-1]["test_accuracy"], 2),
                                     "decimals": 2, "unit": "%", "label": "test accuracy, last epoch"},
                   "test_accuracy_at_best_validation": {
                       "value": round(100 * best["test_accuracy"], 2), "decimals": 2, "unit": "%"},
                   "epochs": {"value": rows[-1]["epoch"]}, "minutes": {"value": rows[-1]["minutes"]}}
        path = result_files.write_result("pyro_ssvae_reference", figures, started=run_started,
                                         details={"labels": args.num_labels, "curve": rows})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
