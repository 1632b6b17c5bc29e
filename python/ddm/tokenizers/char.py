"""The tokenizer contract, a character-level tokenizer built from a corpus, and UTF-8 bytes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from ddm.errors import DataError

__all__ = ["UNKNOWN_POLICIES", "ByteTokenizer", "CharTokenizer", "Tokenizer"]

UNKNOWN_POLICIES = ("error", "replace", "skip")  # what `CharTokenizer.encode` does with an unseen character
UNKNOWN_TEXT = "\ufffd"  # what the reserved id of `unknown="replace"` decodes to


class Tokenizer(Protocol):
    """What the rest of ddm needs from a tokenizer."""

    vocab_size: int
    unit: str  # what one token is, for reporting: "char", "byte" or "token"

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def to_config(self) -> dict[str, Any]: ...


class CharTokenizer:
    """One id per character, ids in the sorted order of the characters.

    Args:
        chars: the vocabulary: distinct characters (sorted on construction).
        eos: a character of `chars` that ends a document (a corpus of several documents has it after
            each), or None; its id is `eos_id` (block diffusion stops a sample there, `ddm.sample`).
        unknown: what `encode` does with a character outside `chars`, chosen when the vocabulary is
            built from the training corpus and recorded in the config: `"error"` (a `DataError` naming
            it; the behaviour of a config without the field), `"replace"` (a reserved id `unk_id`, one
            past the characters, that training never sees; it decodes to U+FFFD) or `"skip"` (dropped,
            so the encoding is shorter than the text).
    """

    unit = "char"

    def __init__(self, chars: str | Iterable[str], eos: str | None = None, unknown: str = "error") -> None:
        chars = sorted(set(chars))
        if not chars:
            raise ValueError("CharTokenizer needs at least one character")
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"CharTokenizer characters must be single characters, got {c!r}")
        if unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"CharTokenizer unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
        self.chars = "".join(chars)
        self.unknown = unknown
        self.unk_id: int | None = len(self.chars) if unknown == "replace" else None
        self.vocab_size = len(self.chars) + (unknown == "replace")
        self._index = {c: i for i, c in enumerate(self.chars)}
        if eos is not None and eos not in self._index:
            raise ValueError(f"CharTokenizer eos {eos!r} must be one of its characters")
        self.eos = eos
        self.eos_id: int | None = None if eos is None else self._index[eos]

    @classmethod
    def from_text(cls, text: str, unknown: str = "error") -> CharTokenizer:
        """The tokenizer whose vocabulary is the set of characters of `text`."""
        if not text:
            raise ValueError("cannot build a character tokenizer from empty text")
        return cls(set(text), unknown=unknown)

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of `text`; an unknown character follows `unknown` (`"error"`: a
        `DataError` naming it and its position)."""
        index = self._index
        if self.unk_id is not None:
            unk = self.unk_id
            return [index.get(c, unk) for c in text]
        if self.unknown == "skip":
            return [index[c] for c in text if c in index]
        try:
            return [index[c] for c in text]
        except KeyError as e:
            c = e.args[0]
            pos = text.index(c)
            raise DataError(
                f"character {c!r} (U+{ord(c):04X}) at position {pos} is not in the tokenizer's vocabulary "
                f"of {self.vocab_size} characters (the characters of its training corpus); train with "
                "unknown='replace' (a reserved token) or unknown='skip' to accept unseen characters"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids (`unk_id` decodes to U+FFFD); raises ValueError on an id outside the vocabulary."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            out.append(UNKNOWN_TEXT if i == self.unk_id else self.chars[i])
        return "".join(out)

    def to_config(self) -> dict[str, Any]:
        # Fields at their defaults are left out: the config of a tokenizer without documents or a policy
        # stays what it always was.
        config: dict[str, Any] = {"type": "char", "chars": self.chars}
        if self.eos is not None:
            config["eos"] = self.eos
        if self.unknown != "error":
            config["unknown"] = self.unknown
        return config

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.to_config() == self.to_config()

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class ByteTokenizer:
    """UTF-8 bytes, vocabulary 256: any text encodes; decoding replaces invalid UTF-8.

    `ddm.data.build_token_file` reads a plain data file as its raw bytes (never decoded), so latin-1 or
    binary data trains as it is.
    """

    unit = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        data = []
        for i in ids:
            i = int(i)
            if not 0 <= i < 256:
                raise ValueError(f"token id {i} is outside the byte vocabulary [0, 256)")
            data.append(i)
        return bytes(data).decode("utf-8", errors="replace")

    def to_config(self) -> dict[str, Any]:
        return {"type": "bytes"}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer)

    def __repr__(self) -> str:
        return "ByteTokenizer()"
