"""Named datasets: wikifil cleaning, parsers, sha256 checks, fetch errors, the cache and token files.

Everything here runs offline on the slices in tests/data/ and on small archives built in tmp_path. The
tests at the end read the real archives only when they are already in the cache (`ddm data fetch NAME`),
and are skipped otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import ddm.data.parsers as P
import ddm.data.registry as D
import ddm.data.sources as S
import ddm.data.tokens
import numpy as np
import pytest
from ddm.data.parsers import parse_fasta, parse_swissprot, swissprot_crc64
from ddm.tokenizers import DNATokenizer, ProteinTokenizer

DATA = Path(__file__).parent / "data"


# --- wikifil --------------------------------------------------------------------------------------------


def test_wikifil_on_excerpt_matches_hand_derived_output():
    # Derived by hand from the rules in `wikifil`'s docstring: the redirect page and the empty page are
    # dropped; template, table, reference, comment, URL, image options and the interlanguage link vanish;
    # link labels, the image caption and the category name stay; digits are spelled out; "&amp;amp;"
    # decodes to the entity "&amp;", which becomes a space; the comment in <comment> is not article text.
    got = P.wikifil((DATA / "wiki_excerpt.xml").read_text())
    assert got == (
        "zebras are african horses with three stripes see the zoo more "
        "a zebra in one nine nine nine in two zero one six ad q a r d end equids hello world"
    )


@pytest.mark.parametrize(
    ("wikitext", "expected"),
    [
        ("A [[b|c]] d", "a c d"),
        ("x {{t|{{u}}}} y", "x y"),  # innermost template, then the brace left over is not a letter
        ("[[Category:Foo bar|k]]", "foo bar"),
        ("[[fr:Chose]] z", "z"),
        ("007", "zero zero seven"),
        ("caf\u00e9 na\u00efve", "caf na ve"),
        ("#Redirect [[x]]", ""),
    ],
)
def test_wikifil_single_rules(wikitext, expected):
    xml = f'<page><text xml:space="preserve">{wikitext}</text></page><page><text>z</text></page>'
    got = P.wikifil(xml)
    assert got == (f"{expected} z" if expected else "z")


# --- parsers --------------------------------------------------------------------------------------------


def test_parse_fasta_ecoli_head():
    records = list(parse_fasta((DATA / "ecoli_head.fa").read_text()))
    assert len(records) == 1
    header, seq = records[0]
    assert header == "K-12-MG1655"
    assert len(seq) == 20 * 70
    assert seq.startswith("AGCTTTTCATTCTGACTGCAACGGGCAATATGTCTCTGTG")  # the published start of MG1655
    assert set(seq) <= set("ACGT")


def test_parse_fasta_records_comments_and_stop():
    text = "; comment\n>a first\nAC GT\n\nNN\n>b\nMKV*\n>c\n"
    assert list(parse_fasta(text)) == [("a first", "ACGTNN"), ("b", "MKV"), ("c", "")]
    with pytest.raises(ValueError, match="before any '>' header"):
        list(parse_fasta("ACGT\n>a\nAC\n"))


def test_parse_fasta_protein_slice():
    records = list(parse_fasta((DATA / "tursiops_slice.fa").read_text()))
    assert [h.split()[0] for h, _ in records] == [
        "ENSTTRP00000007202",
        "ENSTTRP00000007204",
        "ENSTTRP00000007206",
        "ENSTTRP00000005431",
    ]
    assert "U" in records[3][1]  # a selenoprotein
    tok = ProteinTokenizer()
    stream = "".join(s + "\n" for _, s in records)
    ids = tok.encode_array(stream)
    assert int((ids == tok.separator_id).sum()) == 4
    assert tok.decode(ids) == stream


def test_parse_swissprot_slice_with_crc64():
    entries = list(parse_swissprot((DATA / "swissprot_slice.dat").read_text()))
    assert [n for n, _ in entries] == ["FLAV_NOSSM", "FLAV_CLOSA"]
    assert entries[0][1] == "SKKIGLFYGTZTGKTESVAEIIDEFGDEVVTLDID"  # 35 residues with a Z (Glx)
    assert len(entries[1][1]) == 160
    assert swissprot_crc64(entries[0][1]) == "B6EEB5CA7A45DDA6"  # printed on its SQ line


def test_parse_swissprot_rejects_corrupted_sequence():
    text = (DATA / "swissprot_slice.dat").read_text().replace("SKKIGLFYGT", "SKKIGLFYGA", 1)
    with pytest.raises(ValueError, match="CRC64"):
        list(parse_swissprot(text))
    text = (DATA / "swissprot_slice.dat").read_text().replace("SKKIGLFYGT", "SKKIGLFYG", 1)
    with pytest.raises(ValueError, match="says 35 residues, read 34"):
        list(parse_swissprot(text))


# --- archives: sha256, fetch errors, reading members ----------------------------------------------------


def _make_wheel(path: Path, files: dict[str, bytes]) -> S.Source:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return S.Source("pip", "fakepkg", "1.0", path.name, sha)


def test_sha256_verification_fails_on_corrupted_archive(tmp_path):
    cache = tmp_path / "cache"
    (cache / "archives").mkdir(parents=True)
    src = _make_wheel(cache / "archives" / "fakepkg-1.0-py3-none-any.whl", {"pkg/a.txt": b"hello"})
    assert S.fetch_archive(src, cache) == cache / "archives" / src.filename  # cached and valid: no download
    path = cache / "archives" / src.filename
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(S.ChecksumError, match=f"expected {src.sha256}.*Delete it and fetch again"):
        S.fetch_archive(src, cache)


def test_fetch_failure_message_says_package_command_and_where(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, cwd):
        calls.append(cmd)
        return 1, "ERROR: No matching distribution found for fakepkg==1.0"

    monkeypatch.setattr(S, "_run", fake_run)
    src = S.Source("pip", "fakepkg", "1.0", "fakepkg-1.0.tar.gz", "0" * 64)
    with pytest.raises(S.FetchError) as info:
        S.fetch_archive(src, tmp_path)
    msg = str(info.value)
    assert "fakepkg==1.0" in msg and "pip download --no-deps" in msg
    assert "No matching distribution" in msg
    assert str(tmp_path / "archives") in msg and "fakepkg-1.0.tar.gz" in msg
    assert calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert not (tmp_path / "archives" / "fakepkg-1.0.tar.gz").exists()


def test_apt_fetch_updates_lists_once_then_retries(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, cwd):
        calls.append(cmd)
        if cmd == ["apt-get", "update"]:
            return 0, ""
        return 100, "E: Unable to locate package fake-data"

    monkeypatch.setattr(S, "_run", fake_run)
    monkeypatch.setattr(S, "_apt_updated", False)
    src = S.Source("apt", "fake-data", "1-1", "fake-data_1-1_all.deb", "0" * 64)
    with pytest.raises(S.FetchError, match="apt-get download fake-data=1-1"):
        S.fetch_archive(src, tmp_path)
    assert calls == [
        ["apt-get", "download", "fake-data=1-1"],
        ["apt-get", "update"],
        ["apt-get", "download", "fake-data=1-1"],
    ]


def test_read_members_deb_tar_and_zip(tmp_path):
    import io
    import tarfile

    # A minimal .deb: an ar archive with debian-binary, control.tar.xz and data.tar.xz.
    def tar_xz(files: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as t:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    def ar_member(name: str, data: bytes) -> bytes:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        return header + data + (b"\n" if len(data) % 2 else b"")

    data = tar_xz({"./usr/share/x/seq.fa": b">a\nACGT\n", "./usr/share/x/other.txt": b"no"})
    deb = tmp_path / "x_1_all.deb"
    deb.write_bytes(
        b"!<arch>\n"
        + ar_member("debian-binary", b"2.0\n")
        + ar_member("control.tar.xz", tar_xz({"./control": b"Package: x\n"}))
        + ar_member("data.tar.xz", data)
    )
    assert S.read_members(deb, "usr/share/x/*.fa") == {"usr/share/x/seq.fa": b">a\nACGT\n"}
    with pytest.raises(ValueError, match="no file of"):
        S.read_members(deb, "usr/share/y/*")


# --- token files: written once, reused, memory-mapped ---------------------------------------------------


def test_token_file_written_once_and_reused(tmp_path):
    tok = DNATokenizer()
    path = tmp_path / "t" / "train.bin"
    text = "ACGTN" * 1000 + "acgt"
    D.write_token_file(text, tok, path, {"dataset": "x"})
    meta = json.loads(Path(str(path) + ".json").read_text())
    assert meta == {
        "dtype": "uint8",
        "n_tokens": 5004,
        "tokenizer": {"type": "dna"},
        "source": {"dataset": "x"},
    }
    arr = np.memmap(path, dtype=meta["dtype"], mode="r")
    np.testing.assert_array_equal(arr[:5], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(arr[-4:], [0, 1, 2, 3])
    stat = path.stat()
    D.write_token_file(text, tok, path, {"dataset": "x"})  # same source and tokenizer: untouched
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_ino == stat.st_ino
    D.write_token_file("ACG", tok, path, {"dataset": "y"})  # another source: rewritten
    assert json.loads(Path(str(path) + ".json").read_text())["n_tokens"] == 3
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]


def test_chunked_tokenization_equals_whole(tmp_path, monkeypatch):
    pytest.importorskip("tiktoken")
    from ddm.tokenizers.gpt2 import GPT2Tokenizer

    text = (
        "It's the 3rd time: \"Hello,\" she said -- and then?\n\nHe didn't answer;  he'd gone (twice).\n"
        "Numbers 12345 and caf\u00e9 na\u00efve \u4e2d\u6587 tabs\there.  Two  spaces, then\nnew lines.\n"
    ) * 20
    monkeypatch.setattr(
        ddm.data.tokens, "_CHUNK_CHARS", 97
    )  # many cuts, each before a whitespace between two words
    tok = GPT2Tokenizer()
    path = D.write_token_file(text, tok, tmp_path / "g.bin")
    meta = json.loads(Path(str(path) + ".json").read_text())
    assert meta["dtype"] == "uint16"
    arr = np.memmap(path, dtype="uint16", mode="r")
    assert arr.tolist() == tok.encode(text)
    assert "".join(ddm.data.tokens.chunks(ddm.data.tokens.text_pieces(text))) == text


@pytest.fixture
def fake_dataset(tmp_path, monkeypatch):
    """A registered dataset whose archive (a small wheel holding a FASTA file) is already in the cache."""
    cache = tmp_path / "cache"
    (cache / "archives").mkdir(parents=True)
    genome = "".join("ACGT"[(i * 7 + i // 3) % 4] for i in range(2000))
    fasta = ">chr\n" + "\n".join(genome[i : i + 60] for i in range(0, len(genome), 60)) + "\n"
    src = _make_wheel(cache / "archives" / "fakepkg-1.0-py3-none-any.whl", {"fakepkg/g.fa": fasta.encode()})

    def parse(archive):
        return D._genome(archive, "fakepkg/g.fa")

    ds = D.Dataset("fake-dna", "a test genome", src, parse, {"type": "dna"}, "none", "2 k bases")
    monkeypatch.setitem(D.REGISTRY, "fake-dna", ds)
    monkeypatch.setenv("DDM_CACHE", str(cache))
    return genome, cache


def test_dataset_pipeline_offline(fake_dataset):
    genome, cache = fake_dataset
    assert D.cache_dir() == cache
    parts = {s: D.tokens("fake-dna", s) for s in D.SPLITS}
    assert [parts[s].size for s in D.SPLITS] == [1800, 100, 100]  # contiguous 90/5/5
    assert DNATokenizer().decode(np.concatenate([parts[s] for s in D.SPLITS])) == genome
    assert isinstance(parts["train"], np.memmap) and parts["train"].dtype == np.uint8
    row = [r for r in D.list_datasets() if r["name"] == "fake-dna"][0]
    assert row["cached"] is True
    path = D.token_file("fake-dna", "valid")
    mtime = path.stat().st_mtime_ns
    assert D.token_file("fake-dna", "valid") == path and path.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="not a character corpus"):
        D.token_file("fake-dna", "train", "char")


def test_dataset_cli_offline(fake_dataset, capsys):
    from ddm.cli import main as ddm_main

    assert ddm_main(["data", "fetch", "fake-dna"]) == 0
    out = capsys.readouterr().out
    assert "fake-dna train: 1800 tokens (bases), vocabulary 5" in out
    assert ddm_main(["data", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("fake-dna") and " cached " in line for line in lines)
    assert any(line.startswith("minitext8") for line in lines)


def test_dataset_cli_reports_fetch_failure(fake_dataset, monkeypatch, capsys):
    from ddm.cli import main as ddm_main

    monkeypatch.setattr(S, "_run", lambda cmd, cwd: (1, "ERROR: network is unreachable"))
    monkeypatch.setattr(S, "_apt_updated", True)
    assert ddm_main(["data", "fetch", "swissprot-small"]) == 1
    err = capsys.readouterr().err
    assert "could not fetch emboss-test==6.6.0+dfsg-12" in err and "network is unreachable" in err


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'text8'"):
        D.prepare("text8")
    with pytest.raises(ValueError, match="split must be one of"):
        D.read_split("minitext8", "dev")


def test_unigram_bits_closed_form():
    train = np.array([0, 0, 1, 1])
    held = np.array([0, 1, 1, 1])
    got = D.unigram_bits(train, held, vocab_size=2)
    h = -(0.25 * np.log2(0.25) + 0.75 * np.log2(0.75))
    assert got["entropy"] == pytest.approx(h, abs=1e-12)
    assert got["cross_entropy"] == pytest.approx(1.0, abs=1e-12)  # add-one: q = (3/6, 3/6)


def test_registry_pins():
    for d in D.REGISTRY.values():
        assert len(d.source.sha256) == 64 and int(d.source.sha256, 16) >= 0
        assert d.source.manager in ("pip", "apt")
        assert d.source.version in d.source.filename
        assert d.tokenizer["type"] in ("char", "dna", "protein")


# --- the real archives, when cached ---------------------------------------------------------------------


def _cached(name: str) -> bool:
    return (D.cache_dir() / "archives" / D.REGISTRY[name].source.filename).is_file()


def _needs(name: str):
    return pytest.mark.skipif(
        not _cached(name), reason=f"archive of {name} not cached (run `ddm data fetch {name}`)"
    )


@pytest.fixture
def real_cache(tmp_path, monkeypatch):
    """A fresh cache whose archives/ links to the real cache's archives (so nothing is downloaded)."""
    real = D.cache_dir()
    (tmp_path / "archives").mkdir()
    for p in (real / "archives").iterdir():
        os.symlink(p, tmp_path / "archives" / p.name)
    monkeypatch.setenv("DDM_CACHE", str(tmp_path))
    return tmp_path


