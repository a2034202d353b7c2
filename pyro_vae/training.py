"""The training loop: an objective module, a torch optimizer, checkpoints and resume.

One step is ``loss = ObjectiveModule(vae, elbo)(x_batch)``, ``loss.backward()``,
``optimizer.step()``: the Pyro objective supplies a differentiable surrogate loss and a plain
``torch.optim.Adam`` (fused where torch has the kernel: ``pyro_vae.steps.adam``) updates the
VAE's parameters (the same tensors ``pyro.module`` registers).

After every epoch the loop writes ``metrics.jsonl`` and an atomic ``checkpoint.pt`` holding
everything needed to continue bit-for-bit: weights, optimizer state, the param store, every RNG
state, the epoch and step counters and the metric history. At the end it scores the test split
(ELBO and importance-sampled log p(x)), writes ``summary.json`` and the pictures.

The loop is :class:`Trainer`, whose stages read one at a time: setting up (the constructor),
:meth:`Trainer.train_epoch` (or :meth:`Trainer.recover` from a non-finite step),
:meth:`Trainer.end_epoch`, :meth:`Trainer.save_epoch`, and :meth:`Trainer.finish`.
"""

from __future__ import annotations

import copy
import functools
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import pyro
import torch

from pyro_vae import distributed
from pyro_vae.config import Config
from pyro_vae.config.train import TrainConfig
from pyro_vae.data import (ImageData, binarize, binarize_fixed, check_splits_for_binarization,
                           load_dataset, minibatches)
from pyro_vae.distributed import ProcessGroup
from pyro_vae.errors import CheckpointError, ConfigError
from pyro_vae.evaluate import estimate_log_likelihood, latent_activity
from pyro_vae.faults import check_training_memory, nonfinite_loss_error
from pyro_vae.likelihoods import build_likelihood
from pyro_vae.model_checks import check_given_model
from pyro_vae.models import VAE, build_vae
from pyro_vae.objectives import ObjectiveModule, make_objective
from pyro_vae.plots.vae import default_pictures
from pyro_vae.progress import Progress, TqdmProgress
from pyro_vae.protocol import Epoch, display_name, has, hooks
from pyro_vae.steps import NonFiniteStep, adam, optimizer_step
from pyro_vae.registry import OBJECTIVES, PRIORS, BuildContext
from pyro_vae.runs import (CHECKPOINT, CONFIG, CONFIG_HEADER, MODEL_TABLES, SUMMARY, RunLock,
                           atomic_write_text, load_checkpoint, load_state, make_run_dir,
                           remove_stray_temporary_files, rng_state, run_files, save_checkpoint,
                           saved_config, set_rng_state, unsaved_start, write_json, write_metrics)
from pyro_vae.scoring import first_test_images, plan_final_scoring
from pyro_vae.shifts import shifted
from pyro_vae.summary import model_labels, split_scores

#: How many times ``on_nan = "rollback"`` steps back before giving up.
MAX_ROLLBACKS = 3
MONITOR_POINTS = 1000
#: The smallest KL weight a warm-up starts from (a positive float; Pyro needs scale > 0).
MIN_KL_WEIGHT = 1e-300
#: A total KL(q(z|x) ‖ p(z)) below this many nats per datapoint means the code carries nothing.
COLLAPSE_KL = 0.01


@dataclass
class KLSchedule:
    """KL weight β·min(1, (step + 1) / warmup_steps): linear annealing up to β.

    Annealing the KL term from near 0 follows Bowman et al. (2016). The first step already has
    a small positive weight because Pyro's ``poutine.scale`` requires a positive scale.
    """

    beta: float = 1.0
    warmup_steps: int = 0

    def weight(self, step: int) -> float:
        if self.warmup_steps <= 0:
            return self.beta
        # Never 0 (poutine.scale refuses it), even where β/warm-up steps underflows.
        return max(self.beta * min(1.0, (step + 1) / self.warmup_steps), MIN_KL_WEIGHT)


@dataclass
class LearningRateDecay:
    """The learning rate of each epoch: constant, then a half cosine over the last epochs.

    With D = min(``decay_epochs``, ``epochs``) and the decay starting at epoch s = epochs − D,
    epoch e (counted from 0) runs at ``base`` · f(e) where f(e) = 1 for e < s and

        f(e) = to + (1 − to) · (1 + cos(π · (e − s + 1) / D)) / 2

    otherwise, so the last epoch runs at ``to`` · base: the cosine shape of Loshchilov & Hutter
    (2017, SGDR), taken once at the end, where a constant-rate run's parameters keep jumping
    around a good point. A function of the epoch number alone, so resume continues it exactly.
    """

    epochs: int
    decay_epochs: int = 0
    to: float = 0.01

    @property
    def active(self) -> bool:
        return self.decay_epochs > 0 and self.to < 1.0

    def factor(self, epoch: int) -> float:
        span = min(self.decay_epochs, self.epochs)
        start = self.epochs - span
        if not self.active or epoch < start:
            return 1.0
        progress = min(1.0, (epoch - start + 1) / span)
        return self.to + (1.0 - self.to) * (1.0 + math.cos(math.pi * progress)) / 2.0

    def set_rate(self, optimizer: torch.optim.Optimizer, epoch: int, base: float) -> None:
        """Give every parameter group ``base`` · f(``epoch``) (nothing when inactive)."""
        if self.active:
            _set_learning_rate(optimizer, base * self.factor(epoch))


