"""Parsers of the raw corpora: FASTA and UniProt/Swiss-Prot flat files (gzip or plain), and Wikipedia
XML cleaned with the rules of Mahoney's wikifil.

The sequence parsers yield `(name, sequence)` records as text; `ddm.tokenizers.bio` turns the sequences
into ids.
"""

from __future__ import annotations

import gzip
import io
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["parse_fasta", "parse_swissprot", "read_text_maybe_gz", "swissprot_crc64", "wikifil"]


def read_text_maybe_gz(source: str | os.PathLike | bytes) -> str:
    """Text of a file (gzip-compressed when it starts with the gzip magic) or of raw bytes, as ASCII."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("ascii")


def parse_fasta(text: str | Iterable[str]) -> Iterator[tuple[str, str]]:
    """Records of a FASTA text: `(header, sequence)` pairs.

    The header is the line after `>` without it; the sequence is the following lines joined, with
    whitespace removed and one trailing stop `*` dropped. Blank lines and `;` comment lines are skipped.
    Text before the first header is a ValueError.

    Args:
        text: the whole text, or its lines (an open text file: read one record at a time).
    """
    header: str | None = None
    parts: list[str] = []
    lines = io.StringIO(text) if isinstance(text, str) else text
    for lineno, line in enumerate(lines, start=1):
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


# ---------------------------------------------------------------------------------------------------------
# Cleaning Wikipedia XML (Mahoney's wikifil rules)
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
