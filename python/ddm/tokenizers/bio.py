"""DNA and protein tokenizers, and parsers for FASTA and UniProt/Swiss-Prot flat files.

Both tokenizers follow the ddm tokenizer contract (`encode(str) -> list[int]`, `decode(ids) -> str`,
`vocab_size`, `to_config()`), and add `encode_array(str) -> np.ndarray` for whole genomes and proteomes
(a table lookup over the ASCII bytes, no Python loop per letter).

DNA (`DNATokenizer`, vocabulary 5): `A C G T` are ids 0-3 and `N` (any base) is id 4. Lowercase letters
(soft-masked repeats) are read as uppercase. The IUPAC ambiguity codes `R Y S W K M B D H V` are mapped
to `N` on purpose: they stand for more than one base, and a model over four bases plus "unknown" is the
usual choice. `U` (RNA uracil) is read as `T`. Anything else (gaps `-`, digits, spaces) is a ValueError.
Decoding gives uppercase `ACGTN`, so a round trip is exact for uppercase `ACGTN` text.

Protein (`ProteinTokenizer`): the 20 standard amino acids `ACDEFGHIKLMNPQRSTVWY` are ids 0-19, `X`
(unknown residue) is id 20, and the sequence separator `"\\n"` is id 21: a corpus of many proteins is
one stream with a separator between sequences, and training blocks are windows of that stream (packing,
as GPT-2 training does with its end-of-text token), so no padding is wasted. The rare letters are handled
explicitly by `rare`:
- `rare="keep"` (default): `B J O U Z` get their own ids 22-26 (B = Asx, D or N; J = Xle, I or L;
  O = pyrrolysine; U = selenocysteine; Z = Glx, E or Q), so every round trip is exact.
- `rare="x"`: the five are read as `X` (vocabulary 22): smaller, lossy for them.
Lowercase is read as uppercase; a trailing stop `*` must be removed by the parser (see `parse_fasta`);
any other character is a ValueError.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DNATokenizer",
    "ProteinTokenizer",
    "parse_fasta",
    "parse_swissprot",
    "swissprot_crc64",
    "read_text_maybe_gz",
]

DNA_ALPHABET = "ACGTN"
DNA_AMBIGUOUS = "RYSWKMBDHV"  # IUPAC codes for two or more bases: read as N
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"  # the 20 standard residues, alphabetical by one-letter code
PROTEIN_RARE = "BJOUZ"  # Asx, Xle, pyrrolysine, selenocysteine, Glx
SEPARATOR = "\n"


def _first_bad(text: str, lut: np.ndarray) -> tuple[int, str]:
    for pos, c in enumerate(text):
        if ord(c) > 255 or lut[ord(c)] < 0:
            return pos, c
    raise AssertionError("no bad character")  # pragma: no cover


class _TableTokenizer:
    """Shared machinery: a 256-entry lookup table from ASCII bytes to ids (-1 = not allowed)."""

    unit = "token"
    _kind = "table"

    def __init__(self, symbols: str, aliases: dict[str, str]) -> None:
        self.symbols = symbols  # id -> the character it decodes to
        self.vocab_size = len(symbols)
        lut = np.full(256, -1, dtype=np.int16)
        for i, c in enumerate(symbols):
            lut[ord(c)] = i
            if c.isalpha():
                lut[ord(c.lower())] = i
        for src, dst in aliases.items():
            lut[ord(src)] = lut[ord(dst)]
            lut[ord(src.lower())] = lut[ord(dst)]
        self._lut = lut
        self._chars = np.frombuffer(symbols.encode("ascii"), dtype=np.uint8)

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of the letters of `text` as `np.uint8` `[len(text)]`; ValueError names a bad character."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            raw = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        except UnicodeEncodeError:
            raw = None
        ids = self._lut[raw] if raw is not None else None
        if ids is None or (ids.size and ids.min() < 0):
            pos, c = _first_bad(text, self._lut)
            raise ValueError(
                f"character {c!r} at position {pos} is not allowed by the {self._kind} tokenizer "
                f"(allowed: {self._allowed()})"
            )
        return ids.astype(np.uint8)

    def encode(self, text: str) -> list[int]:
        """Ids of the letters of `text`."""
        return self.encode_array(text).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` (uppercase letters, `"\\n"` for a separator); ValueError on an id out of range."""
        arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64).ravel()
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            bad = int(arr[(arr < 0) | (arr >= self.vocab_size)][0])
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.vocab_size})")
        return self._chars[arr].tobytes().decode("ascii")

    def _allowed(self) -> str:
        return "".join(chr(b) for b in range(256) if self._lut[b] >= 0 and chr(b) != SEPARATOR) + (
            " and '\\n'" if self._lut[ord(SEPARATOR)] >= 0 else ""
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class DNATokenizer(_TableTokenizer):
    """DNA bases: `A C G T N` = ids 0-4; IUPAC ambiguity codes read as N, U as T, lowercase as upper."""

    unit = "base"
    _kind = "DNA"

    def __init__(self) -> None:
        aliases = {c: "N" for c in DNA_AMBIGUOUS}
        aliases["U"] = "T"
        super().__init__(DNA_ALPHABET, aliases)

    def to_config(self) -> dict[str, Any]:
        return {"type": "dna"}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DNATokenizer)

    def __hash__(self) -> int:
        return hash("dna")


