"""Experiment loggers: TensorBoard and MLflow, as callbacks on the training loop.

A logger is a :class:`~pyro_vae.training.Progress`: the loop hands it the model and fixed
monitoring images once (``watch``) and each epoch's row of ``metrics.jsonl`` (``end_epoch``);
the command that started the run calls :meth:`Logger.finish` with the test summary, or
:meth:`Logger.close` if training stopped early. Nothing here knows which kind of model is
trained: pictures come from the model's own ``sample`` and ``reconstruct`` (a model that cannot
draw from nothing raises ``NotImplementedError`` and gets no pictures).

Each epoch ``e`` is logged at step ``e``:

* scalars ``elbo/train``, ``elbo/validation``, ``kl/total``, ``kl/dim_JJ`` (KL per latent
  dimension, where the prior splits over dimensions), ``active_units``, ``learning_rate``,
  ``kl_weight`` and ``time/step_seconds`` (mean wall time of the epoch's training steps);
* images ``samples`` (E[x|z], the same 64 z ~ p(z) each epoch) and ``reconstructions`` (the first
  monitoring images, then their reconstructions).

TensorBoard writes event files to ``RUN_DIR/tensorboard`` (``tensorboard --logdir runs``) and,
at the end, the hyperparameters with the test scores (HParams tab). MLflow logs to
``$MLFLOW_TRACKING_URI``, else the local file store ``./mlruns`` (``mlflow ui``), under the
experiment ``$MLFLOW_EXPERIMENT_NAME`` (else ``pyro-vae``): the recipe as parameters, the same
metrics, the test scores, and the run directory's pictures, summary, config and metrics as
artifacts. Both need their optional extra: ``pip install "pyro-vae[tensorboard]"`` or
``"pyro-vae[mlflow]"``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from pyro_vae.config import Config
from pyro_vae.data import is_vector_shape
from pyro_vae.errors import ConfigError
from pyro_vae.plots import image_grid
from pyro_vae.runs import write_json
from pyro_vae.training import Progress

LOGGERS = ("tensorboard", "mlflow")
NUM_SAMPLES, NUM_RECONSTRUCTIONS = 64, 8
#: Where an MLflow logger remembers its MLflow run, so that ``--resume`` continues it.
MLFLOW_RUN_FILE = "mlflow_run.json"


def _require(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"--logger {extra} needs the {module} package, which is not "
                          f"installed; install it with: pip install \"pyro-vae[{extra}]\"")


def flat_config(config: Config) -> dict[str, Any]:
    """``{"train.epochs": 10, ...}``: every recipe key (lists as text, absent keys left out)."""
    return {f"{section}.{key}": (str(value) if isinstance(value, (list, tuple)) else value)
            for section, values in config.to_dict().items()
            for key, value in values.items() if value is not None}


def epoch_scalars(row: dict[str, Any], step_seconds: float | None) -> dict[str, float]:
    """The numbers logged for one epoch's row of ``metrics.jsonl`` (missing ones left out)."""
    names = {"train_elbo": "elbo/train", "validation_elbo": "elbo/validation", "kl": "kl/total",
             "active_units": "active_units", "learning_rate": "learning_rate",
             "kl_weight": "kl_weight"}
    scalars = {name: float(row[key]) for key, name in names.items() if row.get(key) is not None}
    for j, value in enumerate(row.get("kl_per_dim") or []):
        scalars[f"kl/dim_{j:02d}"] = float(value)
    if step_seconds is not None:
        scalars["time/step_seconds"] = step_seconds
    return scalars


class Logger(Progress):
    """Common part: step timing and the pictures of the model being trained."""

    def __init__(self, config: Config, run_dir: Path, resume: bool = False) -> None:
        self.config, self.run_dir, self.resume = config, Path(run_dir), resume
        self.vae: torch.nn.Module | None = None
        self._watched: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._image_shape: tuple[int, int, int] | None = None
        self._draws_images = True
        self._epoch_started = self._last_step = 0.0
        self._steps = 0
        self._first_epoch: int | None = None

    def start_epochs(self, first: int, last: int) -> None:
        self._first_epoch = first

    def end_epoch(self, metrics: dict[str, Any]) -> None:
        if self._first_epoch is not None:
            # Opened once the first epoch's checkpoint is written: a run stopped before that
            # leaves its folder empty, to be started again with the same --out.
            self.open(self._first_epoch)
            self._first_epoch = None
        self.log_epoch(metrics)

    def open(self, first: int) -> None:
        """Start logging a run whose epochs ``first + 1, ...`` are being trained."""

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        """Log one epoch's row of ``metrics.jsonl``."""

    def watch(self, vae: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None,
              image_shape: tuple[int, int, int]) -> None:
        self.vae, self._image_shape = vae, image_shape
        self._watched = x[:NUM_RECONSTRUCTIONS], None if y is None else y[:NUM_RECONSTRUCTIONS]

    def start_epoch(self, epoch: int, num_batches: int) -> None:
        self._epoch_started = self._last_step = time.perf_counter()
        self._steps = 0

    def step(self, loss: float) -> None:
        self._steps += 1
        self._last_step = time.perf_counter()

    def _step_seconds(self) -> float | None:
        return (self._last_step - self._epoch_started) / self._steps if self._steps else None

    @torch.no_grad()
    def pictures(self) -> dict[str, Any]:
        """``{"samples": grid, "reconstructions": grid}`` as ``[H, W]`` or ``[H, W, C]`` arrays
        in [0, 1] (empty for vector data and for a model that cannot draw images from nothing). Drawn with a fixed
        seed in a forked random state: logging never changes the training run."""
        if self.vae is None or self._watched is None or not self._draws_images \
                or is_vector_shape(self._image_shape):  # vectors are no pictures
            return {}
        x, y = self._watched
        was_training = self.vae.training
        self.vae.eval()
        devices = [x.device] if x.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(0)
                samples = self.vae.sample(NUM_SAMPLES, device=x.device)
                conditional = getattr(self.vae, "conditional", False) and y is not None
                recon = self.vae.reconstruct(x, y) if conditional else self.vae.reconstruct(x)
        except NotImplementedError:  # the model does not draw images from nothing
            self._draws_images = False
            return {}
        finally:
            self.vae.train(was_training)
        shape = self._image_shape
        return {"samples": image_grid(samples, shape, 8),
                "reconstructions": image_grid(torch.cat([x, recon]), shape, len(x))}

    def finish(self, summary: dict[str, Any]) -> None:
        """The run ended well: log its test scores and close."""

    def close(self, status: str = "FAILED") -> None:
        """The run stopped early (``FAILED`` or ``KILLED``): close what is open."""


