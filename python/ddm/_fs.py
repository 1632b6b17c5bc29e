"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The one writer behind token files, dataset texts, checkpoints' `LATEST`, SEDD exports and training plots:
write to a temporary name beside the target, fsync, `os.replace` onto the target, fsync the directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "fsync_dir", "fsync_file", "write_bytes", "write_text"]


def fsync_dir(path: str | os.PathLike) -> None:
    """Flushes a directory's entries (a rename in it) to disk; a no-op where directories have no fd."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover (platforms without directory fds)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flushes a written file's contents to disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside `path`; on a clean exit, renames it onto `path`.

    The block writes a file (fsynced here) or creates a directory (the block fsyncs its files) at the
    temporary path. On a clean exit it replaces `path` and the parent directory is fsynced; on an
    exception the temporary file or directory is removed and `path` is untouched.

    Args:
        path: the target.
        suffix: appended to the temporary name (e.g. `".png"`, for writers that infer the format).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        yield tmp
        if tmp.is_file():
            fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes UTF-8 `text` to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))
