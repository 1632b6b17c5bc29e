"""The Hugging Face Hub layout (`ddm.io.hub`): save_pretrained / from_pretrained / push_to_hub, and Hub ids
in `ddm.load` resolved through a pre-populated offline cache. No test reaches the network: the cache is a
temporary directory, `HF_HUB_OFFLINE=1` is set, and socket connections raise."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import ddm
import pytest
import torch
from ddm.graphs import Absorbing
from ddm.io.sedd import export_sedd
from ddm.model import ModelConfig, ScoreModel
from ddm.schedules import LogLinear
from ddm.tokenizers import CharTokenizer

hub = pytest.importorskip("huggingface_hub")
constants = pytest.importorskip("huggingface_hub.constants")

from _tiny import tiny_run  # noqa: E402

CHARS = "abcdefgh \n"
REV = "0123456789abcdef0123456789abcdef01234567"  # a commit hash, as the Hub's


def _model(seed: int = 0, tokenizer: bool = True) -> ScoreModel:
    tok = CharTokenizer(CHARS)
    cfg = ModelConfig(hidden=32, heads=2, blocks=1, cond_dim=16, seq_len=16, dropout=0.0)
    model = ScoreModel(cfg, Absorbing(tok.vocab_size), LogLinear(), tokenizer=tok if tokenizer else None)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialised layers too, so outputs tell weights apart
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, vocab: int) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, vocab, (3, 16), generator=g)
    sigma = torch.tensor([0.1, 1.0, 5.0])
    with torch.no_grad():
        assert torch.equal(a(x, sigma), b(x, sigma))


def seed_cache(cache: Path, repo_id: str, files: Path, revision: str = REV) -> Path:
    """Writes `files/*` into the Hugging Face cache layout: `models--user--repo/blobs/<sha256>`,
    `snapshots/<revision>/<name>` links to the blobs, and `refs/main` naming the revision."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for f in sorted(files.iterdir()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snap


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in `tmp_path`, offline mode on, and no socket may connect."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError(f"a test tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return cache


def test_save_pretrained_layout_and_round_trip(tmp_path):
    model = _model()
    out = model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format_version"] == 1 and cfg["library_name"] == "ddm"
    assert cfg["graph"] == model.graph.to_config() and cfg["tokenizer"] == model.tokenizer.to_config()
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: ddm\n") and "Not measured" in card
    for back in (ddm.load(out), ScoreModel.from_pretrained(out), ScoreModel.from_pretrained(str(out))):
        assert isinstance(back, ScoreModel) and not back.training
        assert back.tokenizer == model.tokenizer
        _same_outputs(model, back, len(CHARS))
    model.save_pretrained(out)  # an existing directory: the files are replaced
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_model_card_carries_training_config_and_measured_bound(tmp_path):
    path = ddm.train(tiny_run(tmp_path / "run", steps=4, eval_every=2))
    model = ddm.load(path)
    out = ddm.io.hub.save_pretrained(model, tmp_path / "card")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["steps"] == 4 and cfg["bound"]["step"] == 4
    card = (out / "README.md").read_text()
    # the run has only the periodic in-training estimate: the card says so, and does not call it the bound
    assert cfg["bound"]["source"] == "in-training estimate"
    assert "In-training estimate of the held-out bound" in card and "not the final held-out bound" in card
    assert "Upper bound on the negative log-likelihood" not in card and '"steps": 4' in card
    assert f"{cfg['bound']['bits_per_token']:.4f} +- " in card
    bound = ddm.likelihood_bound(model, torch.randint(0, model.dim - 1, (4, 16)), num_t=2)
    out2 = model.save_pretrained(tmp_path / "card2", bound=bound)
    figure = f"**{bound.bits_per_token:.4f} +- {bound.stderr_bits:.4f} bits/char**"
    assert figure in (out2 / "README.md").read_text()
    assert ddm.load(out2).checkpoint_path == out2  # the Hub directory's own config is read back
    _same_outputs(model, ddm.load(out2), model.dim - 1)


