"""Burda et al. (2016), Table 1, on a CPU budget: test NLL against training minutes.

The paper trains each row for 3,280 passes with batch 20 and a learning rate of
0.001 · 10^(−i/7) in stage i, which lasts 3^i passes (i = 0, …, 7). This script keeps the
rows' recipes (models/mnist_*_burda.toml: networks, data, objective, K) and that step schedule,
with a stated batch size and a stage length scaled by ``--stage-scale``, and stops a row when
its training time reaches ``--minutes``. It trains through the library's own path: each chunk of
``--chunk-epochs`` passes is ``pyro_vae.train(config, run_dir, resume=True)`` with the stage's
learning rate (the same run continued exactly, as ``pyro-vae train RECIPE --resume --epochs E
--lr R`` does). The budget is CPU time of the training calls (``time.process_time``: one torch
thread, so on a machine shared with other jobs it counts this job's work, not the waiting; it
includes each chunk's resume and end-of-chunk summary, a few seconds), or wall-clock training
time with ``--clock wall``. After every chunk the test log-likelihood of the first ``--eval-points`` test
images is importance-sampled with ``--eval-samples`` (the same images each time, so the curve
is paired); at the end the first ``--final-points`` images are scored with
``--final-samples`` (the paper: all 10,000 with 5,000). Evaluation time is not counted in the
minutes. Run by hand, not in CI, with one torch thread:

    OMP_NUM_THREADS=1 python benchmarks/iwae_curve.py --rows vae iwae_k5 --minutes 30 \\
        --data-dir ../shared/data --plot iwae_curve.png

Writes benchmarks/results/iwae_curve.json (benchmarks/results.py: the figures of each row,
and its curve in ``details``; rows of an earlier measured file are kept) and prints a
table beside the paper's figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pyro_vae.config import Config
from pyro_vae.evaluate import estimate_log_likelihood
from pyro_vae.runs import load_trained
from pyro_vae.training import prepare_data, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from iwae_table1 import PAPER as TABLE1  # noqa: E402  (the paper's rows, written once)
from iwae_table1 import merged_rows, row_figures  # noqa: E402
import results as result_files  # noqa: E402  (benchmarks/results.py: the result file)

ROOT = Path(__file__).resolve().parent.parent
#: Rows of Burda et al. (2016), Table 1, 1 stochastic layer: (recipe, the paper's test NLL).
PAPER = {row: entry for row, entry in TABLE1.items() if "2" not in row}


def stage_schedule(stage_scale: float, base_rate: float, stages: int = 8
                   ) -> list[tuple[int, float]]:
    """(last epoch of stage i, learning rate of stage i) of Burda et al.'s schedule.

    Stage i lasts round(stage_scale · 3^i) passes (at least 1) at base_rate · 10^(−i/7).
    """
    ends, end = [], 0
    for i in range(stages):
        end += max(1, round(stage_scale * 3 ** i))
        ends.append((end, base_rate * 10 ** (-i / 7)))
    return ends


def run_row(row: str, args: argparse.Namespace, out: Path) -> dict:
    recipe, paper_nll = PAPER[row]
    base = Config.from_toml(ROOT / "models" / recipe)
    overrides = {"data": {"data_dir": args.data_dir} if args.data_dir else {},
                 "evaluate": {"num_samples": 1, "latent_map": "pca"}}
    data = prepare_data(base.with_overrides(overrides))
    eval_x = data.test_x[:args.eval_points]
    final_x = data.test_x[:args.final_points]
    run_dir = out / f"{row}-{time.strftime('%Y%m%d-%H%M%S')}"
    schedule = stage_schedule(args.stage_scale, base.train.learning_rate)
    curve, epoch, stage, summary, cpu_seconds = [], 0, 0, {}, 0.0
    while stage < len(schedule):
        stage_end, rate = schedule[stage]
        epoch = min(epoch + args.chunk_epochs, stage_end)
        config = base.with_overrides({**overrides, "train": {
            "epochs": epoch, "learning_rate": rate, "batch_size": args.batch_size}})
        started = time.process_time()
        summary = train(config, run_dir, resume=bool(curve))
        cpu_seconds += time.process_time() - started
        spent = cpu_seconds if args.clock == "cpu" else summary["train_seconds"]
        _, vae, _ = load_trained(run_dir)
        estimate = estimate_log_likelihood(vae, eval_x, args.eval_samples)
        point = {"epoch": epoch, "learning_rate": rate,
                 "minutes": round(spent / 60, 2),
                 "cpu_minutes": round(cpu_seconds / 60, 2),
                 "wall_train_minutes": round(summary["train_seconds"] / 60, 2),
                 "test_nll": -estimate.mean_log_likelihood,
                 "test_nll_stderr": estimate.log_likelihood_stderr,
                 "test_elbo": estimate.mean_elbo, "active_units": summary["active_units"]}
        curve.append(point)
        print(json.dumps({"row": row, **point}), flush=True)
        if spent >= 60 * args.minutes:
            break
        if epoch == stage_end:
            stage += 1
    _, vae, _ = load_trained(run_dir)
    final = estimate_log_likelihood(vae, final_x, args.final_samples)
    return {
        "row": row, "recipe": f"models/{recipe}", "batch_size": args.batch_size,
        "stage_scale": args.stage_scale, "budget_minutes": args.minutes, "clock": args.clock,
        "epochs": epoch, "minutes": curve[-1]["minutes"], "cpu_minutes": curve[-1]["cpu_minutes"],
        "wall_train_minutes": curve[-1]["wall_train_minutes"],
        "learning_rate": curve[-1]["learning_rate"],
        "final_points": len(final_x), "final_samples": args.final_samples,
        "test_nll": -final.mean_log_likelihood, "test_nll_stderr": final.log_likelihood_stderr,
        "test_nll_mc_stderr": final.log_likelihood_mc_stderr, "test_elbo": final.mean_elbo,
        "paper_nll": paper_nll, "gap_to_paper": -final.mean_log_likelihood - paper_nll,
        "eval_points": len(eval_x), "eval_samples": args.eval_samples, "curve": curve,
        "run_dir": str(run_dir),
    }


def plot(entries: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    for entry, color in zip(entries, ("C0", "C1", "C2", "C3", "C4")):
        minutes = [p["minutes"] for p in entry["curve"]]
        nll = [p["test_nll"] for p in entry["curve"]]
        ax.plot(minutes, nll, "o-", color=color, ms=3, label=f"{entry['row']} (ours)")
        ax.axhline(entry["paper_nll"], color=color, ls="--", lw=1,
                   label=f"{entry['row']}, paper (3,280 passes)")
    ax.set_xlabel(f"training minutes ({entries[0]['clock']} time, 1 torch thread)")
    ax.set_ylabel(f"test NLL (nats), first {entries[0]['eval_points']} images, "
                  f"K = {entries[0]['eval_samples']}", fontsize=8)
    ax.set_ylim(top=min(110, max(p["test_nll"] for e in entries for p in e["curve"]) + 1))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", choices=sorted(PAPER), default=["vae", "iwae_k5"])
    parser.add_argument("--minutes", type=float, default=30.0,
                        help="training minutes per row (evaluation not counted)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu: this process's CPU time; wall: the library's training time")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--stage-scale", type=float, default=1.0,
                        help="stage i lasts stage_scale * 3^i passes (the paper: 1, batch 20)")
    parser.add_argument("--chunk-epochs", type=int, default=10,
                        help="passes between two points of the curve (at most)")
    parser.add_argument("--eval-points", type=int, default=500)
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--final-points", type=int, default=10000)
    parser.add_argument("--final-samples", type=int, default=5000)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--plot", default=None, help="write the curves to this PNG")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = result_files.begin()
    entries = []
    for row in args.rows:
        entry = run_row(row, args, out)
        entries.append(entry)
        figures = {e["row"]: {**row_figures(e), "cpu_minutes": {"value": e["cpu_minutes"]},
                              "wall_minutes": {"value": e["wall_train_minutes"]}}
                   for e in entries}
        result_files.write_result("iwae_curve", merged_rows(out, "iwae_curve", figures),
                                  started=started, details=entries, out_dir=out)
        print(f"{row}: test NLL {entry['test_nll']:.2f} ± {entry['test_nll_stderr']:.2f} "
              f"(first {entry['final_points']} test images, K = {entry['final_samples']}) after "
              f"{entry['epochs']} passes, {entry['minutes']} {args.clock} min; paper "
              f"{entry['paper_nll']:.2f}, distance {entry['gap_to_paper']:+.2f}", flush=True)
    if args.plot:
        plot(entries, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
