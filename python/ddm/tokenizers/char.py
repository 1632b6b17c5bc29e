"""The tokenizer contract, a character-level tokenizer built from a corpus, and UTF-8 bytes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

__all__ = ["ByteTokenizer", "CharTokenizer", "Tokenizer"]


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
    """

    unit = "char"

    def __init__(self, chars: str | Iterable[str], eos: str | None = None) -> None:
        chars = sorted(set(chars))
        if not chars:
            raise ValueError("CharTokenizer needs at least one character")
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"CharTokenizer characters must be single characters, got {c!r}")
        self.chars = "".join(chars)
        self.vocab_size = len(self.chars)
        self._index = {c: i for i, c in enumerate(self.chars)}
        if eos is not None and eos not in self._index:
            raise ValueError(f"CharTokenizer eos {eos!r} must be one of its characters")
        self.eos = eos
        self.eos_id: int | None = None if eos is None else self._index[eos]

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The tokenizer whose vocabulary is the set of characters of `text`."""
        if not text:
            raise ValueError("cannot build a character tokenizer from empty text")
        return cls(set(text))

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of `text`; raises ValueError naming an unknown character."""
        index = self._index
        try:
            return [index[c] for c in text]
        except KeyError as e:
            c = e.args[0]
            pos = text.index(c)
            raise ValueError(
                f"character {c!r} (U+{ord(c):04X}) at position {pos} is not in the tokenizer's vocabulary "
                f"of {self.vocab_size} characters"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids; raises ValueError on an id outside the vocabulary."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            out.append(self.chars[i])
        return "".join(out)

    def to_config(self) -> dict[str, Any]:
        if self.eos is None:  # the config of a tokenizer without documents stays what it always was
            return {"type": "char", "chars": self.chars}
        return {"type": "char", "chars": self.chars, "eos": self.eos}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars and other.eos == self.eos

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class ByteTokenizer:
    """UTF-8 bytes, vocabulary 256: any text encodes; decoding replaces invalid UTF-8."""

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
