"""Progress output: the hooks the training loop reports through (:class:`Progress`) and the
displays that fill them in for the CLI, notebooks and :func:`pyro_vae.train`.

The output fits where it goes (:func:`output_mode`):

* ``bars``     — a terminal: tqdm bars that redraw in place;
* ``lines``    — a log file, a pipe or CI: one plain line per epoch and per evaluation, never
                 a carriage return;
* ``notebook`` — a Jupyter kernel with ipywidgets installed (the ``notebook`` extra):
                 ``tqdm.auto`` widgets.

:class:`Callbacks` sends every hook to several receivers (the progress display and the
experiment loggers of :mod:`pyro_vae.loggers`).
"""

from __future__ import annotations

import importlib.util
import signal
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING, Any, Sequence, TextIO

if TYPE_CHECKING:  # annotations only: the command line's parsers import this module light
    import torch


MODES = ("bars", "lines", "notebook")


class Progress:
    """Hooks a display or a logger fills in to show progress and log experiments; the training
    loop calls them and never prints itself (this base class shows nothing). ``watch`` hands over the model being trained and fixed monitoring data (up to 1,000
    validation points) once, before the first epoch; ``end_epoch`` gets each epoch's row of
    ``metrics.jsonl``."""

    def start_epochs(self, first: int, last: int) -> None: ...
    def watch(self, vae: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None,
              image_shape: tuple[int, int, int]) -> None: ...
    def start_epoch(self, epoch: int, num_batches: int) -> None: ...
    def step(self, loss: float) -> None: ...
    def end_epoch(self, metrics: dict[str, Any]) -> None: ...
    def start_evaluation(self, num_datapoints: int, num_samples: int) -> None: ...
    def evaluated(self, num_datapoints: int) -> None: ...
    def end_evaluation(self) -> None: ...
    def warn(self, message: str) -> None: ...
    def note(self, message: str) -> None: ...


def _in_notebook() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


def output_mode(stream: TextIO | None = None) -> str:
    """``notebook`` in a Jupyter kernel that can draw widgets, ``bars`` when ``stream`` (default
    stderr) is a terminal, else ``lines``."""
    if _in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        return "notebook"
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "bars" if isatty is not None and isatty() else "lines"


