"""Writes to files that transformers will execute: atomic, locked, and respectful of write bits.

We run as root in CI and in many containers, where ``os.access`` says every file is writable;
a file or directory whose mode has no write bit is treated as read-only regardless, because
that is what its owner asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import AccessError

STATE_DIR_NAME = ".florence-patch"
LOCK_TIMEOUT_S = 120.0


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ensure_writable(path: Path) -> None:
    """Raise AccessError when ``path`` (file or directory) has no write bit or cannot be written."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        kind = "directory" if stat.S_ISDIR(mode) else "file"
        raise AccessError(f"{path}: {kind} is read-only; make it writable to patch it")
    if not os.access(path, os.W_OK):
        raise AccessError(f"{path}: permission denied")


def atomic_write(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory, fsync, rename."""
    directory = path.parent
    if mode is None:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            mode = 0o644
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def state_dir(target_dir: Path) -> Path:
    return target_dir / STATE_DIR_NAME


@contextlib.contextmanager
def locked(target_dir: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the per-copy lock: every process (and every torchrun rank) patches one at a time."""
    directory = state_dir(target_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except PermissionError as error:
        raise AccessError(f"{target_dir}: cannot create {STATE_DIR_NAME}/ ({error.strerror})") from error
    lock = FileLock(str(directory / "lock"), timeout=timeout)
    try:
        with lock:
            yield
    except Timeout as error:
        raise AccessError(f"{target_dir}: timed out after {timeout:.0f}s waiting for another florence-patch") from error
