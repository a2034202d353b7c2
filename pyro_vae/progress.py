"""tqdm progress bars for the CLI (the library reports through :class:`~pyro_vae.train.Progress`)."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from tqdm.auto import tqdm

from pyro_vae.train import Progress


#: Signals handled like Ctrl-C: a scheduler's or ``docker stop``'s SIGTERM, a closed terminal's
#: SIGHUP.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                     if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """A stop asked for by ``signum`` (SIGINT, SIGTERM or SIGHUP), raised from ordinary code."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class TqdmProgress(Progress):
    """An epoch bar with the latest ELBOs, a step bar per epoch and an evaluation bar.

    Used as a context manager it also owns Ctrl-C, SIGTERM and SIGHUP: the first one is noted
    and raised as :class:`Interrupted` (a ``KeyboardInterrupt``) at the next step or evaluation
    chunk, from ordinary code, so it can never land where Python swallows exceptions (a
    ``__del__``, a callback) and be lost; a second one interrupts at once. Leaving the context
    closes the bars, so a message printed after it starts on a fresh line.
    """

    def __init__(self, quiet: bool = False) -> None:
        #: No bars (the other processes of a torchrun job); Ctrl-C is still handled.
        self.quiet = quiet
        self.epochs: tqdm | None = None
        self.steps: tqdm | None = None
        self.evaluation: tqdm | None = None
        self.stop_requested = False
        self.signum: int = signal.SIGINT
        self._previous_handlers: dict[int, Any] = {}

    def __enter__(self) -> "TqdmProgress":
        for signum in STOP_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._on_interrupt)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()
        for bar in (self.steps, self.epochs, self.evaluation):
            if bar is not None:
                try:
                    bar.close()
                except OSError:  # the terminal went away (SIGHUP)
                    pass

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested:
            raise Interrupted(signum)
        self.stop_requested = True
        self.signum = signum

    def _stop_if_requested(self) -> None:
        if self.stop_requested:
            self.stop_requested = False
            raise Interrupted(self.signum)

    def start_epochs(self, first: int, last: int) -> None:
        if self.quiet:
            return
        self.epochs = tqdm(total=last, initial=first, desc="epochs", unit="epoch",
                           dynamic_ncols=True)

    def start_epoch(self, epoch: int, num_batches: int) -> None:
        if self.quiet:
            return
        self.steps = tqdm(total=num_batches, desc=f"epoch {epoch + 1}", unit="step",
                          leave=False, dynamic_ncols=True, mininterval=0.5, delay=1.0)

    def step(self, elbo: float) -> None:
        if self.steps is not None:
            self.steps.update()
        self._stop_if_requested()

    def end_epoch(self, metrics: dict[str, Any]) -> None:
        if self.steps is not None:
            self.steps.close()
        if self.epochs is not None:
            postfix = {"train_elbo": f"{metrics['train_elbo']:.2f}"}
            if metrics.get("validation_elbo") is not None:
                postfix["valid_elbo"] = f"{metrics['validation_elbo']:.2f}"
            self.epochs.set_postfix(postfix)
            self.epochs.update()
        self._stop_if_requested()  # the epoch's checkpoint is already written

    def start_evaluation(self, num_datapoints: int, num_samples: int) -> None:
        if self.epochs is not None:
            self.epochs.close()
        self.evaluation = tqdm(total=num_datapoints, unit="datapoint", dynamic_ncols=True,
                               desc=f"log p(x), K={num_samples}")

    def evaluated(self, num_datapoints: int) -> None:
        if self.evaluation is not None:
            self.evaluation.update(num_datapoints)
        self._stop_if_requested()

    def end_evaluation(self) -> None:
        if self.evaluation is not None:
            self.evaluation.close()
