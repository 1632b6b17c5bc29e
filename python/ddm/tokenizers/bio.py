"""DNA and protein tokenizers (the FASTA and Swiss-Prot parsers are in `ddm.data.parsers`).

Both tokenizers follow the ddm tokenizer contract (`encode(str) -> list[int]`, `decode(ids) -> str`,
`vocab_size`, `to_config()`), and add `encode_array(str) -> np.ndarray` for whole genomes and proteomes
(a table lookup over the ASCII bytes, no Python loop per letter).

DNA (`DNATokenizer`, vocabulary 5): `A C G T` are ids 0-3 and `N` (any base) is id 4. Lowercase letters
(soft-masked repeats) are read as uppercase. The IUPAC ambiguity codes `R Y S W K M B D H V` are mapped
to `N` on purpose: they stand for more than one base, and a model over four bases plus "unknown" is the
usual choice. `U` (RNA uracil) is read as `T`. Anything else (gaps `-`, digits, spaces) is a ValueError.
Decoding gives uppercase `ACGTN`, so a round trip is exact for uppercase `ACGTN` text. A corpus of
several sequences uses `DNATokenizer(separator=True)` (vocabulary 6): `"\\n"` (id 5) ends each one.

Protein (`ProteinTokenizer`): the 20 standard amino acids `ACDEFGHIKLMNPQRSTVWY` are ids 0-19, `X`
(unknown residue) is id 20, and the sequence separator `"\\n"` is id 21: a corpus of many proteins is
one stream with a separator between sequences, and training blocks are windows of that stream (packing,
as GPT-2 training does with its end-of-text token), so no padding is wasted. The rare letters are handled
explicitly by `rare`:
- `rare="keep"` (default): `B J O U Z` get their own ids 22-26 (B = Asx, D or N; J = Xle, I or L;
  O = pyrrolysine; U = selenocysteine; Z = Glx, E or Q), so every round trip is exact.
- `rare="x"`: the five are read as `X` (vocabulary 22): smaller, lossy for them.
Lowercase is read as uppercase; a trailing stop `*` must be removed by the parser (see
`ddm.data.parsers.parse_fasta`); any other character is a ValueError.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["AMINO_ACIDS", "DNA_ALPHABET", "DNATokenizer", "ProteinTokenizer"]

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
    """DNA bases: `A C G T N` = ids 0-4; IUPAC ambiguity codes read as N, U as T, lowercase as upper.

    Args:
        separator: add the record separator `"\\n"` as id 5, the end of a record (`eos_id`): the
            tokenizer of a corpus of several sequences (a FASTA file of several records), packed into
            one stream with the separator between records. False (default): the four bases and N only.
    """

    unit = "base"
    _kind = "DNA"

    def __init__(self, separator: bool = False) -> None:
        if not isinstance(separator, bool):
            raise TypeError(f"separator must be a bool, got {type(separator).__name__}")
        aliases = {c: "N" for c in DNA_AMBIGUOUS}
        aliases["U"] = "T"
        super().__init__(DNA_ALPHABET + (SEPARATOR if separator else ""), aliases)
        self.separator = separator
        if separator:
            self.separator_id = len(DNA_ALPHABET)  # 5
            self.eos_id = self.separator_id

    def to_config(self) -> dict[str, Any]:
        # the plain tokenizer's config stays what it always was
        return {"type": "dna", "separator": True} if self.separator else {"type": "dna"}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DNATokenizer) and other.separator == self.separator

    def __hash__(self) -> int:
        return hash(("dna", self.separator))


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
        # a protein is a document: the separator after each one is its end-of-sequence token
        self.eos_id = self.separator_id

    def to_config(self) -> dict[str, Any]:
        return {"type": "protein", "rare": self.rare}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ProteinTokenizer) and other.rare == self.rare

    def __hash__(self) -> int:
        return hash(("protein", self.rare))