@_needs("minitext8")
def test_real_minitext8(real_cache):
    parts = {s: D.read_split("minitext8", s) for s in D.SPLITS}
    n = sum(len(t) for t in parts.values())
    assert 2.9e6 < n < 3.2e6
    assert parts["train"].startswith("anarchism is a political philosophy")
    assert set("".join(parts.values())) == set(" abcdefghijklmnopqrstuvwxyz")
    assert "  " not in parts["train"]


@_needs("ecoli")
def test_real_ecoli(real_cache):
    seq = "".join(D.read_split("ecoli", s) for s in D.SPLITS)
    assert len(seq) == 4_639_675  # E. coli K-12 MG1655, GenBank U00096.2 (NC_000913.2)
    assert seq.startswith("AGCTTTTCATTCTGACTGCA")


@_needs("swissprot-small")
def test_real_swissprot_small(real_cache):
    parts = {s: D.read_split("swissprot-small", s) for s in D.SPLITS}
    assert [t.count("\n") for t in parts.values()] == [90, 5, 5]
    arr = D.tokens("swissprot-small", "train")
    assert ProteinTokenizer().decode(arr) == parts["train"]


@_needs("shakespeare")
def test_real_shakespeare(real_cache):
    parts = {s: D.read_split("shakespeare", s) for s in D.SPLITS}
    assert sum(len(t) for t in parts.values()) == pytest.approx(5.06e6, rel=0.01)
    assert "TWELFTH NIGHT" in parts["valid"].upper() and "TWELFTH NIGHT" not in parts["train"].upper()
    tok = D.dataset_tokenizer("shakespeare")
    assert tok.decode(D.tokens("shakespeare", "test")) == parts["test"]


def test_corpus_tail_is_the_validation_split(fake_dataset):
    torch = pytest.importorskip("torch")
    c = D.corpus("fake-dna")
    np.testing.assert_array_equal(c.train_tokens, D.tokens("fake-dna", "train"))
    np.testing.assert_array_equal(c.val_tokens, D.tokens("fake-dna", "valid"))
    x = c.batch(4, 32, torch.Generator().manual_seed(0))
    assert x.shape == (4, 32) and x.dtype == torch.long and int(x.max()) < 5
    assert D.corpus("fake-dna").tokens.filename == c.tokens.filename  # reused, not rewritten