def budget_as_finished(train: TrainConfig, finished: int) -> dict[str, Any]:
    """``[train]`` overrides for a model trained to match a run set to ``train.epochs`` epochs
    that stopped after ``finished``: as many epochs, the KL warm-up the run had (``"auto"``
    resolved against its planned budget), and the learning-rate decay it had reached — none
    when it stopped before the decay began; otherwise a decay over the epochs it ran, ending at
    the factor its last epoch ran at (the half cosine compressed onto those epochs)."""
    overrides: dict[str, Any] = {"epochs": finished,
                                 "kl_warmup_epochs": train.warmup_epochs()}
    decay = LearningRateDecay(train.epochs, train.lr_decay_epochs, train.lr_decay_to)
    if decay.active:
        start = train.epochs - min(decay.decay_epochs, train.epochs)
        overrides["lr_decay_epochs"] = max(0, finished - start)
        if finished > start:
            overrides["lr_decay_to"] = decay.factor(finished - 1)
    return overrides


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("[train] device = \"cuda\" was asked for, but torch sees no CUDA GPU "
                          "here; use --device cpu, or install a CUDA build of torch.")
    return torch.device(name)


def prepare_data(config: Config, device: torch.device | str = "cpu",
                 check: bool = True, shift: str | None = None) -> ImageData:
    """Load the dataset, binarize it as configured, check it fits the likelihood, move it.
    ``shift`` (a name of :data:`pyro_vae.shifts.SHIFTS`) replaces the grey test images by
    their shifted copies before they are binarized as the run's are."""
    data = load_dataset(config.data.dataset, config.data.data_dir,
                        config.data.validation_fraction, config.data.download)
    if shift is not None:
        data = replace(data, test_x=shifted(shift, data.test_x, data.image_shape))
    binarization = config.binarization
    source = f"dataset {config.data.dataset!r}"
    if binarization != "none":  # ranges are checked before any transform
        check_splits_for_binarization(data, source, binarization)
    if binarization == "dynamic":
        data = binarize_fixed(data, ("validation", "test"))
    elif binarization == "static":
        data = binarize_fixed(data, ("train", "validation", "test"))
    if check:
        likelihood = build_likelihood(config.model, BuildContext(tuple(data.image_shape)))
        if binarization not in ("dynamic", "grey"):  # dynamic: drawn per epoch from [0, 1]
            likelihood.check_data(data.train_x, f"{source} (train split)")
        if binarization != "grey":  # grey: Bernoulli targets in [0, 1], checked above
            likelihood.check_data(data.test_x, f"{source} (test split)")
    return data.to(device)


#: One step of an epoch: returns (loss to minimize, the batch shown if it goes non-finite,
#: the step's weight in the epoch's mean training objective).
StepLoss = Callable[[], tuple[torch.Tensor, torch.Tensor, int]]


def minibatch_steps(epoch: Epoch) -> Iterator[StepLoss]:
    """The default ``batches`` hook: the minibatches of one pass over ``epoch.x`` (with its
    labels, for a kind that takes them), each weighing its size.

    In a process group each process computes its share of every minibatch through
    ``epoch.forward`` (the ``DistributedDataParallel`` wrapper of the objective module); see
    :mod:`pyro_vae.distributed`.
    """
    x, labels, group = epoch.x, epoch.labels, epoch.group
    for indices in minibatches(len(x), epoch.batch_size, x.device):
        local, offset = (indices, 0) if group is None else group.shard(indices)

        def step(indices: torch.Tensor = indices, local: torch.Tensor = local,
                 offset: int = offset) -> tuple[torch.Tensor, torch.Tensor, int]:
            batch = x[local]
            with distributed.sharded_noise(group, len(indices), offset):
                loss = epoch.forward(batch) if labels is None else \
                    epoch.forward(batch, labels[local])
            if group is not None:
                loss = loss * group.loss_weight(len(local), len(indices))
            return loss, batch, len(indices)

        yield step


def _run_steps(module: ObjectiveModule, optimizer: torch.optim.Optimizer,
               steps: Iterator[StepLoss], schedule: KLSchedule, step: int, progress: Progress,
               group: ProcessGroup | None = None) -> tuple[float, int]:
    """Take the optimizer steps of one epoch (from a kind's ``batches`` hook); returns (mean
    training objective per datapoint, new step).

    A step whose loss or gradient is not finite raises :class:`NonFiniteStep` *before* the
    optimizer applies it, so the parameters stay those of the last good step.
    """
    vae = module.vae
    parameters = list(module.parameters())
    total, count = 0.0, 0
    for step_loss in steps:
        vae.kl_weight = schedule.weight(step)
        if hasattr(module.objective, "at_step"):  # e.g. a relaxation's temperature schedule
            module.objective.at_step(step)
        loss, batch, weight = step_loss()
        value = optimizer_step(loss, optimizer, parameters, batch, step, group)
        step += 1
        # The loss is N/B times the batch's summed negative ELBO: divide by N for nats/point.
        total += value / vae.num_data * weight
        count += weight
        progress.step(-value / vae.num_data)
    return -total / count, step


