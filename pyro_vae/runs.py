"""Run directories: atomic writes, checkpoints, and loading a trained run back.

Every file is written to a temporary name in the same folder, flushed to disk and renamed over
the old one, so an interrupted or killed run never leaves a half-written file: readers see the
previous complete version or the new one. Checkpoints are read with ``weights_only=True``, so a
checkpoint file someone sends you cannot execute code when loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import random
import re
import signal
import socket
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from pyro_vae.checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint
from pyro_vae.config import SECTIONS, Config
from pyro_vae.errors import CheckpointError, ConfigError, PyroVAEError
from pyro_vae.files import open_lock_file, open_regular, read_regular_bytes
from pyro_vae.models import build_vae
from pyro_vae.registry import PluginError, UntrustedPluginError, untrusted

try:  # POSIX; elsewhere the lock falls back to the owner's process id
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.toml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
#: Held by the process writing a run directory, for the whole run (see :class:`RunLock`).
LOCK = ".pyro-vae.lock"
#: First line of the config.toml that ``pyro-vae train`` writes (tells it from a user's file).
CONFIG_HEADER = "# written by `pyro-vae train`: the resolved configuration of this run\n"
#: A temporary file :func:`atomic_path` left behind when its process was killed mid-write.
_STRAY_TEMP = re.compile(r"^\.(checkpoint\.pt|metrics\.jsonl|config\.toml|summary\.json|"
                         r"[\w.-]+\.(png|json|csv|npz|nc))\w{8}\.tmp$")
#: Test hook: ``before:N`` / ``after:N`` makes this process SIGKILL itself just before or just
#: after its N-th atomic rename (fault-injection tests of every state a kill can leave).
KILL_AT_RENAME = "PYRO_VAE_TEST_KILL_AT_RENAME"
_renames = 0


def _kill_hook(moment: str) -> None:
    wanted = os.environ.get(KILL_AT_RENAME)
    if wanted and wanted == f"{moment}:{_renames + (moment == 'before')}":
        os.kill(os.getpid(), signal.SIGKILL)


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
            _kill_hook("before")
            os.replace(temp, path)
            _count_rename()
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise PyroVAEError(f"cannot write {path} ({error.strerror or error}). Check that the "
                           "folder is writable and the disk has space; nothing earlier in the "
                           "run directory was changed.") from None


def _count_rename() -> None:
    global _renames
    _renames += 1
    _kill_hook("after")


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


# --- who writes a run directory ----------------------------------------------------------------

def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _read_owner(path: Path) -> dict[str, Any]:
    try:
        owner = json.loads(read_regular_bytes(path).decode("utf-8") or "{}")
    except (OSError, ValueError, PyroVAEError):
        return {}
    return owner if isinstance(owner, dict) else {}


class RunLock:
    """The right to write one run directory, held for a whole run by one process.

    The lock file ``RUN_DIR/.pyro-vae.lock`` names its owner (process id, host, start time) and
    is held with ``flock``, which the kernel releases when the owner exits in any way, ``kill
    -9`` included; a lock file left by a dead process is therefore stale and taken over. Where
    ``flock`` is not supported (some network file systems) the owner's process id decides: a
    lock of this host whose process is gone is stale. A second process asking for a held lock
    gets a :class:`ConfigError` at once. :meth:`release` removes the file (and the folder, if
    :meth:`acquire` created it and nothing else was written).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> None:
        self._created = not self.run_dir.exists()
        make_run_dir(self.run_dir)
        for _ in range(10):  # retried only if the holder removed the file as we opened it
            try:
                fd = open_lock_file(self.path)
            except PyroVAEError:
                self._remove_created_folder()
                raise
            except OSError as error:
                self._remove_created_folder()
                raise PyroVAEError(f"cannot create the lock file {self.path} ("
                                   f"{error.strerror or error}); choose a writable --out."
                                   ) from None
            if not self._lock(fd):
                owner = _read_owner(self.path)
                os.close(fd)
                self._remove_created_folder()
                raise ConfigError(self._busy_message(owner))
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                owner = {"pid": os.getpid(), "host": socket.gethostname(),
                         "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
                os.ftruncate(fd, 0)
                os.write(fd, (json.dumps(owner) + "\n").encode())
                self._fd = fd
                return
            os.close(fd)
        raise ConfigError(f"{self.run_dir} is being locked and unlocked by other processes; "
                          "choose another --out.")

    def _lock(self, fd: int) -> bool:
        """Lock ``fd``; False when another live process holds the run."""
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError:  # no flock here: fall back to the owner's process id
                pass
        owner = _read_owner(self.path)
        pid = owner.get("pid")
        if not isinstance(pid, int) or pid == os.getpid():
            return True
        if owner.get("host") != socket.gethostname():
            return False  # cannot tell whether a process on another machine is alive
        return not _process_alive(pid)

    def _busy_message(self, owner: dict[str, Any]) -> str:
        who = (f"process {owner.get('pid', '?')} on {owner.get('host', '?')}"
               + (f" (started {owner['started']})" if owner.get("started") else ""))
        return (f"{self.run_dir} is in use: {who} is writing a run there. Two runs writing one "
                "folder would overwrite each other's results, so this one did not start. Wait "
                "for that run to finish (then continue it with --resume if you want more "
                "epochs), or choose another --out. If that process no longer runs (it was on "
                f"another machine that stopped), delete {self.path} and try again.")

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None
        self._remove_created_folder()

    def _remove_created_folder(self) -> None:
        if self._created:
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()  # only if empty: a run that wrote nothing leaves nothing

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def stray_temporary_files(run_dir: Path) -> list[Path]:
    """Temporary files of :func:`atomic_path` whose writer was killed before its rename."""
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if _STRAY_TEMP.match(p.name) and p.is_file())


