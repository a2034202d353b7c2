"""Opening the files of a run directory safely: only regular files are read, and the one file
written in place is never reached through a link.

A run directory holds whatever its sender put there. A named pipe (FIFO) in place of
``config.toml`` or ``checkpoint.pt`` blocks a reader forever, a link to a device such as
``/dev/zero`` never ends, and a symbolic link in place of a file written in place makes its
writer overwrite whatever the link points to. So:

* every file of a run is opened without blocking (``O_NONBLOCK``) and checked to be a regular
  file (after following links, ``fstat``) before a byte is read: :func:`open_regular`;
* the lock file, the only file pyro-vae writes in place rather than by renaming a new file
  over the old one, is opened with ``O_NOFOLLOW`` and must be a regular file:
  :func:`open_lock_file`.

Every other file pyro-vae writes goes to a new temporary name (created exclusively) renamed
over the old one, which replaces a link instead of writing through it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from pyro_vae.errors import CheckpointError, PyroVAEError

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _what(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_regular_message(path: str | Path, mode: int) -> str:
    return (f"{path} is {_what(mode)}, not a regular file, so pyro-vae does not read it (a "
            "pipe or a device would make it wait forever or read without end). A run's files "
            "are plain files written by pyro-vae: replace it with the file that belongs there, "
            "or restore the run from a copy.")


def open_regular(path: str | Path, error: type[PyroVAEError] = CheckpointError) -> BinaryIO:
    """``path`` opened for reading in binary, once it is known to be a regular file (links
    are followed; their target must be one); ``error`` (with a message saying what the file
    is) otherwise. :class:`FileNotFoundError` and other :class:`OSError` pass through."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(not_regular_message(path, mode))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path: str | Path, error: type[PyroVAEError] = CheckpointError) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular`)."""
    with open_regular(path, error) as handle:
        return handle.read()


def open_lock_file(path: str | Path) -> int:
    """A descriptor of the lock file ``path``, opened read-write (created if missing) without
    following a symbolic link and without blocking; a :class:`PyroVAEError` saying what to do
    when ``path`` is a link or not a regular file. Other :class:`OSError` pass through."""
    flags = (os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_NONBLOCK", 0))
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
            raise PyroVAEError(
                f"{path} is a symbolic link, and the lock file is never opened through a link "
                "(writing the lock would overwrite the file it points to). It is not part of a "
                "run: delete the link (rm, which removes the link, not its target) and run the "
                "command again.") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise PyroVAEError(f"{path} is {_what(mode)}, not the regular lock file pyro-vae "
                           "writes; it is not part of a run: delete it and run the command "
                           "again.")
    return fd