def _train_epoch(module: ObjectiveModule, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                 batch_size: int, schedule: KLSchedule, step: int,
                 progress: Progress, labels: torch.Tensor | None = None,
                 group: ProcessGroup | None = None,
                 forward: torch.nn.Module | None = None) -> tuple[float, int]:
    """One pass over ``x`` in minibatches (:func:`minibatch_steps`); returns (mean training
    objective per datapoint, new step)."""
    epoch = Epoch(forward or module, x, labels, None, batch_size, None, group)
    return _run_steps(module, optimizer, minibatch_steps(epoch), schedule, step, progress,
                      group)


def _set_learning_rate(optimizer: torch.optim.Optimizer, rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = rate


def _roll_back(vae: VAE, optimizer: torch.optim.Optimizer, checkpoint_path: Path | None,
               initial: tuple[dict, dict] | None) -> None:
    """Restore the last good weights and optimizer state and halve the learning rate."""
    rate = optimizer.param_groups[0]["lr"] / 2
    if checkpoint_path is not None:
        saved = load_checkpoint(checkpoint_path)
        model_state, optimizer_state = saved["model"], saved["optimizer"]
    else:
        model_state, optimizer_state = copy.deepcopy(initial)
    vae.load_state_dict(model_state)
    optimizer.load_state_dict(optimizer_state)
    _set_learning_rate(optimizer, rate)


def _validation_elbo(vae: VAE, x: torch.Tensor, max_chunk: int,
                     y: torch.Tensor | None = None) -> float | None:
    if len(x) == 0:
        return None
    return estimate_log_likelihood(vae, x, num_samples=1, max_chunk=max_chunk, y=y).mean_elbo


def _initialize_pseudo_inputs(vae: VAE, data: ImageData) -> None:
    components = len(vae.prior.pseudo_inputs)
    if components > len(data.train_x):
        raise ConfigError(f"[prior] components = {components} pseudo-inputs start at "
                          f"training images, but there are only {len(data.train_x)}; use at "
                          f"most {len(data.train_x)}.")
    vae.prior.initialize_from(data.train_x, data.train_y)


def _collapse_diagnostics(config: Config, vae: VAE, x: torch.Tensor,
                          y: torch.Tensor | None) -> dict[str, Any]:
    """Active units, total KL and KL per dimension on ``x`` (nothing for a model without z)."""
    if not has(config, "latent_means"):
        return {}
    labelled = has(config, "labels")  # their encoders are q(z|x, y)
    activity = latent_activity(vae, x, y if labelled else None)
    return {key: activity[key] for key in ("active_units", "kl", "kl_per_dim")}


def missing_classes_warning(config: Config, data: ImageData) -> str | None:
    """A warning when a labelled model has classes that no training image carries: nothing
    shows p(x|y) what they look like, and their label fidelity is not measured. ``None`` when
    every class 0..num_classes−1 has training images."""
    if not has(config, "labels") or data.train_y is None:
        return None
    present = set(torch.unique(data.train_y).tolist())
    missing = [c for c in range(config.model.num_classes) if c not in present]
    if not missing:
        return None
    shown = ", ".join(map(str, missing[:10])) + (" …" if len(missing) > 10 else "")
    return (f"{len(missing)} of the model's {config.model.num_classes} classes have no training "
            f"images (labels {shown}): no image shows p(x|y) what they look like, and their "
            "label fidelity is not measured. If the data have fewer classes, number them "
            "0..C−1 and set [kind] num_classes = C.")


def collapse_warning(epoch: int, activity: dict[str, Any]) -> str | None:
    """A warning with what to try if the epoch's diagnostics show posterior collapse.

    Collapse: the mean KL(q(z|x) ‖ p(z)) below :data:`COLLAPSE_KL` nats, or no active unit
    (no latent dimension whose posterior mean varies with x). ``None`` when the code is in use
    or the model has no latent code.
    """
    if not activity or (activity["kl"] >= COLLAPSE_KL and activity["active_units"] > 0):
        return None
    return (f"posterior collapse after epoch {epoch}: KL(q(z|x) || p(z)) = {activity['kl']:.4f} "
            f"nats per datapoint and {activity['active_units']} active latent units, so the "
            "decoder ignores z. What to try: a longer KL warm-up (--kl-warmup-epochs N, "
            "[train] kl_warmup_epochs; a quarter to a half of the epochs for short runs, where "
            "the default of a tenth is too short), --free-bits 0.1 (a KL floor per dimension), "
            "--beta below 1, or a smaller decoder. On a model you train yourself, start the "
            "decoder's output at the data (vae.start_output_bias(train_x), as train() does): "
            "it kept the MNIST VampPrior from collapsing where warm-up alone did not.")


def _checkpoint_payload(config: Config, data: ImageData, vae: VAE,
                        optimizer: torch.optim.Optimizer, objective: Any, epoch: int, step: int,
                        history: list[dict], train_seconds: float) -> dict[str, Any]:
    store = pyro.get_param_store()
    return {
        "config": config.to_dict(),
        "image_shape": list(data.image_shape),
        "model": vae.state_dict(),
        "optimizer": optimizer.state_dict(),
        "param_store": {name: store[name].detach().cpu() for name in store.keys()},
        "rng": rng_state(data.train_x.device),
        "epoch": epoch,
        "step": step,
        "history": history,
        "train_seconds": train_seconds,
        # Estimator state that shapes later gradients (the score-function running baseline).
        "objective_state": {"running_baseline": getattr(objective, "running_baseline", None)},
    }


def _write_epoch(run_dir: Path, payload: dict[str, Any], config: Config, history: list[dict],
                 first: bool) -> None:
    """The checkpoint and metrics of an epoch (and, with the run's first one, its config).

    config.toml comes first: a kill between the two renames leaves a config.toml with no
    checkpoint, which a new run may replace (:func:`~pyro_vae.runs.unsaved_start`)."""
    if first:
        atomic_write_text(run_dir / CONFIG, CONFIG_HEADER + config.to_toml())
    save_checkpoint(run_dir / CHECKPOINT, payload)
    write_metrics(run_dir, history)


def _check_resumable(config: Config, checkpoint: dict[str, Any], path: Path) -> None:
    saved = saved_config(checkpoint, path)
    current = config.to_dict()
    # Where the data live may change between machines; what the data are may not.
    for key in ("data_dir", "download"):
        saved["data"].pop(key, None)
        current["data"].pop(key, None)
    for section in ("data", *MODEL_TABLES):  # the model and its components' options
        if saved.get(section, {}) != current.get(section, {}):
            raise CheckpointError(f"{path} was written for a different [{section}] than the "
                                  "configuration given now; resume with the one it was saved "
                                  "with.")


def train(config: Config, run_dir: str | Path, resume: bool = False,
          progress: Progress | bool | None = None, model: torch.nn.Module | None = None
          ) -> dict[str, Any]:
    """Train (or continue) the run in ``run_dir`` and return its summary.

    A fresh run refuses a directory that already holds a checkpoint; ``resume=True`` continues
    it from its last complete epoch up to ``config.train.epochs``.

    Started by ``torchrun``, each process trains its share of every minibatch under
    ``DistributedDataParallel`` (see :mod:`pyro_vae.distributed`); rank 0 alone writes the run
    directory and returns the summary, the other processes return ``{}``.

    ``model`` is a model already built (by :func:`pyro_vae.fitting`) to train instead of the one
    ``config.model`` describes; ``config.model.kind`` must still rebuild it (an import path
    ``"package.module:factory"``) so that the run can be loaded again.

    ``progress`` receives the loop's hooks. By default (``None`` or ``True``) a
    :class:`~pyro_vae.progress.TqdmProgress` shows them where the call is made: widgets in a
    Jupyter notebook, bars in a terminal, one line per epoch otherwise, and a warning the
    epoch posterior collapse sets in. ``False`` trains silently.
    """
    if progress is None or progress is True:
        progress = TqdmProgress()
    elif progress is False:
        progress = Progress()
    group, group_device = distributed.start(config.train.device)
    lock = RunLock(run_dir)  # held by rank 0 for the whole run: one writer per folder
    try:
        distributed.on_main(group, lock.acquire)
        summary = Trainer(config, Path(run_dir), resume, progress, group, group_device,
                          model).run()
        distributed.finish(group)
        return summary
    finally:
        lock.release()
        distributed.stop(group)


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    """A new run needs an empty folder (or one whose run never saved an epoch); a resumed run
    needs a checkpoint. Lock and stray temporary files do not count."""
    checkpoint_path = run_dir / CHECKPOINT
    if resume and not checkpoint_path.exists():
        if unsaved_start(run_dir):
            raise CheckpointError(
                f"{run_dir} holds the config.toml of a run that was stopped before its first "
                "epoch was saved, so there is nothing to resume. Train again without --resume "
                f"(same --out {run_dir}); the new run replaces that config.toml.")
        return  # load_checkpoint says what is missing
    if resume:
        return
    if checkpoint_path.exists():
        raise ConfigError(f"{run_dir} already holds a trained run; continue it with --resume, "
                          "or choose another --out so nothing is overwritten.")
    if run_files(run_dir) and not unsaved_start(run_dir):
        raise ConfigError(f"{run_dir} already holds files; a new run needs an empty or new "
                          "folder so nothing is overwritten. Choose another --out.")


def _check_distributable(config: Config, group: ProcessGroup | None) -> None:
    if group is None:
        return
    if has(config, "discrete_latents"):
        raise ConfigError(f"the {display_name(config)} enumerates a discrete latent variable "
                          "and cannot be shared out between processes; train it without "
                          "torchrun.")
    if config.train.free_bits > 0:
        raise ConfigError("free bits floor the KL of each dimension averaged over the whole "
                          "minibatch, which no process sees alone under torchrun (each would "
                          "floor its own share and the objective would change); train with "
                          "free bits without torchrun, or use --kl-warmup-epochs instead.")
    if "stateful" in OBJECTIVES.capabilities(config.train.objective):
        raise ConfigError("objective \"score\" keeps a running baseline of its own batches, "
                          "which would differ between processes; train it without torchrun.")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any],
                         path: Path) -> None:
    """Restore a checkpoint's optimizer state, or raise :class:`CheckpointError` when it
    belongs to other trainable parameters than the model's (a run written by a release whose
    model had other parameters, or a checkpoint altered by hand)."""
    try:
        optimizer.load_state_dict(state)
        # torch checks only the count of parameters; a moment of another shape would be
        # read and written out of bounds by the fused Adam kernel.
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                for name, moment in optimizer.state.get(parameter, {}).items():
                    if name != "step" and moment.shape != parameter.shape:
                        raise ValueError(f"its {name} has shape {tuple(moment.shape)} for a "
                                         f"parameter of shape {tuple(parameter.shape)}")
    except (ValueError, KeyError, RuntimeError) as error:
        raise CheckpointError(
            f"{path} holds an optimizer state for other trainable parameters than this model "
            f"has ({str(error).strip().splitlines()[0]}), so the run cannot be continued "
            "exactly. Evaluate it as it is (pyro-vae evaluate), or train a new run.") from None