def run_files(run_dir: Path) -> list[Path]:
    """What a run directory holds, leaving out the lock and stray temporary files."""
    if not run_dir.is_dir():
        return []
    stray = set(stray_temporary_files(run_dir))
    return sorted(p for p in run_dir.iterdir() if p.name != LOCK and p not in stray)


def remove_stray_temporary_files(run_dir: Path) -> None:
    """Delete what killed writers left (call only while holding the :class:`RunLock`)."""
    for path in stray_temporary_files(run_dir):
        path.unlink(missing_ok=True)


def unsaved_start(run_dir: Path) -> bool:
    """True when ``run_dir`` holds only the config.toml ``pyro-vae train`` wrote just before a
    first checkpoint that never came (the run was killed in between): nothing to resume, and
    safe to start again."""
    files = run_files(run_dir)
    if [p.name for p in files] != [CONFIG]:
        return False
    try:
        with open_regular(run_dir / CONFIG) as handle:
            return handle.readline().decode("utf-8") == CONFIG_HEADER
    except (OSError, UnicodeDecodeError, PyroVAEError):
        return False


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def finite_or_none(value: Any) -> Any:
    """``value`` with NaN and infinite floats (in nested lists and dicts too) as ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def write_json(path: str | Path, value: Any) -> None:
    """Strict JSON (NaN and infinities, e.g. a standard error of one datapoint, become null)."""
    atomic_write_text(path, json.dumps(finite_or_none(value), indent=2, allow_nan=False) + "\n")


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
    to the configuration since (so older checkpoints stay comparable). Read as untrusted: the
    plugins and ``"module:factory"`` names it holds are never imported."""
    try:
        with untrusted(f"the configuration saved in {path}"):
            return Config.from_dict(checkpoint.get("config", {}), source=str(path),
                                    saved=True).to_dict()
    except PluginError:
        raise
    except ConfigError as error:
        raise CheckpointError(f"{path} holds a configuration this pyro-vae cannot read "
                              f"({error}).") from None


def read_run_config(run_dir: Path) -> Config:
    """The configuration of the run in ``run_dir``, read as untrusted (anyone may have written
    it): it imports no plugin and no ``"module:factory"`` that this process has not loaded
    (:func:`pyro_vae.registry.untrusted`), and its ``[data] download`` is turned off, since
    only the user's own ``--download`` may fetch data or create folders."""
    config = _read_run_config(run_dir)
    if config.data.download:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                      download=False))
    return config


def _read_run_config(run_dir: Path) -> Config:
    path = run_dir / CONFIG
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist.")
    if not path.exists() and (run_dir / CHECKPOINT).exists():
        # Killed between the first checkpoint and config.toml (runs of older releases, which
        # wrote them in that order): the checkpoint carries the configuration.
        checkpoint = load_checkpoint(run_dir / CHECKPOINT)
        with untrusted(f"the configuration saved in {run_dir / CHECKPOINT}"):
            return Config.from_dict(saved_config(checkpoint, run_dir / CHECKPOINT), saved=True)
    if not path.exists() and not run_files(run_dir):
        raise CheckpointError(f"{run_dir} holds no saved run (no {CONFIG} or {CHECKPOINT}: "
                              "is it a run directory written by `pyro-vae train`? A run stopped "
                              "before its first epoch was saved leaves nothing to resume or "
                              "read; train into it without --resume.")
    if not path.exists():
        raise CheckpointError(f"{run_dir} has no {CONFIG}; is it a run directory written by "
                              "`pyro-vae train`?")
    open_regular(path).close()  # a pipe or a device in its place: said here, not "damaged"
    try:
        with untrusted(str(path)):
            config = Config.from_toml(path, saved=True)
    except UntrustedPluginError:
        raise
    except PluginError as error:
        raise PluginError(f"{run_dir} was trained with a plugin that is not available here: "
                          f"{error}") from None
    except ConfigError as error:
        if "registered by a plugin module" in str(error):
            raise ConfigError(f"{path} names a component that nothing registers here ({error}) "
                              "If the run was trained with a plugin you trust, give --plugin "
                              "MODULE with the command.") from None
        raise CheckpointError(f"{path} is damaged: {error}") from None
    _check_complete(path)
    return config


