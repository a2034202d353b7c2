"""Grading students' notebooks: run each one and collect the verdicts its grader cells show.

A grader cell ends with a call such as ``check_elbo(elbo_estimate)``; the
:class:`~pyro_vae.grading.result.GradeResult` it displays carries its checks as output metadata
(key ``pyro_vae_grade``). :func:`grade_notebook` executes a notebook top to bottom in a fresh
kernel (with ``nbclient``, from the ``notebooks`` extra), going on past cells that raise, and
reads those verdicts back; :func:`grade_notebooks` does it for many::

    from pathlib import Path
    from pyro_vae.grading import grade_notebooks

    grades = grade_notebooks(sorted(Path("submissions").glob("*/*.ipynb")))
    print(grades)                 # one line per notebook, then every failed check
    for grade in grades.notebooks:
        print(grade.path, grade.score)   # e.g. 2/3 graders passed

The student's notebook is not modified: it runs from a copy in memory, in its own folder (so
that files it writes, such as exercise 4's plugin module, land beside it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pyro_vae.errors import ConfigError
from pyro_vae.grading.result import METADATA_KEY, Check, GradeResult


@dataclass
class NotebookGrade:
    """The verdicts of one executed notebook, and the errors its cells raised."""

    path: Path
    results: list[GradeResult] = field(default_factory=list)
    #: ``"cell N: ErrorName: message"`` for every cell that raised.
    errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every grader passed (a notebook without grader cells does not pass)."""
        return bool(self.results) and all(result.passed for result in self.results)

    @property
    def score(self) -> str:
        return f"{sum(r.passed for r in self.results)}/{len(self.results)} graders passed"

    def __str__(self) -> str:
        lines = [f"{self.path}: {'PASSED' if self.passed else 'FAILED'} ({self.score})"]
        for result in self.results:
            if not result.passed:
                lines += ["  " + line for line in str(result).splitlines()]
        lines += [f"  error in {error}" for error in self.errors]
        return "\n".join(lines)

    __repr__ = __str__


@dataclass
class GradeBook:
    """The grades of several notebooks."""

    notebooks: list[NotebookGrade]

    def __str__(self) -> str:
        head = [f"{g.path}: {'PASSED' if g.passed else 'FAILED'} ({g.score})"
                for g in self.notebooks]
        details = [str(g) for g in self.notebooks if not g.passed]
        return "\n".join(head + ([""] + details if details else []))

    __repr__ = __str__


def _result(data: dict[str, Any]) -> GradeResult:
    return GradeResult(data["exercise"], [Check(c["name"], c["passed"], c["message"])
                                          for c in data["checks"]])


def grade_notebook(path: str | Path, timeout: int = 300, kernel_name: str = "python3"
                   ) -> NotebookGrade:
    """Execute the notebook at ``path`` and collect its graders' verdicts (see module doc).

    ``timeout`` bounds each cell, in seconds. Torch runs one thread per kernel (``OMP_NUM_
    THREADS=1``, unless set), which is fastest when several notebooks are graded at once.
    """
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError:
        raise ConfigError("grading notebooks runs them with nbclient, which is not installed: "
                          "pip install \"pyro-vae[notebooks]\" and try again.") from None
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"there is no notebook at {path}; give the path of an .ipynb file.")
    try:
        notebook = nbformat.read(path, as_version=4)
    except Exception as error:  # nbformat raises several kinds for a broken file
        raise ConfigError(f"{path} is not a readable notebook ({type(error).__name__}: {error})."
                          ) from None
    client = NotebookClient(notebook, timeout=timeout, kernel_name=kernel_name,
                            allow_errors=True,
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    client.execute(env={"OMP_NUM_THREADS": "1", **os.environ})
    grade = NotebookGrade(path)
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            data = output.get("metadata", {}).get(METADATA_KEY)
            if data is not None:
                grade.results.append(_result(data))
            if output.get("output_type") == "error":
                grade.errors.append(f"cell {index}: {output.get('ename')}: "
                                    f"{output.get('evalue')}")
    return grade


def grade_notebooks(paths: Iterable[str | Path], timeout: int = 300) -> GradeBook:
    """:func:`grade_notebook` for each path, in order."""
    return GradeBook([grade_notebook(path, timeout) for path in paths])