def _check_decay_continues(run_dir: Path, saved: dict[str, Any], config: Config,
                           start_epoch: int) -> None:
    """Refuse a resume whose new ``--epochs`` would move the learning-rate decay so that the
    rate jumps back up (a run that had decayed to 1e-5 continuing at 1e-3), unless ``--lr``
    says at what rate to go on."""
    before = LearningRateDecay(saved["epochs"], saved["lr_decay_epochs"], saved["lr_decay_to"])
    after = LearningRateDecay(config.train.epochs, config.train.lr_decay_epochs,
                              config.train.lr_decay_to)
    if start_epoch == 0 or not before.active:
        return
    rate, old = config.train.learning_rate, before.factor(start_epoch - 1)
    if after.factor(start_epoch) <= old * (1 + 1e-9):
        return
    span = min(after.decay_epochs, after.epochs)
    raise ConfigError(
        f"{run_dir} had lowered its learning rate along its decay, to {rate * old:.3g} in epoch "
        f"{start_epoch} of {saved['epochs']}; --epochs {config.train.epochs} moves the decay to "
        f"the last {span} epochs, so epoch {start_epoch + 1} would jump back up to "
        f"{rate * after.factor(start_epoch):.3g} and undo it. To train on at a low rate, give "
        f"it with --lr as well (e.g. --lr {rate * old:.3g}: the added epochs run at that rate "
        f"and the last {span} decay from it), or train a new run with --epochs "
        f"{config.train.epochs} from the start.")


