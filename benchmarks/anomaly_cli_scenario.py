"""The anomaly issue's own scenario, run as a user runs it (issue 33).

The issue measured a Fashion-MNIST model of 3 epochs against handwritten characters it kept
hidden (the best default score: 0.868). This script does what a user would, with the command
line in this process: ``pyro-vae train --dataset fashion-mnist --epochs 3`` (the default
recipe, seed 0), then ``pyro-vae anomaly RUN --against mnist file:chars.npz`` with every
default (1,000 images a side, no background model, the transformation classifier trained on
the way). ``chars.npz`` stands in for handwritten characters that no score was tuned on: the
first 3,000 MNIST test digits transposed (rows for columns), of which ``anomaly`` scores its
test split. It records the default verdict's AUROC against each set, the feature score's and
log p(x)'s, the verdict's calibration at α = 0.05, and the times.

    OMP_NUM_THREADS=1 python benchmarks/anomaly_cli_scenario.py --data-dir ../shared/data

About 6 minutes on one thread. Writes benchmarks/results/anomaly_cli_scenario.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.results import begin, write_result  # noqa: E402
from pyro_vae.cli import main as pyro_vae  # noqa: E402

#: The sets the run is scored against, by their names in ``anomaly.json``.
AGAINST = {"mnist": "mnist", "transposed_digits": "file:{chars}"}


def transposed_digits(data_dir: Path, path: Path, count: int = 3000) -> None:
    """The first ``count`` MNIST test digits, transposed, as an ``.npz`` a user would write."""
    raw = gzip.open(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz").read()
    digits = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)
    np.savez(path, x=digits.transpose(0, 2, 1)[:count].copy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default=None, help="result folder (default benchmarks/results)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = begin()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        chars = folder / "chars.npz"
        transposed_digits(Path(args.data_dir), chars)
        clock = time.perf_counter()
        if pyro_vae(["train", "--dataset", "fashion-mnist", "--epochs", "3", "--data-dir",
                     args.data_dir, "--out", str(folder / "run")]) != 0:
            raise SystemExit("training failed")
        train_seconds = time.perf_counter() - clock
        against = {key: name.format(chars=chars) for key, name in AGAINST.items()}
        clock = time.perf_counter()
        if pyro_vae(["anomaly", str(folder / "run"), "--against", *against.values(),
                     "--data-dir", args.data_dir, "--out", str(folder / "anomaly")]) != 0:
            raise SystemExit("anomaly failed")
        anomaly_seconds = time.perf_counter() - clock
        report = json.loads((folder / "anomaly" / "anomaly.json").read_text())
    figures = {key: {score: {"value": round(report["metrics"][name][score]["auroc"], 3),
                             "decimals": 3,
                             "label": f"AUROC of {score}, 3-epoch Fashion-MNIST model vs {key}"}
                     for score in ("fisher", "features", "transformations", "log-likelihood")}
               for key, name in against.items()}
    figures["verdict_false_positive_rate"] = {
        "value": round(report["calibration"]["fisher"]["false_positive_rate"], 3),
        "decimals": 3, "label": "false-positive rate of the default verdict at α = 0.05"}
    table = {"columns": ["score", "against MNIST", "against transposed digits"],
             "rows": [[score, f"{{mnist.{score}}}", f"{{transposed_digits.{score}}}"]
                      for score in ("fisher", "features", "transformations", "log-likelihood")]}
    details = {"train_seconds": round(train_seconds, 1),
               "anomaly_seconds": round(anomaly_seconds, 1),
               "num_images": report["num_images"],
               "num_images_against": {key: report["num_images_against"][name]
                                      for key, name in against.items()},
               "fisher_parts": report["fisher_parts"]}
    path = write_result("anomaly_cli_scenario", figures, started=started, table=table,
                        details=details, out_dir=args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
