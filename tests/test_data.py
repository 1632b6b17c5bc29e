"""Tokenizers and corpora: round trips, the honest split, token files, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ddm import tokenizers
from ddm.data import Corpus, TokenFile, build_token_file, bundled_text, encode_file, load_corpus, read_text
from ddm.errors import DataError
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


def test_unknown_character_policy():
    """The char tokenizer's unknown-character policy: `"error"` (an old config's), `"replace"` (a reserved
    id after the characters) or `"skip"`, recorded in its config."""
    old = tokenizers.from_config({"type": "char", "chars": "abc"})  # a config written before the policy
    assert (
        old.unknown == "error" and old.vocab_size == 3 and old.to_config() == {"type": "char", "chars": "abc"}
    )
    with pytest.raises(DataError, match=r"'z' \(U\+007A\) at position 2.*unknown='replace'"):
        old.encode("abz")
    rep = CharTokenizer("abc", unknown="replace")
    assert rep.vocab_size == 4 and rep.unk_id == 3
    assert rep.encode("abzc") == [0, 1, 3, 2]
    assert rep.decode(rep.encode("azb")) == "a\ufffdb"
    assert rep.to_config() == {"type": "char", "chars": "abc", "unknown": "replace"}
    assert tokenizers.from_config(rep.to_config()) == rep != old
    skip = tokenizers.from_config({"type": "char", "chars": "abc", "unknown": "skip"})
    assert skip.vocab_size == 3 and skip.encode("azbz") == [0, 1]
    with_eos = CharTokenizer("ab\x03", eos="\x03", unknown="replace")
    assert (with_eos.eos_id, with_eos.unk_id, with_eos.vocab_size) == (0, 3, 4)  # "\x03" sorts first
    with pytest.raises(ValueError, match="unknown must be one of"):
        CharTokenizer("abc", unknown="drop")


def test_unknown_policy_chosen_at_training_time(tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("abcabc" * 20, encoding="utf-8")
    corpus = load_corpus(src, tmp_path / "cache", unknown="replace")
    assert corpus.tokenizer.unk_id == 3 and corpus.tokenizer.vocab_size == 4
    assert corpus.tokenizer.encode("abq") == [0, 1, 3]
    plain = load_corpus(src, tmp_path / "cache2")
    assert plain.tokenizer.to_config() == {"type": "char", "chars": "abc"}  # the default is today's
    np.testing.assert_array_equal(np.asarray(plain.tokens), np.asarray(corpus.tokens))


# --- the user's data formats (ddm.data.formats) ---------------------------------------------------------


def _tokens(tmp_path, data, tokenizer="char", **kw):
    """The token stream of `data` and its tokenizer."""
    tf = build_token_file(data, tmp_path / "out" / "tok.bin", tokenizer, **kw)
    return np.asarray(tf.open()).tolist(), tokenizers.from_config(tf.tokenizer)


FASTA = ">chr1 the first\nACGTAC\nGTNNac\n\n>chr2\nttgca\n;a comment\nAAC\n"


@pytest.mark.parametrize("gz", [False, True])
def test_fasta_records_with_a_separator(tmp_path, gz):
    import gzip

    path = tmp_path / ("genome.fa.gz" if gz else "genome.fa")
    path.write_bytes(gzip.compress(FASTA.encode()) if gz else FASTA.encode())
    ids, tok = _tokens(tmp_path, path, "dna")
    assert tok.to_config() == {"type": "dna", "separator": True}  # several records: a separator token
    assert tok.decode(ids) == "ACGTACGTNNAC\nTTGCAAAC"  # line breaks and headers gone, "\n" between
    ids, tok = _tokens(tmp_path, path, "protein")
    assert tok.decode(ids) == "ACGTACGTNNAC\nTTGCAAAC" and ids.count(tok.eos_id) == 1


def test_one_record_and_one_line_dna(tmp_path):
    fa = tmp_path / "one.fasta"
    fa.write_text(">only\nACGT\nACGT\n")
    ids, tok = _tokens(tmp_path, fa, "dna")
    assert tok.to_config() == {"type": "dna"} and ids == [0, 1, 2, 3, 0, 1, 2, 3]  # the vocabulary of 5
    line = tmp_path / "seq.txt"
    line.write_text("ACGTN\n")  # print(seq) ends it with a line break
    ids, tok = _tokens(tmp_path, line, "dna")
    assert ids == [0, 1, 2, 3, 4] and tok.to_config() == {"type": "dna"}
    named = tmp_path / "genome.txt"  # FASTA under another name: its '>' header gives it away
    named.write_text(FASTA)
    assert _tokens(tmp_path, named, "dna")[1].decode(_tokens(tmp_path, named, "dna")[0]).startswith("ACGTAC")


def test_bytes_tokenizer_reads_raw_bytes(tmp_path):
    raw = "café\r\n".encode("latin-1") + bytes([0, 255, 3, 200])
    path = tmp_path / "latin1.txt"
    path.write_bytes(raw)
    ids, _ = _tokens(tmp_path, path, "bytes")
    assert ids == list(raw)


def test_decode_error_names_file_and_absolute_offset(tmp_path, monkeypatch):
    import ddm.data.tokens

    monkeypatch.setattr(ddm.data.tokens, "_CHUNK_CHARS", 7)  # the error falls in a late chunk
    good = "héllo wörld\n" * 500  # 2-byte characters: the byte offset is not the character position
    path = tmp_path / "mixed.txt"
    path.write_bytes(good.encode("utf-8") + b"\xe9t\xe9\n")
    offset = len(good.encode("utf-8"))
    with pytest.raises(
        DataError, match=rf"mixed\.txt.*byte\(s\) e9 at byte offset {offset}\b.*--tokenizer bytes"
    ):
        build_token_file(path, tmp_path / "tok.bin")
    for tokenizer in ("dna", "gpt2"):
        if tokenizer == "gpt2":
            pytest.importorskip("tiktoken")
        with pytest.raises(DataError, match=rf"byte offset {offset}\b"):
            build_token_file(path, tmp_path / "tok.bin", tokenizer)

    with pytest.raises(DataError, match=rf"mixed\.txt.*byte offset {offset}\b.*--tokenizer bytes"):
        read_text(path)


def test_jsonl_documents_joined_by_eos(tmp_path):
    import json

    path = tmp_path / "docs.jsonl"
    rows = [{"text": "first doc", "id": 1}, {"text": "second\nline", "id": 2}, {"text": "", "id": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n" + json.dumps({"text": "last"}) + "\n")
    ids, tok = _tokens(tmp_path, path)
    assert tok.eos == "\x03" and "{" not in tok.chars  # the text only, no JSON
    assert tok.decode(ids) == "first doc\x03second\nline\x03last"  # the empty document is dropped
    ids, tok = _tokens(tmp_path, path, separator="\n\n")
    assert tok.eos is None and tok.decode(ids) == "first doc\n\nsecond\nline\n\nlast"
    other = tmp_path / "body.jsonl"
    other.write_text('{"body": "a b"}\n{"body": "c"}\n')
    ids, tok = _tokens(tmp_path, other, text_field="body")
    assert tok.decode(ids) == "a b\x03c"
    with pytest.raises(DataError, match=r"body\.jsonl' line 1 has no field 'text' \(it has \['body'\]\)"):
        build_token_file(other, tmp_path / "x.bin")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl' line 2 is not JSON"):
        build_token_file(bad, tmp_path / "y.bin")
    corpus = load_corpus(other, tmp_path / "cache", text_field="body", val_fraction=0.0)
    assert corpus.tokenizer.decode(np.asarray(corpus.tokens).tolist()) == "a b\x03c"


def test_jsonl_with_gpt2_puts_end_of_text_between(tmp_path):
    pytest.importorskip("tiktoken")
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "Hello world"}\n{"text": "Bye"}\n')
    ids, tok = _tokens(tmp_path, path, "gpt2")
    assert ids == tok.encode("Hello world") + [tok.eot_id] + tok.encode("Bye")


def test_directory_and_glob(tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("bee")
    (d / "a.txt").write_text("ay")
    (d / "sub" / "c.txt").write_text("sea")
    (d / ".hidden").write_text("never")
    ids, tok = _tokens(tmp_path, d)
    assert tok.decode(ids) == "ay\x03bee\x03sea"  # sorted paths, hidden files skipped
    ids, tok = _tokens(tmp_path, str(d / "*.txt"))
    assert tok.decode(ids) == "ay\x03bee"
    with pytest.raises(FileNotFoundError, match="no data file matches"):
        build_token_file(str(d / "*.md"), tmp_path / "z.bin")
    tf = build_token_file(d, tmp_path / "d.bin")
    assert [f["path"] for f in tf.source["files"]] == [
        str(p.resolve()) for p in (d / "a.txt", d / "b.txt", d / "sub" / "c.txt")
    ]


@pytest.mark.parametrize("name", ["data.json", "reads.fastq"])
def test_unparsed_suffix_warns(tmp_path, name):
    path = tmp_path / name
    path.write_text('{"text": "abc"}\n')
    with pytest.warns(UserWarning, match="not parsed"):
        build_token_file(path, tmp_path / "tok.bin")


def test_plain_text_token_file_is_unchanged(tmp_path):
    """One plain text file gives the tokens and the provenance it always gave (no separator, no format)."""
    src = tmp_path / "c.txt"
    src.write_text("ab\r\ncd\n", encoding="utf-8")
    tf = build_token_file(src, tmp_path / "tok.bin")
    assert set(tf.source) == {"path", "size", "mtime_ns"} and tf.tokenizer == {
        "type": "char",
        "chars": "\nabcd",
    }
    assert tokenizers.from_config(tf.tokenizer).decode(tf.open().tolist()) == "ab\ncd\n"


def test_tokenizer_without_end_of_document_needs_a_separator(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "to be"}\n{"text": "or not"}\n')
    hamlet = tokenizers.get("hamlet")  # a fixed vocabulary without an eos
    with pytest.raises(DataError, match="no end-of-document token.*separator"):
        build_token_file(path, tmp_path / "tok.bin", hamlet)
    ids, _ = _tokens(tmp_path, path, hamlet, separator="\n")
    assert hamlet.decode(ids) == "to be\nor not"


def test_encode_file_reads_as_training_does(tmp_path):
    """`encode_file` gives a trained tokenizer's tokens of a file, read as `build_token_file` reads it."""
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "ab ba"}\n{"text": "abba"}\n')
    ids, tok = _tokens(tmp_path, path)
    np.testing.assert_array_equal(encode_file(path, tok), ids)
    fa = tmp_path / "g.fa"
    fa.write_text(FASTA)
    dna = tokenizers.DNATokenizer(separator=True)
    assert dna.decode(encode_file(fa, dna)) == "ACGTACGTNNAC\nTTGCAAAC"


def test_unseen_character_in_evaluation_text(tmp_path):
    """A model whose tokenizer replaces unseen characters scores any text; the default policy raises a
    DataError (one line at the command line) that says what to do."""
    from types import SimpleNamespace

    from ddm.eval.bound import text_blocks

    text = tmp_path / "eval.txt"
    text.write_text("abc€ab")
    rep = CharTokenizer("abc", unknown="replace")
    blocks = text_blocks(SimpleNamespace(tokenizer=rep, seq_len=3), read_text(text), 3)
    assert blocks.tolist() == [[0, 1, 2], [3, 0, 1]]
    with pytest.raises(DataError, match="'€'.*unknown='replace'"):
        text_blocks(SimpleNamespace(tokenizer=CharTokenizer("abc"), seq_len=3), read_text(text), 3)