class TensorBoardLogger(Logger):
    """Event files in ``RUN_DIR/tensorboard`` with :class:`torch.utils.tensorboard.SummaryWriter`."""

    def __init__(self, config: Config, run_dir: Path, resume: bool = False) -> None:
        _require("tensorboard", "tensorboard")
        super().__init__(config, run_dir, resume)
        self.writer: Any = None

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "tensorboard"

    def open(self, first: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=first + 1)
        if first == 0:
            self.writer.add_text("config", "```\n" + self.config.to_toml() + "\n```", 0)

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        epoch = metrics["epoch"]
        for name, value in epoch_scalars(metrics, self._step_seconds()).items():
            self.writer.add_scalar(name, value, epoch)
        for name, grid in self.pictures().items():
            self.writer.add_image(name, grid, epoch, dataformats="HW" if grid.ndim == 2 else "HWC")
        self.writer.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        if self.writer is None:
            return
        scores = {f"test/{key.removeprefix('test_')}": float(value) for key, value in summary.items()
                  if key.startswith("test_") and isinstance(value, (int, float))
                  and not isinstance(value, bool)}
        self.writer.add_hparams(flat_config(self.config), scores, run_name="hparams")
        self.close()

    def close(self, status: str = "FAILED") -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MLflowLogger(Logger):
    """Params, per-epoch metrics and artifacts in an MLflow tracking store (default ``./mlruns``)."""

    def __init__(self, config: Config, run_dir: Path, resume: bool = False) -> None:
        _require("mlflow", "mlflow")
        super().__init__(config, run_dir, resume)
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").resolve().as_uri()
        if self.uri.startswith("file:"):
            # MLflow 3 keeps the file store in maintenance mode behind this switch; a local
            # folder is what a laptop or a course needs (point MLFLOW_TRACKING_URI elsewhere).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "pyro-vae")
        self.client: Any = None
        self.run_id: str | None = None
        self._check_store()

    def _check_store(self) -> None:
        """Reach the tracking store once, before training: a wrong ``MLFLOW_TRACKING_URI`` is
        refused in one paragraph now, not after the first epoch as a traceback (after minutes
        of MLflow's retries)."""
        from mlflow.tracking import MlflowClient

        with _environment(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10"):
            try:
                MlflowClient(self.uri).search_experiments(max_results=1)
            except Exception as error:  # MLflow's, requests', SQLAlchemy's, a missing driver
                reason = (str(error).strip().splitlines() or [""])[0]
                reason = reason if len(reason) <= 160 else reason[:160] + "…"
                raise ConfigError(
                    f"--logger mlflow cannot use the tracking store {self.uri} "
                    f"({type(error).__name__}: {reason}). Start the tracking server, or point "
                    "MLFLOW_TRACKING_URI at one that runs (unset, runs are logged to ./mlruns); "
                    "nothing was trained.") from None

    def open(self, first: int) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(self.uri)
        saved = self.run_dir / MLFLOW_RUN_FILE
        if self.resume and saved.is_file():  # continue the MLflow run of this run directory
            self.run_id = json.loads(saved.read_text())["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else \
            self.client.create_experiment(self.experiment)
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name,
                                     tags={"pyro_vae.run_dir": str(self.run_dir.resolve())})
        self.run_id = run.info.run_id
        write_json(saved, {"tracking_uri": self.uri, "run_id": self.run_id})
        params = [Param(key, str(value)) for key, value in flat_config(self.config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[start: start + 100])

    def log_epoch(self, metrics: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        epoch = metrics["epoch"]
        self.client.log_batch(self.run_id, metrics=[
            Metric(name.replace("/", "_"), value, now, epoch)
            for name, value in epoch_scalars(metrics, self._step_seconds()).items()])

    def finish(self, summary: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        if self.run_id is None:
            return
        now, step = int(time.time() * 1000), int(summary.get("epochs", 0))
        self.client.log_batch(self.run_id, metrics=[
            Metric(key, float(value), now, step) for key, value in summary.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)])
        for path in sorted(self.run_dir.iterdir()):
            if path.suffix in (".png", ".json", ".toml", ".jsonl") and path.name != MLFLOW_RUN_FILE:
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status="FINISHED")
        self.run_id = None

    def close(self, status: str = "FAILED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)
            self.run_id = None


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Environment variables set for the duration of a block, and restored after it."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def make_loggers(names: list[str], config: Config, run_dir: Path,
                 resume: bool = False) -> list[Logger]:
    """The loggers named (``tensorboard``, ``mlflow``), each checked to be installed."""
    classes = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}
    return [classes[name](config, run_dir, resume) for name in dict.fromkeys(names)]