def _check_complete(path: Path) -> None:
    """Refuse a run's configuration that lacks one of the tables ``pyro-vae train`` writes
    (emptied, or cut short): read as a recipe, the defaults would fill the gap silently, and
    the run would be scored on the default dataset or resumed with another recipe."""
    tables = tomllib.loads(read_regular_bytes(path).decode("utf-8"))
    missing = [name for name in SECTIONS if not isinstance(tables.get(name), dict)]
    if missing:
        raise CheckpointError(
            f"{path} lacks the table{'s' if len(missing) > 1 else ''} "
            f"{', '.join('[' + name + ']' for name in missing)} that pyro-vae train writes: it "
            "was emptied or cut short, and the defaults would silently take its place (another "
            "dataset, another recipe). " + (
                f"Restore it, or delete it: the copy of the run's configuration saved in "
                f"{CHECKPOINT} is then read instead." if (path.parent / CHECKPOINT).exists() else
                "Restore it, or train the run again (it has saved no checkpoint yet)."))


#: The tables that describe the model: ``[model]`` and its components' options.
MODEL_TABLES = ("model", "prior", "guide", "likelihood", "network", "kind")


def _model_tables(tables: dict[str, Any]) -> dict[str, Any]:
    return {name: tables.get(name, {}) for name in MODEL_TABLES}


#: What a recipe may change without changing what a model of it learns from the same images:
#: where the data lies, the budget and the seed (compared on their own where they matter),
#: the device, and how the finished model is evaluated.
_NOT_THE_RECIPE = {"data": ("dataset", "data_dir", "download"),
                   "train": ("epochs", "seed", "device", "threads", "on_nan")}


def recipe_differences(config: Config, other: Config) -> list[str]:
    """The settings (``"TABLE.KEY"``) in which two configurations train different models —
    every table but ``[evaluate]``, less the data's name and location, the budget, the seed
    and the device — empty when a model of one may stand in for a model of the other."""

    def settings(c: Config) -> dict[str, Any]:
        tables = json.loads(json.dumps(c.to_dict(), default=str))  # tuples read as lists
        tables.pop("evaluate", None)
        tables["data"]["binarize"] = c.binarization  # "auto" read as what it means
        for table, keys in _NOT_THE_RECIPE.items():
            for key in keys:
                tables.get(table, {}).pop(key, None)
        return {f"{table}.{key}" if isinstance(values, dict) else table: value
                for table, values in tables.items()
                for key, value in (values.items() if isinstance(values, dict)
                                   else [(None, values)])}

    mine, theirs = settings(config), settings(other)
    return sorted(key for key in mine.keys() | theirs.keys() if mine.get(key) != theirs.get(key))


def load_trained(run_dir: str | Path, device: str = "cpu"):
    """(config, VAE with trained weights, checkpoint payload) of a finished or saved run."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if not (run_dir / CHECKPOINT).exists() and unsaved_start(run_dir):
        raise CheckpointError(
            f"{run_dir} holds a run that has not saved its first epoch: pyro-vae train wrote its "
            f"{CONFIG} but no {CHECKPOINT} yet. If it is training, run this command again once "
            "its first epoch has finished; if it was stopped, train it again with the same "
            "--out (without --resume).")
    checkpoint = load_checkpoint(run_dir / CHECKPOINT)
    if _model_tables(saved_config(checkpoint, run_dir / CHECKPOINT)) != \
            _model_tables(config.to_dict()):
        raise CheckpointError(f"{run_dir / CHECKPOINT} was written for a different [model] "
                              f"(or options of its components) than {run_dir / CONFIG} "
                              "describes; restore the matching pair.")
    shape = tuple(checkpoint["image_shape"])
    vae = build_vae(config.model, shape)
    load_state(vae, checkpoint["model"], run_dir / CHECKPOINT)
    return config, vae.to(device).eval(), checkpoint