def _start_model(config: Config, data: ImageData, device: torch.device,
                 model: torch.nn.Module | None) -> torch.nn.Module:
    """The model a run starts from: built from ``config.model`` (or ``fit``'s ``model``,
    checked), on ``device``, with ``num_data`` set (the protocol's promise) and its output
    started at the training data (a resumed run then loads its trained weights over it)."""
    vae = (build_vae(config.model, data.image_shape, num_data=len(data.train_x))
           if model is None else model).to(device)
    vae.num_data = len(data.train_x)  # the protocol: the loop sets it (a factory may not)
    if model is not None:
        # fit's model: its guide samples every latent site; its factory rebuilds it.
        check_given_model(vae, config, data.train_x, data.image_shape, len(data.train_x))
    likelihood = getattr(vae, "likelihood", None)
    if hasattr(likelihood, "initialize_from"):  # Gaussian: decode in standardized units
        likelihood.initialize_from(data.train_x)
    if hasattr(likelihood, "start_scale"):  # a learned Gaussian σ: its best value at the start
        likelihood.start_scale(data.train_x)
    # p(x|z) starts at the data's mean image.
    if hasattr(vae, "start_output_bias"):
        vae.start_output_bias(data.train_x)
    elif hasattr(vae, "initialize_from_data") and config.model.likelihood == "bernoulli":
        vae.initialize_from_data(data.train_x)
    return vae


def _monitor_data(data: ImageData) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fixed points of the per-epoch collapse diagnostics: up to ``MONITOR_POINTS``
    validation images (training images where there is no validation split)."""
    x, y = data.valid_x, data.valid_y
    if not len(x):
        x, y = data.train_x, data.train_y
    return x[:MONITOR_POINTS], None if y is None else y[:MONITOR_POINTS]


def _prepared_objective(config: Config, data: ImageData, vae: VAE) -> tuple[Any, Any]:
    """The objective ``[train]`` names, as the kind's ``prepare`` hook adapts it (e.g. checks
    that the data have labels, a labelled split of its own), and what that hook hands the kind's
    ``batches`` hook (``None`` for a kind without one)."""
    objective = make_objective(config.train.objective, config.train.particles,
                               vectorize=getattr(vae, "vectorize_particles", True),
                               options=config.options.get("objective"))
    prepare = hooks(config).prepare
    return (objective, None) if prepare is None else prepare(config, data, vae, objective)


def _initialize_model(config: Config, data: ImageData, vae: VAE, resumed: bool) -> None:
    """Start what the kind starts from the data (its ``initialize`` hook; a resumed run loads
    its own), and a VampPrior's pseudo-inputs at real training images."""
    initialize = hooks(config).initialize
    if initialize is not None and not resumed:
        initialize(config, data, vae)
    # VampPrior: pseudo-inputs start at real images, once the kind has checked the data (a
    # labelled prior needs labels); M2's prepare starts them at its labelled subset only.
    if "pseudo_inputs" in PRIORS.capabilities(config.model.prior) \
            and hasattr(vae.prior, "initialize_from") and not has(config, "partial_labels"):
        _initialize_pseudo_inputs(vae, data)