def test_hub_id_loads_from_offline_cache(tmp_path, offline_cache):
    model = _model(seed=3)
    snap = seed_cache(offline_cache, "user/tiny-ddm", model.save_pretrained(tmp_path / "m"))
    info = hub.scan_cache_dir(offline_cache)  # huggingface_hub itself reads the prepared cache
    (repo,) = info.repos
    (revision,) = repo.revisions
    assert repo.repo_id == "user/tiny-ddm" and revision.commit_hash == REV and revision.refs == {"main"}
    assert {f.file_name for f in revision.files} == {"README.md", "config.json", "model.safetensors"}
    for back in (ddm.load("user/tiny-ddm"), ScoreModel.from_pretrained("user/tiny-ddm")):
        assert back.checkpoint_path == snap
        _same_outputs(model, back, len(CHARS))
    x = ddm.sample(ddm.load("user/tiny-ddm"), 4, batch_size=2, seed=0)
    assert x.shape == (2, 16)


def test_training_checkpoint_on_the_hub_loads_its_ema_weights(tmp_path, offline_cache):
    path = ddm.train(tiny_run(tmp_path / "run", steps=4, ema_decay=0.5))
    seed_cache(offline_cache, "user/run", path)  # the checkpoint directory, uploaded as it is
    back = ddm.load("user/run")
    assert not ddm.io.hub.is_hub_dir(back.checkpoint_path)
    _same_outputs(ddm.load(path), back, back.dim - 1)  # the EMA weights, as ddm.load of the directory
    raw = ddm.load(path, ema=False)
    x = torch.randint(0, back.dim - 1, (2, 16))
    with torch.no_grad():
        assert not torch.equal(raw(x, torch.tensor([1.0, 1.0])), back(x, torch.tensor([1.0, 1.0])))


def test_cache_miss_says_what_to_download_and_how(offline_cache):
    with pytest.raises(FileNotFoundError) as e:
        ddm.load("user/not-cached")
    msg = str(e.value)
    assert msg.startswith("'user/not-cached' is not a local path")
    assert "hf download user/not-cached" in msg and "HF_HUB_OFFLINE" in msg and str(offline_cache) in msg


def test_partial_snapshot_names_the_missing_weights(tmp_path, offline_cache):
    d = tmp_path / "partial"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"format_version": 1}))
    seed_cache(offline_cache, "user/partial", d)
    miss = "'model.safetensors' of the Hub model 'user/partial' is not in the Hugging Face cache"
    with pytest.raises(FileNotFoundError, match=miss):
        ddm.load("user/partial")


def test_sedd_layout_loads_by_hub_id(tmp_path, offline_cache):
    """The published SEDD layout (config.json in the reference hydra form + model.safetensors), here
    with a tiny config under the name of the real model: it loads through load_sedd, outputs identical."""
    model = _model(seed=5, tokenizer=False)
    exported = export_sedd(model, tmp_path / "sedd")
    seed_cache(offline_cache, "louaaron/sedd-small", exported)
    back = ddm.load("louaaron/sedd-small")
    assert back.sedd_config["model"]["hidden_size"] == 32
    _same_outputs(model, back, len(CHARS))
    assert isinstance(ScoreModel.from_pretrained("louaaron/sedd-small"), ScoreModel)


