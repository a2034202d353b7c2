"""What a grader returns: a verdict made of checks, each passed or failed with a sentence.

A grader never prints. It returns a :class:`GradeResult`, whose ``str`` (and ``repr``, so a
notebook cell that ends with the grader's call shows it) is the verdict in words::

    Exercise 2a — KL(q ‖ N(0, I)) in closed form: FAILED (2 of 3 checks passed)
      ✓ shape: one KL per datapoint, shape [6]
      ✓ KL(p ‖ p) = 0 at q = N(0, I)
      ✗ value: your KL is -0.568 for q = N(1, 0.5²), and a KL is never negative: did you
        swap the sign of the log-variance? KL = ½ Σ_d (μ_d² + σ_d² − 1 − log σ_d²).

In Jupyter the result also carries its checks as output metadata (key ``pyro_vae_grade``),
which :func:`pyro_vae.grading.notebook.grade_notebook` reads back from an executed notebook.

:class:`Report` is how a grader builds the result: ``report.ok(...)`` and ``report.fail(...)``
record checks; a failure that makes the later checks meaningless stops the grader (the
``with report.grading():`` block ends there), and an exception raised by the student's function
becomes a failed check that names it instead of a traceback (:func:`call_student`).
"""

from __future__ import annotations

import contextlib
import linecache
import os
import textwrap
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pyro
import torch

#: Metadata key under which a displayed result carries its checks (see ``grade_notebook``).
METADATA_KEY = "pyro_vae_grade"
#: Folders whose frames are not the student's code (this package, torch, pyro).
_LIBRARIES = tuple(f"{folder}{os.sep}" for folder in (
    Path(__file__).resolve().parent.parent, *(Path(m.__file__).resolve().parent
                                              for m in (torch, pyro))))


@dataclass(frozen=True)
class Check:
    """One thing a grader checked: its name, whether it passed, and what it found in words."""

    name: str
    passed: bool
    message: str


@dataclass
class GradeResult:
    """A grader's verdict: the exercise and its checks; passed when every check passed."""

    exercise: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    @property
    def feedback(self) -> str:
        """The failed checks' messages, one paragraph each ("" when everything passed)."""
        return "\n".join(check.message for check in self.failures)

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        done = sum(check.passed for check in self.checks)
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [f"{self.exercise}: {verdict} ({done} of {len(self.checks)} checks passed)"]
        for check in self.checks:
            mark = "✓" if check.passed else "✗"
            text = f"{check.name}: {check.message}" if check.message else check.name
            lines.append(textwrap.fill(text, width=96, initial_indent=f"  {mark} ",
                                       subsequent_indent="    "))
        return "\n".join(lines)

    __repr__ = __str__

    def as_dict(self) -> dict[str, Any]:
        return {"exercise": self.exercise, "passed": self.passed,
                "checks": [{"name": c.name, "passed": c.passed, "message": c.message}
                           for c in self.checks]}

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None
                          ) -> tuple[dict[str, str], dict[str, Any]]:
        """Jupyter shows the text; the checks ride along as output metadata."""
        return {"text/plain": str(self)}, {METADATA_KEY: self.as_dict()}


class StopGrading(Exception):
    """Raised by :meth:`Report.fail` for a failure that makes the later checks meaningless."""


class Report:
    """The checks of one grading, in order; :meth:`result` gives the :class:`GradeResult`."""

    def __init__(self, exercise: str):
        self.exercise = exercise
        self.checks: list[Check] = []

    def ok(self, name: str, message: str = "") -> None:
        self.checks.append(Check(name, True, message))

    def fail(self, name: str, message: str, stop: bool = True) -> None:
        self.checks.append(Check(name, False, message))
        if stop:
            raise StopGrading

    @contextlib.contextmanager
    def grading(self) -> Iterator["Report"]:
        """Run the checks with the global random state untouched (the grader seeds its own
        draws, with ``torch.default_generator.manual_seed``: ``torch.manual_seed`` also seeds
        every accelerator and formats a stack trace each time, which costs milliseconds) and
        stop quietly at a stopping failure."""
        with torch.random.fork_rng(devices=[]):
            try:
                yield self
            except StopGrading:
                pass

    def result(self) -> GradeResult:
        return GradeResult(self.exercise, list(self.checks))


def _student_line(error: BaseException) -> str:
    """`` (line N: `code`)`` for the innermost frame of the student's code, if it can be
    found (a frame outside the library and torch), else ""."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not f.filename.startswith(_LIBRARIES)]
    if not frames:
        return ""
    frame = frames[-1]
    code = (frame.line or linecache.getline(frame.filename, frame.lineno)).strip()
    return f" (line {frame.lineno} of {frame.name}: `{code}`)" if code else ""


def call_student(report: Report, name: str, function: Callable[..., Any], *args: Any,
                 **kwargs: Any) -> Any:
    """``function(*args, **kwargs)``, or a stopping failure that says what it raised."""
    try:
        return function(*args, **kwargs)
    except NotImplementedError:
        report.fail(name, f"not written yet: {getattr(function, '__name__', 'the function')} "
                    "raises NotImplementedError (replace the TODO with your code).")
    except Exception as error:  # the student's code may raise anything
        report.fail(name, f"your function raised {type(error).__name__}: {error}"
                    f"{_student_line(error)}.")


def as_tensor(report: Report, name: str, value: Any) -> torch.Tensor:
    """The student's answer as a float tensor, or a stopping failure saying what it was."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            report.fail(name, f"your function returned a tensor of {value.dtype}; return "
                        "floating-point values (log-densities are real numbers).")
        return value
    if isinstance(value, (float, int)):
        return torch.tensor(float(value))
    try:
        import numpy

        if isinstance(value, numpy.ndarray):
            return torch.as_tensor(value, dtype=torch.get_default_dtype())
    except ImportError:  # numpy comes with torch; kept optional all the same
        pass
    report.fail(name, f"your function returned {type(value).__name__}, not a torch tensor; "
                "return a tensor (torch operations all the way, so that gradients flow).")
    return torch.empty(0)


def check_shape(report: Report, answer: torch.Tensor, shape: tuple[int, ...], what: str,
                hints: dict[tuple[int, ...], str] | None = None) -> None:
    """Pass when ``answer.shape == shape``; else a stopping failure, with the hint that
    ``hints`` gives for the shape found (e.g. a scalar: "you averaged over the batch")."""
    name = "shape"
    if tuple(answer.shape) == tuple(shape):
        report.ok(name, f"{what}, shape {list(shape)}")
        return
    hint = (hints or {}).get(tuple(answer.shape), "")
    report.fail(name, f"expected {what}, shape {list(shape)}, but your function returned "
                f"shape {list(answer.shape)}." + (f" {hint}" if hint else ""))


def first_match(answer: torch.Tensor, candidates: list[tuple[str, torch.Tensor]],
                atol: float | torch.Tensor) -> str | None:
    """The message of the first candidate (a typical mistake's value) that ``answer`` equals
    within ``atol`` everywhere, or None."""
    for message, value in candidates:
        if value.shape == answer.shape and bool(((answer - value).abs() <= atol).all()):
            return message
    return None


def fmt(value: float) -> str:
    return f"{value:.4g}"
