"""Issue 30: label-conditioned training (a JSONL label field, keyed label dropout, the label names in the
checkpoint)."""

from __future__ import annotations

import json

import pytest
import torch
from _tiny import tiny_run
from ddm import load, sample
from ddm.data import load_corpus
from ddm.data.labels import read_labels
from ddm.data.order import make_order
from ddm.errors import DataError, InvalidArgument
from ddm.io.hub import model_card
from ddm.training import train
from ddm.training.config import TrainConfig
from ddm.training.labels import batch_labels, keyed_label_drop, labelled_corpus

DOCS = [
    ("to be or not to be, that is the question", "hamlet"),
    ("the lady doth protest too much", "hamlet"),
    ("all the world's a stage, and all the men", "asyoulike"),
    ("a rose by any other name", "romeo"),
] * 6


def _jsonl(path, docs=DOCS, field="play"):
    path.write_text("".join(json.dumps({"text": t, field: y}) + "\n" for t, y in docs))
    return path


def test_labelled_training_stores_the_names_and_samples(tmp_path):
    data = _jsonl(tmp_path / "plays.jsonl")
    ckpt = train(tiny_run(tmp_path / "run", data=str(data), label_field="play", cond_dropout=0.2, steps=3,
                          save_every=3, eval_sequences=1))  # fmt: skip
    model = load(ckpt)
    assert model.num_classes == 3 and model.label_names == ["asyoulike", "hamlet", "romeo"]
    assert "label_embed.weight" in model.state_dict()
    x = sample(model, 3, batch_size=2, seed=0, label="romeo", guidance=2.0)
    assert x.shape == (2, model.seq_len)
    with pytest.raises(InvalidArgument, match="unknown label 'lear'"):
        sample(model, 3, label="lear")


def test_label_dropout_is_keyed_per_row():
    """The dropped labels of a row depend on (seed, step, row) only: any split of the rows agrees."""
    labels = torch.arange(64) % 3
    rows = torch.arange(64)
    full = keyed_label_drop(labels, 0.3, 3, seed=4, step=7, rows=rows)
    parts = torch.cat(
        [keyed_label_drop(labels[a:b], 0.3, 3, 4, 7, rows[a:b]) for a, b in ((0, 10), (10, 64))]
    )
    assert torch.equal(full, parts)
    dropped = float((full == 3).double().mean())
    assert 0.1 < dropped < 0.5  # 0.3 of 64 rows
    assert torch.equal(keyed_label_drop(labels, 0.0, 3, 4, 7, rows), labels)


def test_bad_label_input(tmp_path):
    for p in (1.0, -0.1):
        with pytest.raises(InvalidArgument, match="cond_dropout"):
            TrainConfig.from_dict({"cond_dropout": p})
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "a", "play": "x"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    with pytest.raises(DataError, match="line 2 has no label field 'play'"):
        read_labels(bad, "play")
    text = tmp_path / "plain.txt"
    text.write_text("hello")
    with pytest.raises(DataError, match="needs JSONL"):
        read_labels(text, "play")
    with pytest.raises(InvalidArgument, match="label_field needs objective"):
        TrainConfig.from_dict({"label_field": "play", "objective": "autoregressive"})


def test_cli_trains_with_labels_and_samples_guided(tmp_path, capsys):
    from ddm.cli import main  # the CLI is the layer above everything this file imports

    data = _jsonl(tmp_path / "plays.jsonl")
    run = tmp_path / "cli"
    args = ["train", "--data", str(data), "--label-field", "play", "--cond-dropout", "0.25",
            "--run-dir", str(run), "--steps", "2", "--save-every", "2", "--eval-every", "0",
            "--eval-sequences", "1", "--hidden", "32", "--heads", "2", "--blocks", "1", "--cond-dim", "16",
            "--seq-len", "16", "--batch-size", "4", "--no-progress", "--no-plot"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    ckpt = str(sorted(run.glob("checkpoint*"))[-1])
    assert main(["sample", "--checkpoint", ckpt, "--steps", "3", "--num", "2", "--label", "hamlet",
                 "--guidance", "2", "--no-progress"]) == 0  # fmt: skip
    assert main(["sample", "--checkpoint", ckpt, "--steps", "3", "--label", "lear", "--no-progress"]) != 0
    assert "unknown label 'lear'" in capsys.readouterr().err


def test_model_card_lists_the_labels():
    card = model_card({"objective": "diffusion", "model": {"num_classes": 2, "label_names": ["cat", "dog"]}})
    assert "## Class labels" in card and "`cat`, `dog`" in card
    assert "Class labels" not in model_card({"objective": "diffusion", "model": {"num_classes": 0}})


@pytest.mark.parametrize("order_name", ["random", "epochs"])
def test_labels_follow_the_data_order(tmp_path, order_name):
    """Each row's label is the label of the document its block starts in, in either data order."""
    docs = [(letter * 40, letter) for letter in "abcab" * 4]
    data = _jsonl(tmp_path / "letters.jsonl", docs, field="letter")
    fields = dict(data=str(data), label_field="letter", cond_dropout=0.0, seq_len=8, batch_size=16)
    cfg = TrainConfig.from_dict(dict(fields, val_fraction=0.1, run_dir=str(tmp_path / "r")))
    corpus = labelled_corpus(load_corpus(str(data), tmp_path / "cache", **cfg.corpus_options()), cfg)
    assert corpus.names == ["a", "b", "c"]
    order = make_order(order_name, corpus, cfg.seq_len, cfg.seed, cfg.batch_size)
    for step in (0, 3, 11):
        rows = torch.arange(16)
        x0 = order.batch(step, rows)
        labels = batch_labels(corpus, order, cfg, step, rows)
        first = [corpus.tokenizer.decode([int(t)]) for t in x0[:, 0]]
        for ch, lab in zip(first, labels.tolist(), strict=True):
            assert ch == corpus.names[lab] or ch not in "abc"  # a block may start on the separator