@dataclass
class TrainingState:
    """What the loop carries from epoch to epoch; each checkpoint saves all of it."""

    #: Epochs finished, which is also the next epoch to train, counted from 0.
    epoch: int = 0
    #: Optimizer steps taken (the KL warm-up and a relaxation's temperature follow them).
    step: int = 0
    #: One metrics row per finished epoch (the lines of ``metrics.jsonl``).
    history: list[dict[str, Any]] = field(default_factory=list)
    #: Seconds spent training the finished epochs (validation and writing not counted).
    train_seconds: float = 0.0
    #: How many times a non-finite step rolled the run back (each halves the learning rate).
    rollbacks: int = 0

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> TrainingState:
        """The state a checkpoint saved (its rollbacks are in its last metrics row)."""
        history = checkpoint["history"]
        return cls(checkpoint["epoch"], checkpoint["step"], history, checkpoint["train_seconds"],
                   history[-1].get("rollbacks", 0) if history else 0)


class Trainer:
    """One run's training, a stage at a time (one process's share of it under ``torchrun``).

    Setting up is the constructor: :meth:`_open_run` checks the folder and loads the checkpoint
    a resume continues, :meth:`_build` makes the data, model, objective, optimizer and
    schedules, :meth:`_restore` puts a resumed run back where it stopped, :meth:`_start_writing`
    makes the folder. :meth:`run` is the loop; for each epoch not yet trained it calls

    1. :meth:`train_epoch`, the optimizer steps (on a non-finite step, :meth:`recover` rolls
       the run back or stops it);
    2. :meth:`end_epoch`, the epoch's metrics row: validation ELBO, collapse diagnostics;
    3. :meth:`save_epoch`, the checkpoint and metrics written and the row shown;

    and then :meth:`finish`, the test split scored, the summary and pictures written. What a
    model kind does differently comes through its hooks (:func:`pyro_vae.protocol.hooks`:
    ``prepare``, ``initialize``, ``batches``, ``run_summary``, ``pictures``) and capabilities:
    the trainer names no kind. What it reports goes to a :class:`~pyro_vae.progress.Progress`.
    """

    config: Config
    data: ImageData
    vae: VAE
    #: The objective as a module: ``module(x)`` is the loss of a batch.
    module: ObjectiveModule
    optimizer: torch.optim.Optimizer
    #: The kind's ``batches`` hook (:func:`minibatch_steps` by default).
    batches: Callable[[Epoch], Iterator[StepLoss]]
    #: What the kind's ``prepare`` hook returned for its ``batches`` hook.
    kind_state: Any
    schedule: KLSchedule
    decay: LearningRateDecay
    state: TrainingState
    #: The epoch this call of :func:`train` started from (0, or the epochs a resume found).
    start_epoch: int

    def __init__(self, config: Config, run_dir: Path, resume: bool, progress: Progress,
                 group: ProcessGroup | None = None, group_device: torch.device | None = None,
                 model: torch.nn.Module | None = None) -> None:
        """Set up the run in ``run_dir`` (``resume``: continue it) for :meth:`run`."""
        # The run records every plugin whose components it uses (entry-point plugins included).
        self.config = config.with_plugins_recorded()
        self.run_dir, self.progress, self.group = run_dir, progress, group
        self.is_main = group is None or group.is_main
        self.checkpoint_path = run_dir / CHECKPOINT
        checkpoint = self._open_run(resume, group_device)
        self._build(model, resumed=checkpoint is not None)
        self.state = TrainingState() if checkpoint is None else self._restore(checkpoint)
        self.start_epoch = self.state.epoch
        self._start_writing(fresh=checkpoint is None)

    def _open_run(self, resume: bool, group_device: torch.device | None
                  ) -> dict[str, Any] | None:
        """Check the folder, the device and that the run can be shared out between processes;
        return the checkpoint a resume continues (checked against this configuration)."""
        _check_run_dir(self.run_dir, resume)
        if self.is_main:  # under the lock: what killed writers left behind
            remove_stray_temporary_files(self.run_dir)
        self.device = group_device or resolve_device(self.config.train.device)
        _check_distributable(self.config, self.group)
        checkpoint = load_checkpoint(self.checkpoint_path) if resume else None
        if checkpoint is not None:
            _check_resumable(self.config, checkpoint, self.checkpoint_path)
        return checkpoint

    def _build(self, model: torch.nn.Module | None, resumed: bool) -> None:
        """Seed; load the data; make the model (``fit``'s ``model``, or one ``[model]``
        builds), the objective as the kind prepares it, the optimizer, the KL warm-up, the
        learning-rate decay and the fixed points of the collapse diagnostics."""
        config = self.config
        pyro.clear_param_store()
        pyro.set_rng_seed(config.train.seed)
        self.data = data = distributed.node_first(
            self.group if config.data.download else None,
            lambda: prepare_data(config, self.device))
        check_training_memory(config, data.image_shape, len(data.test_x), self.device,
                              None if data.train_y is None else len(torch.unique(data.train_y)))
        self.vae = _start_model(config, data, self.device, model)
        objective, self.kind_state = _prepared_objective(config, data, self.vae)
        _initialize_model(config, data, self.vae, resumed)
        missing = missing_classes_warning(config, data)
        if missing and self.is_main:
            self.progress.warn(missing)
        self.batches = hooks(config).batches or minibatch_steps
        self.module = ObjectiveModule(self.vae, objective, config.train.free_bits)
        self.optimizer = adam(self.module.parameters(), config.train.learning_rate,
                              config.train.adam_beta1)
        self.batches_per_epoch = math.ceil(len(data.train_x) / config.train.batch_size)
        self.schedule = KLSchedule(config.train.beta,
                                   config.train.warmup_epochs() * self.batches_per_epoch)
        self.decay = LearningRateDecay(config.train.epochs, config.train.lr_decay_epochs,
                                       config.train.lr_decay_to)
        # Collapse diagnostics each epoch on up to 1,000 fixed points (validation, else training).
        self.monitor = _monitor_data(data)

    def _restore(self, checkpoint: dict[str, Any]) -> TrainingState:
        """Put a resumed run back exactly where its checkpoint left it (weights, optimizer,
        every RNG state, an estimator's running baseline) and return its state. A ``--lr``
        given now sets the rate; otherwise the learning-rate decay must go on as it was
        (:func:`_check_decay_continues`). ``--epochs`` below the epochs done is refused."""
        config, path = self.config, self.checkpoint_path
        load_state(self.vae, checkpoint["model"], path)
        load_optimizer_state(self.optimizer, checkpoint["optimizer"], path)
        set_rng_state(checkpoint["rng"], self.device)
        state = TrainingState.from_checkpoint(checkpoint)
        saved = saved_config(checkpoint, path)["train"]
        if saved["learning_rate"] != config.train.learning_rate:  # --lr given on resume
            _set_learning_rate(self.optimizer, config.train.learning_rate)
        else:
            _check_decay_continues(self.run_dir, saved, config, state.epoch)
        baseline = checkpoint.get("objective_state", {}).get("running_baseline")
        if hasattr(self.module.objective, "running_baseline"):
            self.module.objective.running_baseline = baseline
        if config.train.epochs < state.epoch:
            raise ConfigError(f"{self.run_dir} has already trained {state.epoch} epochs; "
                              f"--epochs {config.train.epochs} would go back. Give --epochs "
                              f"{state.epoch} or more.")
        return state

    def _start_writing(self, fresh: bool) -> None:
        """Check the minibatches can be shared out, make the run's folder (rank 0), wrap the
        objective module for the process group, and keep the state that a non-finite first
        epoch of a ``fresh`` run rolls back to (a resumed run rolls back to its checkpoint)."""
        distributed.check_batches(len(self.data.train_x), self.config.train.batch_size,
                                  self.group)
        distributed.on_main(self.group, lambda: make_run_dir(self.run_dir))
        self.forward = distributed.wrap(self.module, self.group, self.device)
        self.last_good = copy.deepcopy((self.vae.state_dict(), self.optimizer.state_dict())) \
            if fresh else None

    def run(self) -> dict[str, Any]:
        """Train the epochs not yet trained, then :meth:`finish`; returns the summary (``{}``
        in a process other than rank 0)."""
        config, state = self.config, self.state
        self.progress.start_epochs(state.epoch, config.train.epochs)
        self.progress.watch(self.vae, *self.monitor, self.data.image_shape)
        with pyro.validation_enabled(False), warnings.catch_warnings():
            # Non-finite losses are detected and explained (recover); Pyro's warning is noise.
            warnings.filterwarnings("ignore", message="Encountered NaN")
            while state.epoch < config.train.epochs:
                started = time.perf_counter()
                try:
                    train_elbo = self.train_epoch()
                except NonFiniteStep as fault:
                    self.recover(fault)
                    continue  # redo this epoch from the last good state at half the rate
                state.train_seconds += time.perf_counter() - started
                self.save_epoch(self.end_epoch(train_elbo))
                state.epoch += 1
            self.vae.eval()
            # Rank 0 alone scores the test split and writes the summary and pictures.
            return self.finish() if self.is_main else {}

    def train_epoch(self) -> float:
        """Take the optimizer steps of the epoch ``state.epoch`` (the kind's ``batches`` hook),
        the KL weight following its warm-up and the learning rate its decay (from a rate that
        each rollback halves); returns the mean training objective per datapoint.

        A non-finite step raises :class:`~pyro_vae.steps.NonFiniteStep` before the optimizer
        applies it, and the step count stays as it was."""
        config, data, state = self.config, self.data, self.state
        self.vae.train()
        x = binarize(data.train_x) if config.binarization == "dynamic" else data.train_x
        self.decay.set_rate(self.optimizer, state.epoch,
                            config.train.learning_rate * 0.5 ** state.rollbacks)
        self.progress.start_epoch(state.epoch, self.batches_per_epoch)
        inputs = Epoch(self.forward, x, model_labels(self.vae, data.train_y), data,
                       config.train.batch_size, self.kind_state, self.group)
        train_elbo, state.step = _run_steps(self.module, self.optimizer, self.batches(inputs),
                                            self.schedule, state.step, self.progress, self.group)
        return train_elbo

    def recover(self, fault: NonFiniteStep) -> None:
        """After a non-finite step: with ``on_nan = "rollback"`` (at most
        :data:`MAX_ROLLBACKS` times), go back to the last good state (the last checkpoint, or
        the initial state in the first epoch) at half the learning rate for the epoch to be
        trained again; otherwise stop with the paragraph of
        :func:`~pyro_vae.faults.nonfinite_loss_error` (what went wrong, where to go on from)."""
        state, epoch = self.state, self.state.epoch
        if self.config.train.on_nan != "rollback" or state.rollbacks >= MAX_ROLLBACKS:
            where = (f"the checkpoint of epoch {epoch} in {self.checkpoint_path}" if epoch
                     else "the initial state (no epoch had finished)")
            raise nonfinite_loss_error(self.vae, fault.batch, fault.loss, fault.grad_norm,
                                       epoch + 1, fault.step, where, resumable=epoch > 0,
                                       rolled_back=state.rollbacks > 0) from None
        state.rollbacks += 1
        _roll_back(self.vae, self.optimizer, self.checkpoint_path if epoch else None,
                   self.last_good)

    def end_epoch(self, train_elbo: float) -> dict[str, Any]:
        """The metrics row of the epoch just trained, added to the history: training and
        validation ELBO, the collapse diagnostics on the monitor points (with a warning if the
        code collapsed, once the KL weight has warmed up), KL weight, learning rate, rollbacks
        and the training seconds so far."""
        config, vae, state = self.config, self.vae, self.state
        vae.eval()
        activity = _collapse_diagnostics(config, vae, *self.monitor)
        # Not while the KL is still warming up: a code that looks unused then may not be.
        warning = (collapse_warning(state.epoch + 1, activity)
                   if state.epoch + 1 >= config.train.warmup_epochs() else None)
        row = {"epoch": state.epoch + 1, "step": state.step, "train_elbo": train_elbo,
               "validation_elbo": _validation_elbo(vae, self.data.valid_x,
                                                   config.evaluate.max_chunk,
                                                   model_labels(vae, self.data.valid_y)),
               **activity, "collapse_warning": warning, "kl_weight": vae.kl_weight,
               "learning_rate": self.optimizer.param_groups[0]["lr"],
               "rollbacks": state.rollbacks, "seconds": round(state.train_seconds, 3)}
        state.history.append(row)
        return row

    def save_epoch(self, row: dict[str, Any]) -> None:
        """Write the checkpoint and metrics of the epoch of ``row`` (rank 0; ``config.toml``
        too with the first epoch this call trains), show the row, and warn when posterior
        collapse starts (the warning stays in every row while it lasts)."""
        state, warning = self.state, row["collapse_warning"]
        payload = _checkpoint_payload(self.config, self.data, self.vae, self.optimizer,
                                      self.module.objective, row["epoch"], row["step"],
                                      state.history, state.train_seconds) \
            if self.is_main else None
        distributed.on_main(self.group, functools.partial(
            _write_epoch, self.run_dir, payload, self.config, state.history,
            state.epoch == self.start_epoch))
        self.progress.end_epoch(row)
        started = not (len(state.history) > 1 and state.history[-2].get("collapse_warning"))
        if warning is not None and started:
            self.progress.warn(warning)

    def finish(self) -> dict[str, Any]:
        """Score the test split (as much of it as ``[evaluate] scoring`` asks for:
        :mod:`pyro_vae.scoring`), write ``summary.json`` and the pictures (the kind's
        ``run_summary`` and ``pictures`` hooks); returns the summary."""
        config, data, vae, run_dir = self.config, self.data, self.vae, self.run_dir
        history, train_seconds = self.state.history, self.state.train_seconds
        started = time.perf_counter()
        plan = plan_final_scoring(vae, data.test_x, model_labels(vae, data.test_y),
                                  config.evaluate.num_samples, config.evaluate.scoring,
                                  config.evaluate.max_chunk, train_seconds)
        message = plan.message(train_seconds, str(run_dir))
        if message is not None and hasattr(self.progress, "note"):  # a display may lack it
            self.progress.note(message)
        scored = first_test_images(data, plan.num_datapoints) if plan.reduced else data
        scores = split_scores(config, vae, scored, "test", plan.num_samples, self.progress)
        kind = hooks(config)
        summary = {
            "dataset": config.data.dataset,
            "epochs": len(history),
            "steps": history[-1]["step"] if history else 0,
            "objective": config.train.objective,
            **scores,
            **plan.summary_entries(),
            "final_validation_elbo": history[-1]["validation_elbo"] if history else None,
            **(kind.run_summary(vae, data, run_dir, config)
               if kind.run_summary is not None else {}),
            "train_seconds": round(train_seconds, 2),
            "evaluate_seconds": round(time.perf_counter() - started, 2),
        }
        write_json(run_dir / SUMMARY, summary)
        (kind.pictures or default_pictures)(vae, data, run_dir, history, config)
        return summary
