"""Reading a run's checkpoint file safely: its format, version and structure.

Kept apart from :mod:`pyro_vae.runs` (which builds models) so that a model kind can read
another run's weights, e.g. the quadrant CVAE its trained baseline, without an import cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pyro_vae.errors import CheckpointError
from pyro_vae.files import open_regular

CHECKPOINT_FORMAT = "pyro-vae-checkpoint"
CHECKPOINT_VERSION = 1


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely, or raise :class:`CheckpointError` saying what is wrong."""
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; is this a run directory written by "
                              "`pyro-vae train`?")
    try:
        handle = open_regular(path)  # a pipe or a device would block or never end
    except OSError as error:
        raise CheckpointError(f"{path} cannot be opened ({error.strerror or error}).") from None
    try:
        with handle:
            payload = torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged or foreign files
        raise CheckpointError(
            f"{path} cannot be read as a pyro-vae checkpoint ({type(error).__name__}): it is "
            "truncated, corrupt, or not a checkpoint. If the run was interrupted, the previous "
            "complete checkpoint was replaced only after the new one was written, so this file "
            "was damaged afterwards; retrain, or restore it from a copy."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pyro-vae checkpoint.")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} was written by checkpoint format version "
                              f"{payload.get('version')}, this pyro-vae reads version "
                              f"{CHECKPOINT_VERSION}; use the pyro-vae release that wrote it.")
    problems = checkpoint_problems(payload)
    if problems:
        raise CheckpointError(
            f"{path} is not a complete pyro-vae checkpoint ({'; '.join(problems[:3])}"
            f"{'; …' if len(problems) > 3 else ''}): it was altered or written by another "
            "program. Retrain, or restore it from a copy.")
    return payload


def _is_count(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _valid_rng(state: Any) -> bool:
    if not isinstance(state, dict):
        return False
    python, numpy_state = state.get("python"), state.get("numpy")
    return (isinstance(state.get("torch"), torch.Tensor) and state["torch"].dtype == torch.uint8
            and isinstance(state.get("cuda"), (list, tuple))
            and all(isinstance(t, torch.Tensor) for t in state["cuda"])
            and isinstance(python, (list, tuple)) and len(python) == 3
            and isinstance(python[1], (list, tuple))
            and all(_is_count(i) for i in python[1])
            and isinstance(numpy_state, (list, tuple)) and len(numpy_state) == 5
            and isinstance(numpy_state[0], str) and isinstance(numpy_state[1], (list, tuple))
            and all(_is_count(i) for i in numpy_state[1]))


#: What every checkpoint holds: key -> (check, what it must be).
_SCHEMA: dict[str, tuple[Any, str]] = {
    "config": (lambda v: isinstance(v, dict), "a table of settings"),
    "image_shape": (lambda v: isinstance(v, (list, tuple)) and len(v) == 3
                    and all(_is_count(i, 1) for i in v),
                    "three positive integers (channels, height, width)"),
    "model": (lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items()),
              "a mapping of weight names to tensors"),
    "optimizer": (lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict)
                  and isinstance(v.get("param_groups"), list), "an optimizer state"),
    "rng": (_valid_rng, "the random number generators' states"),
    "epoch": (_is_count, "a count of epochs"),
    "step": (_is_count, "a count of steps"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
                "a list of metric rows"),
    "train_seconds": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                      "a number of seconds"),
}


def checkpoint_problems(payload: dict[str, Any]) -> list[str]:
    """What is missing from or wrong in a checkpoint's structure (empty when it is sound)."""
    problems = []
    for key, (check, what) in _SCHEMA.items():
        if key not in payload:
            problems.append(f"it has no {key!r}")
        elif not check(payload[key]):
            problems.append(f"its {key!r} is not {what}")
    return problems
