"""Tokenizers and corpora: round trips, the honest split, token files, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ddm import tokenizers
from ddm.data import Corpus, TokenFile, build_token_file, bundled_text, load_corpus
from ddm.tokenizers import ByteTokenizer, CharTokenizer


def test_char_tokenizer_round_trip_and_config():
    tok = CharTokenizer.from_text("hello world")
    assert tok.vocab_size == len(set("hello world"))
    ids = tok.encode("low")
    assert tok.decode(ids) == "low"
    assert tokenizers.from_config(tok.to_config()) == tok
    assert tok.chars == "".join(sorted(set("hello world")))


def test_unknown_character_is_named():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"'z'.*position 2"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([5])
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.from_text("")


def test_bytes_and_named_tokenizers():
    tok = tokenizers.get("bytes")
    assert isinstance(tok, ByteTokenizer)
    assert tok.decode(tok.encode("héllo")) == "héllo"
    ham = tokenizers.get("hamlet")
    text = bundled_text()
    assert len(text) > 170_000
    assert ham.decode(ham.encode(text[:500])) == text[:500]
    with pytest.raises(ValueError, match="unknown tokenizer"):
        tokenizers.get("gpt5")


def test_token_file_round_trip_and_reuse(tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("the quick brown fox\n" * 50, encoding="utf-8")
    tf = build_token_file(src, tmp_path / "tok.bin")
    assert tf.dtype == "uint16" and tf.n_tokens == 1000
    tok = tokenizers.from_config(tf.tokenizer)
    assert tok.decode(tf.open()[:20].tolist()) == "the quick brown fox\n"
    mtime = (tmp_path / "tok.bin").stat().st_mtime_ns
    again = build_token_file(src, tmp_path / "tok.bin")  # same source: reused, not rewritten
    assert again.n_tokens == 1000 and (tmp_path / "tok.bin").stat().st_mtime_ns == mtime
    assert TokenFile.read(tmp_path / "tok.bin").n_tokens == 1000
    # a token file loads directly as a corpus
    corpus = load_corpus(tmp_path / "tok.bin", tmp_path / "cache", val_fraction=0.1)
    assert isinstance(corpus.tokens, np.memmap)
    assert corpus.n_train == 900 and corpus.n_val == 100


def test_honest_split_and_batches(tmp_path):
    corpus = load_corpus("hamlet", tmp_path, val_fraction=0.1)
    n = corpus.tokens.size
    assert corpus.n_val == round(0.1 * n) and corpus.n_train + corpus.n_val == n
    g = torch.Generator().manual_seed(0)
    batch = corpus.batch(64, 32, g)
    assert batch.shape == (64, 32) and batch.dtype == torch.long
    # every block lies inside the training head: find each block's offset in the stream
    train = np.asarray(corpus.train_tokens)
    for row in batch[:8].numpy():
        starts = np.flatnonzero(train[: corpus.n_train - 31] == row[0])
        assert any(np.array_equal(train[s : s + 32], row) for s in starts)
    val = corpus.val_blocks(100)
    assert val.shape == (corpus.n_val // 100, 100)
    np.testing.assert_array_equal(val.flatten().numpy(), np.asarray(corpus.val_tokens[: val.numel()]))
    # same seed, same batches
    b1 = corpus.batch(4, 16, torch.Generator().manual_seed(5))
    b2 = corpus.batch(4, 16, torch.Generator().manual_seed(5))
    assert torch.equal(b1, b2)


def test_bad_data_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(empty, tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus(tmp_path / "missing.txt", tmp_path / "cache")
    small = tmp_path / "small.txt"
    small.write_text("abcdefghij" * 3)
    corpus = load_corpus(small, tmp_path / "cache2", val_fraction=0.1)
    with pytest.raises(ValueError, match="seq_len"):
        corpus.batch(2, 64, torch.Generator())
    with pytest.raises(ValueError, match="val_fraction"):
        Corpus(np.zeros(10, dtype=np.uint16), CharTokenizer("a"), 1.0)


def test_streaming_tokenization_in_small_chunks(tmp_path, monkeypatch):
    import ddm.data.tokens

    text = "".join(f"line {i}: {'xyz' * (i % 5)}\n" for i in range(200)) + "no newline at the end"
    src = tmp_path / "t.txt"
    src.write_text(text, encoding="utf-8")
    monkeypatch.setattr(ddm.data.tokens, "_CHUNK_CHARS", 7)  # forces many chunks, some without a line break
    tf = build_token_file(src, tmp_path / "t.bin")
    tok = tokenizers.from_config(tf.tokenizer)
    assert tf.n_tokens == len(text)
    assert tok.decode(tf.open().tolist()) == text
