"""Run directories: atomic writes, checkpoints, and loading a trained run back.

Every file is written to a temporary name in the same folder, flushed to disk and renamed over
the old one, so an interrupted or killed run never leaves a half-written file: readers see the
previous complete version or the new one. Checkpoints are read with ``weights_only=True``, so a
checkpoint file someone sends you cannot execute code when loaded.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from pyro_vae.config import Config
from pyro_vae.errors import CheckpointError, ConfigError, PyroVAEError
from pyro_vae.registry import PluginError

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.toml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINT_FORMAT = "pyro-vae-checkpoint"
CHECKPOINT_VERSION = 1


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path in ``path``'s folder to write into; on success it is flushed to disk
    and renamed over ``path``, on failure removed (for writers that need a file name, e.g.
    netCDF)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
        os.close(handle)
        try:
            yield Path(temp)
            with open(temp, "rb+") as file:
                os.fsync(file.fileno())
            os.chmod(temp, 0o644)  # mkstemp makes 0600; results are meant to be shared
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise PyroVAEError(f"cannot write {path} ({error.strerror or error}). Check that the "
                           "folder is writable and the disk has space; nothing earlier in the "
                           "run directory was changed.") from None


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` all-or-nothing (temp file, fsync, rename)."""
    with atomic_path(path) as temp:
        temp.write_bytes(payload)


def make_run_dir(path: Path) -> None:
    """Create ``path`` (and parents), or say clearly why it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PyroVAEError(f"cannot create the output folder {path} ({error.strerror or error}); "
                           "choose a writable --out.") from None
    if not os.access(path, os.W_OK):
        raise PyroVAEError(f"the output folder {path} is not writable; choose another --out.")


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_json(path: str | Path, value: Any) -> None:
    """Strict JSON (NaN and infinities, e.g. a standard error of one datapoint, become null)."""
    atomic_write_text(path, json.dumps(_finite_or_none(value), indent=2, allow_nan=False) + "\n")


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """Rewrite ``metrics.jsonl`` from the full history (so a resumed run never duplicates)."""
    atomic_write_text(run_dir / METRICS, "".join(json.dumps(row) + "\n" for row in history))


# --- random number generator state -------------------------------------------------------------

def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every generator that shapes training: the CPU's, the training GPU's, Python's, NumPy's.

    Only the training device's CUDA generator is kept (one process may train on ``cuda:3`` of
    an 8-GPU node); it is restored into whichever GPU continues the run.
    """
    numpy_state = np.random.get_state()
    on_cuda = device is not None and device.type == "cuda"
    return {
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(device)] if on_cuda else [],
        "python": random.getstate(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and device is not None and device.type == "cuda":
        # The training device's state (older checkpoints list every GPU: cuda:0 trained).
        torch.cuda.set_rng_state(state["cuda"][0], device)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))


# --- checkpoints -------------------------------------------------------------------------------

def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely, or raise :class:`CheckpointError` saying what is wrong."""
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; is this a run directory written by "
                              "`pyro-vae train`?")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
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
    return payload


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise CheckpointError(
            f"{path} holds weights of a different model than its config.toml describes "
            f"({first[1].strip() if len(first) > 1 else first[0]}). Use the config.toml that "
            "was written with this checkpoint."
        ) from None


def saved_config(checkpoint: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """The configuration a checkpoint was written with, with defaults filled in for keys added
    to the configuration since (so older checkpoints stay comparable)."""
    try:
        return Config.from_dict(checkpoint.get("config", {}), source=str(path)).to_dict()
    except PluginError:
        raise
    except ConfigError as error:
        raise CheckpointError(f"{path} holds a configuration this pyro-vae cannot read "
                              f"({error}).") from None


def read_run_config(run_dir: Path) -> Config:
    path = run_dir / CONFIG
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist.")
    if not path.exists():
        raise CheckpointError(f"{run_dir} has no {CONFIG}; is it a run directory written by "
                              "`pyro-vae train`?")
    try:
        return Config.from_toml(path)
    except PluginError as error:
        raise PluginError(f"{run_dir} was trained with a plugin that is not available here: "
                          f"{error}") from None
    except ConfigError as error:
        if "registered by a plugin module" in str(error):
            raise ConfigError(f"{path} names a component that nothing registers here ({error}) "
                              "If the run was trained with a plugin, list its module under "
                              "plugins in that file or give --plugin MODULE.") from None
        raise CheckpointError(f"{path} is damaged: {error}") from None


def load_trained(run_dir: str | Path, device: str = "cpu"):
    """(config, VAE with trained weights, checkpoint payload) of a finished or saved run."""
    from pyro_vae.models import build_vae

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    checkpoint = load_checkpoint(run_dir / CHECKPOINT)
    if saved_config(checkpoint, run_dir / CHECKPOINT)["model"] != config.to_dict()["model"]:
        raise CheckpointError(f"{run_dir / CHECKPOINT} was written for a different [model] "
                              f"than {run_dir / CONFIG} describes; restore the matching pair.")
    shape = tuple(checkpoint["image_shape"])
    vae = build_vae(config.model, shape)
    load_state(vae, checkpoint["model"], run_dir / CHECKPOINT)
    return config, vae.to(device).eval(), checkpoint
