"""Where a CVAE's wrong labels come from: label fidelity of the same decoder fed different z's.

For a trained ``cvae`` run, decodes E[x|z, y] for ``--per-label`` labels of each class with z
drawn in turn from

* the model's own prior (p(z|y), or p(z) for ``prior = "normal"``);
* each class's own aggregate posterior q(z|y): z ~ q(z|x, y) of a random training image x of
  class y (the z's the decoder was trained on with that label);
* the aggregate posterior of all classes: z ~ q(z|x′, y′) of a random training image of any
  class, decoded with the requested label;
* a diagonal Gaussian fitted to each class's q(z|y);
* N(0, I);

and lets the run's fidelity classifier (``label_classifier.pt``, refitted if missing) recognise
them. Also prints how well a logistic regression reads the class from z ~ q(z|x, y). If own-class
posteriors decode right and prior draws do not, the prior and the posteriors disagree (docs,
guide/conditional.md). Writes ``benchmarks/results/fidelity_sources_RUN.json``. Run by hand,
not in CI:

    OMP_NUM_THREADS=1 python benchmarks/fidelity_sources.py RUN --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pyro_vae import fidelity
from pyro_vae.runs import load_trained
from pyro_vae.training import prepare_data

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as result_files  # noqa: E402  (benchmarks/results.py: the result file)


def _probe_accuracy(z: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int = 300) -> float:
    """Held-out accuracy of a softmax regression z ↦ y (the last fifth of the points held out)."""
    cut = len(z) * 4 // 5
    weight = torch.zeros(z.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.05)
    with torch.enable_grad():  # called where the caller scores without gradients
        for _ in range(steps):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(z[:cut] @ weight + bias, y[:cut]).backward()
            optimizer.step()
    with torch.no_grad():
        return float(((z[cut:] @ weight + bias).argmax(1) == y[cut:]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--per-label", type=int, default=300)
    parser.add_argument("--images", type=int, default=20000,
                        help="training images whose posteriors are drawn from")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    started = result_files.begin()
    config, vae, _ = load_trained(args.run_dir)
    if args.data_dir:
        config.data.data_dir = args.data_dir
    data = prepare_data(config, check=False)
    path = Path(args.run_dir) / fidelity.CLASSIFIER_FILE
    classifier = fidelity.load_label_classifier(path) if path.exists() else \
        fidelity.fit_label_classifier(data.train_x, data.train_y, vae.num_classes, data.test_x,
                                      data.test_y, seed=config.train.seed)
    n = min(args.images, len(data.train_x))
    x = data.train_x[:n].reshape(n, -1).float()
    if config.binarization != "none":
        x = torch.bernoulli(x)
    y = data.train_y[:n].long()
    classes = vae.num_classes
    labels = torch.arange(classes).repeat_interleave(args.per_label)

    with torch.no_grad():
        posterior = vae.posterior(x, y)
        loc, scale = posterior.base_dist.loc, posterior.base_dist.scale
        z = loc + scale * torch.randn_like(scale)

        def own_class_rows() -> torch.Tensor:
            return torch.cat([torch.nonzero(y == c).squeeze(1)[
                torch.randint(int((y == c).sum()), (args.per_label,))] for c in range(classes)])

        own = own_class_rows()
        anyone = torch.randint(n, (len(labels),))
        mean = torch.stack([loc[y == c].mean(0) for c in range(classes)])
        spread = torch.stack([(loc[y == c].var(0) + scale[y == c].pow(2).mean(0)).sqrt()
                              for c in range(classes)])
        sources = {
            "the model's prior": vae.latent_prior(labels, "cpu").sample(),
            "own class's aggregate posterior q(z|y)": z[own],
            "any class's aggregate posterior": z[anyone],
            "diagonal Gaussian fitted to q(z|y)": mean[labels] + spread[labels]
            * torch.randn(len(labels), z.shape[1]),
            "N(0, I)": torch.randn(len(labels), z.shape[1]),
        }
        probe = _probe_accuracy(z, y, classes)
        print(f"{args.run_dir}: classifier test accuracy "
              f"{100 * (classifier.test_accuracy or float('nan')):.1f} %; a logistic regression "
              f"reads y from z ~ q(z|x, y) at {100 * probe:.1f} % "
              f"(chance {100 / classes:.0f} %)")
        figures = {"classifier_test_accuracy": {
                       "value": round(100 * (classifier.test_accuracy or float("nan")), 1),
                       "decimals": 1, "unit": "%"},
                   "probe_accuracy": {"value": round(100 * probe, 1), "decimals": 1, "unit": "%",
                                      "label": "logistic regression reading y from z ~ q(z|x, y)"}}
        for name, draws in sources.items():
            means = vae.likelihood.mean(vae.decoder(draws, labels))
            share = float((classifier.predict(means) == labels).float().mean())
            error = (share * (1 - share) / len(labels)) ** 0.5
            print(f"  z from {name}: {100 * share:.1f} ± {100 * error:.1f} % recognised as y")
            figures[name] = {"value": round(100 * share, 1), "stderr": round(100 * error, 1),
                             "decimals": 1, "unit": "%", "label": f"z from {name}"}
    path = result_files.write_result(f"fidelity_sources_{Path(args.run_dir).name}", figures,
                                     started=started, details={"run_dir": str(args.run_dir)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