def _tqdm_class(mode: str) -> Any:
    if mode == "notebook":
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    return tqdm


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


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
    """An epoch bar with the latest ELBOs, a step bar per epoch and an evaluation bar, or, in
    ``lines`` mode, one line per epoch and per evaluation (see :func:`output_mode`).

    Used as a context manager it also owns Ctrl-C, SIGTERM and SIGHUP: the first one is noted
    and raised as :class:`Interrupted` (a ``KeyboardInterrupt``) at the next step or evaluation
    chunk, from ordinary code, so it can never land where Python swallows exceptions (a
    ``__del__``, a callback) and be lost; a second one interrupts at once. Leaving the context
    closes the bars, so a message printed after it starts on a fresh line.
    """

    def __init__(self, quiet: bool = False, mode: str | None = None,
                 stream: TextIO | None = None) -> None:
        #: No output (the other processes of a torchrun job); Ctrl-C is still handled.
        self.quiet = quiet
        self.stream = stream
        self.mode = mode or output_mode(stream)
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {MODES}")
        self._tqdm = _tqdm_class(self.mode)
        self.epochs: Any = None
        self.steps: Any = None
        self.evaluation: Any = None
        self.stop_requested = False
        self.signum: int = signal.SIGINT
        self._previous_handlers: dict[int, Any] = {}
        self._last_epoch = 0
        self._started = 0.0

    @property
    def _lines(self) -> bool:
        return self.mode == "lines"

    def _print(self, text: str) -> None:
        stream = sys.stderr if self.stream is None else self.stream
        print(text, file=stream, flush=True)

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
        self._last_epoch = last
        if self.quiet or self._lines:
            return
        self.epochs = self._tqdm(total=last, initial=first, desc="epochs", unit="epoch",
                                 dynamic_ncols=True, file=self.stream)

    def start_epoch(self, epoch: int, num_batches: int) -> None:
        self._started = time.perf_counter()
        if self.quiet or self._lines:
            return
        self.steps = self._tqdm(total=num_batches, desc=f"epoch {epoch + 1}", unit="step",
                                leave=False, dynamic_ncols=True, mininterval=0.5, delay=1.0,
                                file=self.stream)

    def step(self, elbo: float) -> None:
        if self.steps is not None:
            self.steps.update()
        self._stop_if_requested()

    def end_epoch(self, metrics: dict[str, Any]) -> None:
        if self.steps is not None:
            self.steps.close()
        if self._lines and not self.quiet:
            active = metrics.get("active_units")
            self._print(f"epoch {metrics['epoch']}/{self._last_epoch}: train_elbo "
                        f"{_number(metrics['train_elbo'])}, validation_elbo "
                        f"{_number(metrics.get('validation_elbo'))}"
                        + (f", active_units {active}" if active is not None else "")
                        + f", {time.perf_counter() - self._started:.1f} s")
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
        self._started = time.perf_counter()
        if self.quiet:
            return
        if self._lines:
            self._print(f"scoring {num_datapoints} datapoints with K={num_samples} "
                        "importance samples")
            return
        self.evaluation = self._tqdm(total=num_datapoints, unit="datapoint", dynamic_ncols=True,
                                     desc=f"scoring, K={num_samples}", file=self.stream)

    def evaluated(self, num_datapoints: int) -> None:
        if self.evaluation is not None:
            self.evaluation.update(num_datapoints)
        self._stop_if_requested()

    def end_evaluation(self) -> None:
        if self.evaluation is not None:
            self.evaluation.close()
        elif self._lines and not self.quiet:
            self._print(f"scored in {time.perf_counter() - self._started:.1f} s")

    def warn(self, message: str) -> None:
        """A warning (e.g. posterior collapse) on stderr, above any bars."""
        if self.quiet:
            return
        if self._lines:
            self._print(f"warning: {message}")
        else:
            self._tqdm.write(f"warning: {message}", file=sys.stderr)

    def note(self, message: str) -> None:
        """Information that is not a warning (e.g. how long the scoring will take)."""
        if self.quiet:
            return
        if self._lines:
            self._print(message)
        else:
            self._tqdm.write(message, file=sys.stderr)


class Callbacks(Progress):
    """Sends every hook to each of ``receivers`` in order (a progress display, loggers)."""

    def __init__(self, receivers: Sequence[Progress]) -> None:
        self.receivers = list(receivers)

    def start_epochs(self, first: int, last: int) -> None:
        for receiver in self.receivers:
            receiver.start_epochs(first, last)

    def watch(self, vae: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None,
              image_shape: tuple[int, int, int]) -> None:
        for receiver in self.receivers:
            receiver.watch(vae, x, y, image_shape)

    def start_epoch(self, epoch: int, num_batches: int) -> None:
        for receiver in self.receivers:
            receiver.start_epoch(epoch, num_batches)

    def step(self, loss: float) -> None:
        for receiver in self.receivers:
            receiver.step(loss)

    def end_epoch(self, metrics: dict[str, Any]) -> None:
        for receiver in self.receivers:
            receiver.end_epoch(metrics)

    def start_evaluation(self, num_datapoints: int, num_samples: int) -> None:
        for receiver in self.receivers:
            receiver.start_evaluation(num_datapoints, num_samples)

    def evaluated(self, num_datapoints: int) -> None:
        for receiver in self.receivers:
            receiver.evaluated(num_datapoints)

    def end_evaluation(self) -> None:
        for receiver in self.receivers:
            receiver.end_evaluation()

    def warn(self, message: str) -> None:
        for receiver in self.receivers:
            receiver.warn(message)

    def note(self, message: str) -> None:
        for receiver in self.receivers:
            if hasattr(receiver, "note"):  # receivers written before the hook existed
                receiver.note(message)