class ProteinTokenizer(_TableTokenizer):
    """Amino acids: the 20 standard letters, X, the separator `"\\n"`, and the rare letters.

    Args:
        rare: `"keep"` gives B, J, O, U, Z their own ids 22-26 (vocabulary 27); `"x"` reads them as X
            (vocabulary 22).
    """

    unit = "residue"
    _kind = "protein"

    def __init__(self, rare: str = "keep") -> None:
        if rare not in ("keep", "x"):
            raise ValueError(f"rare must be 'keep' or 'x', got {rare!r}")
        self.rare = rare
        symbols = AMINO_ACIDS + "X" + SEPARATOR
        if rare == "keep":
            super().__init__(symbols + PROTEIN_RARE, {})
        else:
            super().__init__(symbols, {c: "X" for c in PROTEIN_RARE})
        self.separator_id = len(AMINO_ACIDS) + 1  # 21

    def to_config(self) -> dict[str, Any]:
        return {"type": "protein", "rare": self.rare}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProteinTokenizer) and other.rare == self.rare

    def __hash__(self) -> int:
        return hash(("protein", self.rare))


def read_text_maybe_gz(source: str | os.PathLike | bytes) -> str:
    """Text of a file (gzip-compressed when it starts with the gzip magic) or of raw bytes, as ASCII."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("ascii")


def parse_fasta(text: str) -> Iterator[tuple[str, str]]:
    """Records of a FASTA text: `(header, sequence)` pairs.

    The header is the line after `>` without it; the sequence is the following lines joined, with
    whitespace removed and one trailing stop `*` dropped. Blank lines and `;` comment lines are skipped.
    Text before the first header is a ValueError.
    """
    header: str | None = None
    parts: list[str] = []
    for lineno, line in enumerate(io.StringIO(text), start=1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith(">"):
            if header is not None:
                yield header, _finish(parts)
            header, parts = line[1:].strip(), []
        elif header is None:
            raise ValueError(f"FASTA line {lineno} holds sequence before any '>' header: {line[:40]!r}")
        else:
            parts.append("".join(line.split()))
    if header is not None:
        yield header, _finish(parts)


def _finish(parts: list[str]) -> str:
    seq = "".join(parts)
    return seq[:-1] if seq.endswith("*") else seq


def _crc64_table() -> list[int]:
    table = []
    for i in range(256):
        part = i
        for _ in range(8):
            part = (part >> 1) ^ 0xD800000000000000 if part & 1 else part >> 1
        table.append(part)
    return table


_CRC64 = _crc64_table()


def swissprot_crc64(seq: str) -> str:
    """The CRC64 that Swiss-Prot prints on `SQ` lines (ISO 3309 polynomial, reflected, initial value 0)."""
    crc = 0
    for c in seq.encode("ascii"):
        crc = _CRC64[(crc ^ c) & 0xFF] ^ (crc >> 8)
    return f"{crc:016X}"


def parse_swissprot(text: str) -> Iterator[tuple[str, str]]:
    """Entries of a UniProt/Swiss-Prot flat file: `(entry name, sequence)` pairs.

    An entry starts at an `ID` line (its first word after `ID` is the name) and ends at `//`; the
    sequence is the lines after `SQ` (two-letter code blank), spaces removed. The length and the CRC64
    on the `SQ` line are checked against the sequence read: a mismatch is a ValueError.
    """
    name: str | None = None
    expected = -1
    crc = ""
    in_seq = False
    parts: list[str] = []
    for lineno, line in enumerate(io.StringIO(text), start=1):
        code = line[:2]
        if code == "ID":
            name, in_seq, parts, expected, crc = line[2:].split()[0], False, [], -1, ""
        elif code == "SQ":
            fields = line.split()
            # "SQ   SEQUENCE   472 AA;  52552 MW;  ..."
            expected = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else -1
            crc = fields[-2] if len(fields) > 2 and fields[-1] == "CRC64;" else ""
            in_seq = True
        elif code == "//":
            if name is None:
                raise ValueError(f"Swiss-Prot line {lineno}: '//' without an ID line")
            seq = "".join(parts)
            if expected >= 0 and len(seq) != expected:
                raise ValueError(
                    f"Swiss-Prot entry {name!r}: SQ line says {expected} residues, read {len(seq)}"
                )
            if crc and swissprot_crc64(seq) != crc:
                raise ValueError(
                    f"Swiss-Prot entry {name!r}: CRC64 {swissprot_crc64(seq)} != {crc} on its SQ line"
                )
            yield name, seq
            name, in_seq, parts = None, False, []
        elif in_seq and code == "  ":
            parts.append("".join(line.split()))
    if name is not None:
        raise ValueError(f"Swiss-Prot entry {name!r} is not terminated by '//'")
