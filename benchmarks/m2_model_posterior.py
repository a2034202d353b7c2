"""Does a trained M2's generative model tell the digits apart? Reads the state that
``benchmarks/m2_accuracy.py --state`` saved and, on the first ``--images`` test images,
compares the classifier q(y|x) with the model's own posterior under the uniform p(y),
argmax_y ELBO(x, y), and reports the ELBO margin of the true label over the best wrong one.

On unlabelled data M2's objective pulls q(y|x) toward that model posterior
(q ∝ exp ELBO(x, y) maximizes Σ_y q (ELBO(x, y)) + H(q)), so when argmax_y ELBO(x, y) is
no better than q(y|x), more training of the same objective cannot lift q much. Run by hand:

    OMP_NUM_THREADS=1 python benchmarks/m2_model_posterior.py STATE.pt \\
        models/mnist_m2_100.toml --data-dir ../shared/data [--binarize grey]

ELBO(x, y) = E_q(z|x,y)[log p(x|y, z)] − KL(q(z|x, y) ‖ N(0, I)) with ``--draws`` draws of z
(the label prior log p(y) is the same for every y and cancels). Writes
``benchmarks/results/m2_model_posterior.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pyro_vae.config import Config
from pyro_vae.models import build_vae
from pyro_vae.priors import gaussian_kl_to_standard_normal
from pyro_vae.training import prepare_data

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results as result_files  # noqa: E402  (benchmarks/results.py: the result file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("state")
    parser.add_argument("recipe", nargs="?", default="models/mnist_m2_100.toml")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--binarize", choices=("dynamic", "static", "grey"))
    parser.add_argument("--decoder-label", choices=("every_layer", "input"))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--draws", type=int, default=8)
    args = parser.parse_args()
    started = result_files.begin()
    overrides = {"data_dir": args.data_dir, "binarize": args.binarize}
    model = {"decoder_label": args.decoder_label} if args.decoder_label else {}
    config = Config.from_toml(args.recipe).with_overrides(
        {"data": {k: v for k, v in overrides.items() if v is not None}, "model": model})
    torch.manual_seed(0)
    data = prepare_data(config)
    vae = build_vae(config.model, data.image_shape, num_data=len(data.train_x))
    vae.load_state_dict(torch.load(args.state, weights_only=False)["model"])
    vae.eval()
    n = min(args.images, len(data.test_y))
    x, grey, y = data.test_x[:n], data.grey("test")[:n], data.test_y[:n]
    with torch.no_grad():
        guess = vae.classify(grey)
        elbos = []
        for c in range(vae.num_classes):
            label = torch.full((n,), c, dtype=torch.long)
            loc, scale = vae.encoder(x, label)
            kl = gaussian_kl_to_standard_normal(loc, scale).sum(-1)
            z = loc + scale * torch.randn(args.draws, *loc.shape)
            fit = vae.likelihood(vae.decoder(z, label)).log_prob(x).mean(0)
            elbos.append(fit - kl)
        elbo = torch.stack(elbos, -1)
    model_guess = elbo.argmax(-1)
    true = elbo.gather(1, y[:, None]).squeeze(1)
    wrong = elbo.scatter(1, y[:, None], float("-inf")).max(-1).values
    margin = true - wrong
    print(f"{n} test images: q(y|x) accuracy {float((guess == y).float().mean()):.4f}, "
          f"argmax_y ELBO(x, y) accuracy {float((model_guess == y).float().mean()):.4f}, "
          f"the two agree on {float((guess == model_guess).float().mean()):.4f}; "
          f"ELBO(x, true y) − best wrong y: median {float(margin.median()):.2f} nats, "
          f"negative for {float((margin < 0).float().mean()):.4f}")
    share = {"decimals": 4}
    figures = {"classifier_accuracy": {"value": round(float((guess == y).float().mean()), 4), **share},
               "model_posterior_accuracy": {"value": round(float((model_guess == y).float().mean()), 4),
                                            **share},
               "agreement": {"value": round(float((guess == model_guess).float().mean()), 4), **share},
               "median_margin": {"value": round(float(margin.median()), 2), "decimals": 2,
                                 "unit": "nats"},
               "negative_margin_share": {"value": round(float((margin < 0).float().mean()), 4),
                                         **share}}
    path = result_files.write_result("m2_model_posterior", figures, started=started,
                                     details={"images": n, "draws": args.draws})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