class _Payload:
    """Unpickling this would create a file: the loader must refuse it."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_hub_pickle_with_code_is_refused(tmp_path, offline_cache):
    exported = export_sedd(_model(seed=5, tokenizer=False), tmp_path / "sedd")
    d = tmp_path / "evil"
    d.mkdir()
    (d / "config.json").write_bytes((exported / "config.json").read_bytes())
    target = tmp_path / "pwned"
    torch.save({"x": _Payload(target)}, d / "pytorch_model.bin")
    (d / "modeling_evil.py").write_text(f"open({str(target)!r}, 'w')\n")  # never imported
    seed_cache(offline_cache, "evil/model", d)
    with pytest.raises(ValueError, match="refusing to load.*references code"):
        ddm.load("evil/model")
    assert not target.exists()


def test_local_paths_and_names_are_not_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    assert not ddm.io.hub.is_repo_id("runs/demo")  # an existing path wins
    assert ddm.io.hub.is_repo_id("user/repo") and ddm.io.hub.is_repo_id("louaaron/sedd-small")
    for name in ("/abs/path", "a/b/c", "../x", "./x", "plain", "user/../x", "runs/pyy"):
        assert not ddm.io.hub.is_repo_id(name), name


def test_push_to_hub_uploads_the_save_pretrained_layout(monkeypatch):
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kwargs):
            calls["create"] = (repo_id, kwargs)

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            calls["upload"] = (repo_id, sorted(p.name for p in Path(folder_path).iterdir()), kwargs)
            calls["config"] = json.loads((Path(folder_path) / "config.json").read_text())
            return "commit-info"

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    assert _model().push_to_hub("user/pushed", token="t", private=True) == "commit-info"
    assert calls["token"] == "t" and calls["create"] == (
        "user/pushed",
        {"private": True, "exist_ok": True, "repo_type": "model"},
    )
    repo_id, names, kwargs = calls["upload"]
    assert repo_id == "user/pushed" and names == ["README.md", "config.json", "model.safetensors"]
    assert calls["config"]["library_name"] == "ddm"


def test_model_card_prefers_the_runs_final_heldout_bound(tmp_path):
    path = ddm.train(tiny_run(tmp_path / "run", steps=4, eval_every=2))
    model = ddm.load(path)
    final = ddm.likelihood_bound(model, torch.randint(0, model.dim - 1, (3, 16)), num_t=2).to_dict()
    with open(tmp_path / "run" / "log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": 4, "heldout_bound": final}) + "\n")
    out = ddm.io.hub.save_pretrained(model, tmp_path / "card")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["bound"]["source"] == "held-out" and cfg["bound"]["num_t"] == 2
    card = (out / "README.md").read_text()
    assert "Upper bound on the negative log-likelihood" in card and "In-training" not in card
    assert f"**{final['bits_per_token']:.4f} +- {final['stderr_bits']:.4f} bits/char**" in card


def test_model_card_of_one_sequence_says_na_not_nan():
    card = ddm.io.hub.model_card({"bound": {"bits_per_token": 2.5, "stderr_bits": None, "unit": "char"}})
    assert "**2.5000 +- n/a bits/char**" in card and "nan" not in card


@pytest.fixture
def no_download(monkeypatch):
    """Records every call of huggingface_hub's downloader (and fails the call)."""
    calls = []

    def download(*args, **kwargs):
        calls.append(args)
        raise AssertionError("hf_hub_download must not be called")

    monkeypatch.setattr(hub, "hf_hub_download", download)
    return calls


def test_typo_in_a_local_path_is_a_path_not_a_hub_id(tmp_path, monkeypatch, no_download):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "py").mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # even online: no network round trip
    for name, why in [("runs/pyy", "'runs' exists here"), ("a/b/c", "not a Hub id"), ("no-such-dir", "")]:
        with pytest.raises(ddm.errors.CheckpointError, match="no such file or directory") as e:
            ddm.load(name)
        assert why in str(e.value)
    assert no_download == []


def test_offline_hub_miss_fails_without_calling_the_downloader(offline_cache, no_download):
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE=1 is set"):
        ddm.load("user/not-cached")
    assert no_download == []


def test_training_checkpoint_without_ema_is_not_a_save_pretrained_dir(tmp_path):
    path = ddm.train(tiny_run(tmp_path / "run", steps=2))
    (path / "ema.safetensors").unlink()
    assert not ddm.io.hub.is_hub_dir(path)  # a checkpoint is known by its manifest, not by its files
    with pytest.raises(ddm.errors.CheckpointError, match="ema.safetensors"):
        ddm.load(path)
