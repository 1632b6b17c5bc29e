"""The files shipped inside the package: the bundled corpus (Hamlet) and the GPT-2 BPE tables.

`hamlet.txt` is Shakespeare's Hamlet (public domain, Project Gutenberg); `gpt2/` holds `encoder.json`,
`vocab.bpe` and their `LICENSE` (see `ddm.tokenizers.gpt2`). The folder is listed in `[tool.maturin]
include` of pyproject.toml, so wheels and sdists carry it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["bundled_path", "bundled_text", "read_bytes"]


def read_bytes(name: str) -> bytes:
    """The bytes of a bundled file, by its path inside `ddm/assets/` (e.g. `"gpt2/vocab.bpe"`)."""
    return resources.files("ddm.assets").joinpath(name).read_bytes()


def bundled_path() -> Path:
    """Path of the bundled corpus (Hamlet, 174k characters), shipped inside the package."""
    ref = resources.files("ddm.assets").joinpath("hamlet.txt")
    with resources.as_file(ref) as p:
        return Path(p)


def bundled_text() -> str:
    """The bundled corpus as a string."""
    return resources.files("ddm.assets").joinpath("hamlet.txt").read_text(encoding="utf-8")
