"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The one writer behind token files, dataset texts, checkpoints' `LATEST`, SEDD exports and training plots:
write to a temporary name beside the target, fsync, `os.replace` onto the target, fsync the directory.
Files are created with `open`, so they get the user's umask (0644 under umask 022), whatever wrote the bytes.

Also here: SHA-256 digests of files (checkpoint manifests) and the one table that turns an `OSError` from a
write (a full disk, a read-only file system, no permission) into a sentence that says what to do.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_path",
    "describe_os_error",
    "fsync_dir",
    "fsync_file",
    "sha256_file",
    "write_bytes",
    "write_file",
    "write_text",
]

# What to do about the write errors a user can fix, by errno.
_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space or write to another disk",
    errno.EDQUOT: "the disk quota is exceeded: free some space or write to another disk",
    errno.EROFS: "the file system is read-only: choose a writable directory",
    errno.EACCES: "permission denied: choose a directory you can write to, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a directory you can write to, or fix its permissions",
    errno.ENOENT: "no such file or directory: check the path",
    errno.ENOTDIR: "a component of the path is not a directory: check the path",
}


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


def describe_os_error(e: OSError) -> str:
    """One sentence for an `OSError`: the file, what happened and what to do (ENOSPC, EROFS, EACCES...)."""
    where = f"{e.filename}: " if e.filename is not None else ""
    advice = _ADVICE.get(e.errno) if e.errno is not None else None
    what = e.strerror or str(e)
    return f"{where}{what}" + (f" ({advice})" if advice else "")


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's contents, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_file(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to a new file at `path` and fsyncs it (not atomic: for files inside a temporary
    directory that is renamed into place). An `OSError` names `path`."""
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise type(e)(e.errno, e.strerror or str(e), str(path)) from e
        raise


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
