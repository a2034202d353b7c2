"""The ``[train]`` table of a recipe: objective, optimizer, schedules, seed and device."""

from __future__ import annotations

from dataclasses import dataclass

from pyro_vae.config.checks import DEVICES, MIN_BETA, _choice, _positive, _registered
from pyro_vae.errors import ConfigError
from pyro_vae.registry import OBJECTIVES


@dataclass
class TrainConfig:
    """The objective, the optimizer and the schedule."""

    epochs: int = 200
    batch_size: int = 64
    learning_rate: float = 1e-3
    #: Adam's β₁, the decay of its running mean of gradients (torch's default 0.9; Pyro's
    #: SS-VAE example trains M2 with 0.95). β₂ stays 0.999.
    adam_beta1: float = 0.9
    #: ``elbo`` (Pyro's Trace_ELBO), ``meanfield`` (TraceMeanField_ELBO, analytic KL),
    #: ``iwae``, ``dreg``, ``stl``, ``renyi`` or ``score`` (see pyro_vae.objectives).
    objective: str = "elbo"
    #: Number of vectorized particles K per datapoint (IWAE's k). An objective's own options
    #: (``renyi``'s ``alpha``, the relaxations' ``temperature``) go in the ``[objective]`` table.
    particles: int = 1
    #: Weight of the KL term (β-VAE), positive; 1 is the ELBO.
    beta: float = 1.0
    #: Epochs over which the KL weight rises linearly from 0 to ``beta`` (0: no annealing).
    #: ``"auto"`` (the default) anneals over the first tenth of the epochs (``epochs // 10``:
    #: none below 10 epochs, 20 of 200): with the decoder's output bias starting at the data's
    #: mean image, an unannealed ELBO collapses the digits' code to it (0 of 8 active units).
    kl_warmup_epochs: int | str = "auto"
    #: The last ``lr_decay_epochs`` epochs lower the learning rate along a half cosine to
    #: ``lr_decay_to`` × ``learning_rate`` in the final epoch (0: a constant rate). Set per
    #: epoch from the epoch number, so a resumed run continues the same schedule.
    lr_decay_epochs: int = 0
    lr_decay_to: float = 0.01
    #: Free bits λ (Kingma et al. 2016): nats per latent dimension of batch-averaged KL below
    #: which the KL is not pushed down; 0 disables. Objectives elbo and meanfield, prior normal.
    free_bits: float = 0.0
    seed: int = 0
    device: str = "cpu"
    #: On a NaN/inf loss or gradient: ``stop`` with a message, or ``rollback`` to the last good
    #: state with half the learning rate (up to 3 times).
    on_nan: str = "stop"
    #: torch threads of the command (``pyro-vae --threads``); 0 chooses: $OMP_NUM_THREADS if
    #: set, else 1, the fastest for these models on a machine shared with other jobs.
    threads: int = 0

    def warmup_epochs(self) -> int:
        """The number of KL warm-up epochs, with ``"auto"`` resolved (``epochs // 10``)."""
        if self.kl_warmup_epochs == "auto":
            return self.epochs // 10
        return int(self.kl_warmup_epochs)

    def validate(self) -> None:
        _choice("train", "on_nan", self.on_nan, ("stop", "rollback"))
        _positive("train", "threads", self.threads, allow_zero=True)
        _positive("train", "epochs", self.epochs)
        _positive("train", "batch_size", self.batch_size)
        _positive("train", "learning_rate", self.learning_rate)
        if not (isinstance(self.adam_beta1, (int, float)) and 0.0 <= self.adam_beta1 < 1.0):
            raise ConfigError(
                f"[train] adam_beta1 = {self.adam_beta1!r} must lie in [0, 1): it is the decay "
                "of Adam's running mean of gradients (0.9 is torch's default, 0.95 Pyro's "
                "SS-VAE example); 1 or more would never forget the first gradient.")
        _registered(OBJECTIVES, self.objective)
        _positive("train", "particles", self.particles)
        _positive("train", "beta", self.beta)
        if self.beta < MIN_BETA:
            raise ConfigError(f"[train] beta = {self.beta!r} is below {MIN_BETA:g}: a KL weight "
                              "that small vanishes in float32 arithmetic (the loss is then the "
                              f"reconstruction term alone). Use beta ≥ {MIN_BETA:g}.")
        if isinstance(self.kl_warmup_epochs, str):
            if self.kl_warmup_epochs != "auto":
                raise ConfigError(
                    f"[train] kl_warmup_epochs = {self.kl_warmup_epochs!r} must be a "
                    "non-negative number of epochs, or \"auto\" (a tenth of the epochs).")
        else:
            _positive("train", "kl_warmup_epochs", self.kl_warmup_epochs, allow_zero=True)
        _positive("train", "free_bits", self.free_bits, allow_zero=True)
        _positive("train", "lr_decay_epochs", self.lr_decay_epochs, allow_zero=True)
        if not (isinstance(self.lr_decay_to, (int, float)) and 0.0 < self.lr_decay_to <= 1.0):
            raise ConfigError(
                f"[train] lr_decay_to = {self.lr_decay_to!r} must lie in (0, 1]: it is the "
                "fraction of learning_rate left in the last epoch of the decay (0.01 by "
                "default; 1 keeps the rate constant).")
        _positive("train", "seed", self.seed, allow_zero=True)
        if self.seed >= 2 ** 32:
            raise ConfigError(f"[train] seed = {self.seed} must be below 2**32.")
        _choice("train", "device", self.device, DEVICES)
