"""Training: the loss against brute force, zero-init expectations, one step helps, exact resume, configs."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from _tiny import TINY_MODEL, tiny_run
from ddm.data import bundled_text
from ddm.data.corpus import Corpus
from ddm.errors import DataError
from ddm.graphs import Absorbing, Uniform
from ddm.io import checkpoint as ckpt
from ddm.io.rundata import heldout_blocks
from ddm.losses import dwdse, score_entropy_bruteforce
from ddm.model import ModelConfig, ScoreModel
from ddm.model.transformer import cpu_has_native_bf16
from ddm.schedules import Geometric, LogLinear
from ddm.training import train
from ddm.training.config import TrainConfig, load_config
from ddm.training.loop import lr_at
from safetensors.torch import load_file

SMALL = dict(TINY_MODEL, dropout=0.0)


def _tiny_run(tmp_path, name="run", **kw):
    base = dict(steps=6, eval_every=3, save_every=3, dropout=0.1)
    return tiny_run(tmp_path / name, **{**base, **kw})


def _randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(
    "graph,schedule",
    [(Absorbing(4), LogLinear()), (Uniform(4), Geometric()), (Absorbing(3), Geometric(0.01, 5.0))],
)
def test_training_loss_matches_bruteforce_dse(graph, schedule):
    torch.manual_seed(0)
    model = ScoreModel(ModelConfig(**SMALL), graph, schedule)
    _randomise(model)
    x0 = torch.randint(0, graph.vocab_size, (6, 5))
    seen = {}

    def fn(x_t, sigma_bar):
        seen["x_t"], seen["sigma_bar"] = x_t, sigma_bar
        return model(x_t, sigma_bar)

    t = torch.tensor([0.01, 0.1, 0.3, 0.5, 0.8, 1.0], dtype=torch.float64)
    loss = dwdse(fn, graph, schedule, x0, t=t, generator=torch.Generator().manual_seed(1))  # (B,)
    sigma_bar, sigma = schedule(t)
    torch.testing.assert_close(seen["sigma_bar"], sigma_bar)
    l = model(seen["x_t"], sigma_bar).double()
    brute = score_entropy_bruteforce(graph, l, sigma_bar[:, None], seen["x_t"], x0)  # (B, L)
    torch.testing.assert_close(loss.double(), sigma * brute.sum(-1), rtol=1e-5, atol=1e-6)
    assert (seen["x_t"] != x0).any()  # the test exercises corrupted positions


def test_zero_init_absorbing_expected_loss_is_log_n():
    # docs/math.md section 4: with a zero output layer the expected loss per token is (1 - eps) ln N at
    # every t.
    N, L, B = 12, 16, 4096
    model = ScoreModel(ModelConfig(**SMALL), Absorbing(N), LogLinear())
    x0 = torch.randint(0, N, (B, L), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in (None, 0.05, 0.9):
            per_token = dwdse(
                model, model.graph, model.schedule, x0, t=t, generator=torch.Generator().manual_seed(3)
            )
            per_token = per_token.double() / L
            mean, se = per_token.mean().item(), per_token.std().item() / math.sqrt(B)
            expected = (1 - 1e-3) * math.log(N)
            assert abs(mean - expected) < 4 * se, (t, mean, expected, se)
            assert se < 0.03 * expected


def test_one_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = ScoreModel(ModelConfig(**SMALL), Absorbing(10), LogLinear())
    x0 = torch.randint(0, 10, (32, 16), generator=torch.Generator().manual_seed(0))

    def loss_fn():
        return dwdse(
            model, model.graph, model.schedule, x0, generator=torch.Generator().manual_seed(7)
        ).mean()

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = loss_fn()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss_fn()
    assert after.item() < before.item() - 1e-3


def _weights(path):
    return {name: load_file(str(path / f"{name}.safetensors")) for name in ("model", "ema", "optimizer")}


@pytest.mark.parametrize(
    "objective", [{}, {"objective": "masked", "t_sampling": "stratified"}], ids=["dwdse", "masked-stratified"]
)
def test_exact_resume_gives_identical_weights(tmp_path, objective):
    full = train(_tiny_run(tmp_path, "full", **objective))
    part = train(_tiny_run(tmp_path, "split", **objective), until_step=3)
    assert part.name == "step_00000003"
    resumed = train(_tiny_run(tmp_path, "split", **objective), resume=True)
    a, b = _weights(full), _weights(resumed)
    for kind in a:
        assert a[kind].keys() == b[kind].keys()
        for k in a[kind]:
            assert torch.equal(a[kind][k], b[kind][k]), (kind, k)
    # the state agrees too, and the log holds each step once
    sa = json.loads((full / "state.json").read_text())
    sb = json.loads((resumed / "state.json").read_text())
    assert sa["rng"] == sb["rng"] and sa["step"] == sb["step"] == 6
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 3, 4, 5, 6, 6]


def test_same_seed_same_run_other_seed_differs(tmp_path):
    a = _weights(train(_tiny_run(tmp_path, "a", steps=2)))["model"]
    b = _weights(train(_tiny_run(tmp_path, "b", steps=2)))["model"]
    c = _weights(train(_tiny_run(tmp_path, "c", steps=2, seed=1)))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_grad_accum_and_time_independent_and_uniform_runs(tmp_path):
    p = train(_tiny_run(tmp_path, "acc", steps=2, grad_accum=2, time_conditioning=False, eval_every=0))
    assert (p / "ema.safetensors").is_file()
    p = train(_tiny_run(tmp_path, "uni", steps=2, graph="uniform", schedule="geometric", plot=True))
    assert (tmp_path / "uni" / "curves.png").stat().st_size > 0
    recs = [json.loads(line) for line in (tmp_path / "uni" / "log.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "tokens_per_s"} <= set(recs[0])
    assert any("eval_bits_per_token" in r for r in recs)


@pytest.mark.parametrize("decay", ["constant", "cosine", "linear"])
def test_lr_schedule_warms_up_then_decays_to_lr_final(decay):
    cfg = TrainConfig(lr=2e-3, warmup_steps=10, steps=110, lr_decay=decay, lr_final=0.1)
    lrs = [lr_at(cfg, s) for s in range(cfg.steps)]
    # warm-up: (step + 1) / warmup_steps of lr, reaching lr at the last warm-up update (step 9)
    assert lrs[:10] == pytest.approx([2e-3 * (s + 1) / 10 for s in range(10)], rel=1e-12)
    if decay == "constant":
        assert lrs[10:] == [2e-3] * 100
        return
    # from lr at step 9 to lr * lr_final at the last update (step 109), monotone
    assert lrs[-1] == pytest.approx(2e-4, rel=1e-12)
    assert all(a >= b for a, b in zip(lrs[9:-1], lrs[10:], strict=True))
    p = 0.5  # half-way, step 59
    half = 0.5 * (1 + math.cos(math.pi * p)) if decay == "cosine" else 1 - p
    assert lrs[59] == pytest.approx(2e-3 * (0.1 + 0.9 * half), rel=1e-12)
    # past the last step (a resumed run with more steps would recompute the curve) it stays at the end
    assert lr_at(cfg, 500) == pytest.approx(2e-4, rel=1e-12)
    # no warm-up: the decay starts at the first update
    cold = TrainConfig(lr=1e-3, warmup_steps=0, steps=11, lr_decay=decay, lr_final=0.0)
    assert lr_at(cold, 0) == pytest.approx(1e-3) and lr_at(cold, 10) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("objective", ["masked", "autoregressive"])
def test_cpu_bf16_trains_in_bf16_only_where_the_cpu_has_it(tmp_path, objective):
    kw = dict(steps=3, objective=objective, eval_every=0)
    fp32 = _weights(train(_tiny_run(tmp_path, "fp32", **kw)))["model"]
    bf16 = _weights(train(_tiny_run(tmp_path, "bf16", cpu_bf16=True, **kw)))["model"]
    same = all(torch.equal(fp32[k], bf16[k]) for k in fp32)
    if not cpu_has_native_bf16():
        assert same  # emulated bf16 would be slower: the option does nothing there
        return
    assert not same  # the forward ran under bf16 autocast
    for k in fp32:  # the weights stay float32 (autocast casts on the fly), and close to the fp32 run
        assert bf16[k].dtype == torch.float32
        assert torch.allclose(bf16[k], fp32[k], atol=5e-3), k
    log = [json.loads(line) for line in (tmp_path / "bf16" / "log.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "fp32" / "log.jsonl").read_text().splitlines()]
    for a, b in zip(log, ref, strict=True):
        if "loss" in a:
            assert a["loss"] == pytest.approx(b["loss"], rel=2e-2)


def test_bad_configs_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="'steps' must be of type int"):
        TrainConfig.from_dict({"steps": "many"})
    with pytest.raises(ValueError, match="divisible by grad_accum"):
        TrainConfig.from_dict({"batch_size": 5, "grad_accum": 2})
    with pytest.raises(ValueError, match="graph must be"):
        TrainConfig.from_dict({"graph": "ring"})
    with pytest.raises(ValueError, match="time_conditioning"):
        TrainConfig.from_dict({"graph": "uniform", "time_conditioning": False})
    with pytest.raises(ValueError, match="divisible by model.heads"):
        TrainConfig.from_dict({"hidden": 30, "heads": 4})
    with pytest.raises(ValueError, match="lr must be"):
        TrainConfig.from_dict({"lr": 0})
    with pytest.raises(ValueError, match="lr_decay must be"):
        TrainConfig.from_dict({"lr_decay": "step"})
    with pytest.raises(ValueError, match="lr_final must be in"):
        TrainConfig.from_dict({"lr_final": 1.5})
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = [")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(bad)
    good = tmp_path / "good.toml"
    good.write_text('[optim]\nlr = 1e-3\nsteps = 10\n[run]\nrun_dir = "x"\n')
    cfg = load_config(good, steps=20)
    assert cfg.lr == 1e-3 and cfg.steps == 20 and cfg.run_dir == "x"
    # the default config round-trips through its TOML form
    (tmp_path / "default.toml").write_text(TrainConfig().to_toml())
    assert load_config(tmp_path / "default.toml") == TrainConfig()


def test_bad_runs_are_named(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("to be or not to be\n")
    with pytest.raises(ValueError, match="seq_len"):
        train(_tiny_run(tmp_path, "s", data=str(small), seq_len=64))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        train(_tiny_run(tmp_path, "e", data=str(empty)))
    train(_tiny_run(tmp_path, "r", steps=1))
    with pytest.raises(ValueError, match="already has checkpoints"):
        train(_tiny_run(tmp_path, "r", steps=1))
    with pytest.raises(ValueError, match="resume: seed"):
        train(_tiny_run(tmp_path, "r", steps=2, seed=5), resume=True)
    with pytest.raises(ValueError, match="no checkpoint"):
        train(_tiny_run(tmp_path, "nothing"), resume=True)


# ---------------------------------------------------------------------------------------------------
# What the user sees: Ctrl-C, the start summary, the console, missing extras, nothing to do
# ---------------------------------------------------------------------------------------------------


def _interrupt_at(monkeypatch, at_step):
    """Sends SIGINT to this process while the batch of step `at_step` is read (once)."""
    real = Corpus.batch_at
    sent = []

    def batch_at(self, seq_len, seed, step, rows):
        if step == at_step and not sent:
            sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, seq_len, seed, step, rows)

    monkeypatch.setattr(Corpus, "batch_at", batch_at)


def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(tmp_path, monkeypatch, capsys):
    kw = dict(steps=6, eval_every=0, save_every=100)
    full = train(_tiny_run(tmp_path, "full", **kw))
    _interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(_tiny_run(tmp_path, "int", **kw))
    err = capsys.readouterr().err
    # the step in progress (step 2 -> 3) finishes, and is saved although save_every is far
    assert ckpt.latest(tmp_path / "int").name == "step_00000003"
    assert f"ddm train --resume --run-dir {(tmp_path / 'int').resolve()}" in err
    monkeypatch.undo()
    resumed = train(_tiny_run(tmp_path, "int", **kw), resume=True)
    a, b = _weights(full), _weights(resumed)
    assert all(torch.equal(a[kind][k], b[kind][k]) for kind in a for k in a[kind])


def test_start_summary_log_lines_and_heldout_bound_without_a_terminal(tmp_path, capsys):
    # capsys's stderr is not a terminal: log lines instead of a progress bar
    train(_tiny_run(tmp_path, "r", steps=2, eval_every=2, progress=True))
    err = capsys.readouterr().err
    for words in (
        "parameters",
        "vocabulary",
        "train and",
        "held-out tokens",
        "cpu (float32)",
        "steps per epoch",
    ):
        assert words in err, words
    assert "step 1/2: loss" in err and "step 2/2: loss" in err
    assert "step 2: held-out bound" in err and "bits/token" in err
    assert "\r" not in err and "it/s" not in err and "step/s" not in err  # no bar


def test_missing_matplotlib_is_said_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    train(_tiny_run(tmp_path, "r", steps=4, save_every=2, plot=True))
    err = capsys.readouterr().err
    assert err.count("matplotlib") == 1 and "curves.png" in err
    assert not (tmp_path / "r" / "curves.png").exists()


def test_heldout_split_shorter_than_seq_len_says_it_never_evaluates(tmp_path, capsys):
    text = tmp_path / "short.txt"
    text.write_text(bundled_text()[:400])
    train(_tiny_run(tmp_path, "r", data=str(text), val_fraction=0.02, eval_every=1, steps=2))  # 8 < 16
    err = capsys.readouterr().err
    assert "held-out split has 8 tokens" in err and "never evaluated" in err
    recs = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert not any("eval_bits_per_token" in r for r in recs)


def test_resume_with_fewer_steps_says_it_has_nothing_to_do(tmp_path, capsys):
    done = train(_tiny_run(tmp_path, "r", steps=4))
    capsys.readouterr()
    again = train(_tiny_run(tmp_path, "r", steps=2), resume=True)
    err = capsys.readouterr().err
    assert again == done
    assert "nothing to do" in err and "at step 4" in err and "--steps" in err


# ---------------------------------------------------------------------------------------------------
# The run's data: cached in the run directory, recorded by content
# ---------------------------------------------------------------------------------------------------


def _relative_run(tmp_path, monkeypatch):
    """A run on `corpus.txt` given by a relative path, trained to step 2 of 4 in `tmp_path/work`."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "corpus.txt").write_text(bundled_text()[:6000])
    monkeypatch.chdir(work)
    cfg = _tiny_run(tmp_path, "unused", data="corpus.txt", steps=4, eval_every=0, dropout=0.0)
    cfg["run_dir"] = "runs/r"
    train(cfg, until_step=2)
    return work, cfg


def test_resume_and_heldout_split_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    work, cfg = _relative_run(tmp_path, monkeypatch)
    want = heldout_blocks(work / "runs" / "r", 16)
    full = train({**cfg, "run_dir": "runs/full"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # `corpus.txt` means nothing here
    resumed = train({**cfg, "run_dir": str(work / "runs" / "r")}, resume=True)
    a, b = _weights(work / full), _weights(resumed)
    assert all(torch.equal(a[kind][k], b[kind][k]) for kind in a for k in a[kind])
    assert torch.equal(heldout_blocks(work / "runs" / "r", 16), want)
    recorded = ckpt.read_config(resumed)["data"]
    assert recorded["source"] == str(work / "corpus.txt")
    assert [f["path"] for f in recorded["files"]] == [str(work / "corpus.txt")]
    assert len(recorded["files"][0]["sha256"]) == 64


def test_an_edited_data_file_is_named(tmp_path, monkeypatch, capsys):
    work, cfg = _relative_run(tmp_path, monkeypatch)
    run = work / "runs" / "r"
    want = heldout_blocks(run, 16)
    with open(work / "corpus.txt", "a") as f:
        f.write("an appended line that moves the held-out tail\n" * 20)
    capsys.readouterr()
    # the cached tokens are the run's: resume and eval keep them, and say the file changed
    train(cfg, resume=True)
    assert "corpus.txt" in capsys.readouterr().err.split("changed")[0]
    assert torch.equal(heldout_blocks(run, 16), want)
    assert "changed since the run was trained" in capsys.readouterr().err
    # without the cache, the edited file's tail is not the held-out split: refused, naming the file
    shutil.rmtree(run / "data")
    with pytest.raises(DataError, match=r"corpus.txt.*changed since the run was trained"):
        heldout_blocks(run, 16)


def test_ctrl_c_on_the_command_line_saves_and_exits_130(tmp_path):
    # the user's path: `ddm train` in a terminal-less process, a real SIGINT once training has started
    run = tmp_path / "r"
    args = ["--run-dir", str(run), "--steps", "100000", "--save-every", "100000", "--progress"]
    args += ["--no-plot", "--log-every", "1", "--eval-every", "0", "--device", "cpu"]
    for k, v in TINY_MODEL.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root / "python")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddm", "train", *args], stderr=subprocess.PIPE, text=True, env=env
    )
    guard = threading.Timer(120, proc.kill)  # no log line (a regression) must not hang the suite
    guard.start()
    lines = []
    for line in proc.stderr:  # wait for the first log lines: the loop is running
        lines.append(line)
        if line.startswith("step 3/"):
            proc.send_signal(signal.SIGINT)
            break
    lines += proc.stderr.readlines()
    status = proc.wait(timeout=120)
    guard.cancel()
    assert status == 130, "".join(lines)
    err = "".join(lines)
    saved = ckpt.latest(run)
    assert saved is not None and int(saved.name.split("_")[1]) >= 3, err
    assert f"resume with: ddm train --resume --run-dir {run.resolve()}" in err


def test_a_file_added_to_a_data_directory_is_named(tmp_path, capsys):
    data = tmp_path / "texts"
    data.mkdir()
    text = bundled_text()
    (data / "a.txt").write_text(text[:3000])
    (data / "b.txt").write_text(text[3000:6000])
    cfg = _tiny_run(tmp_path, "r", data=str(data), steps=4, eval_every=0)
    train(cfg, until_step=2)
    recorded = ckpt.read_config(ckpt.latest(tmp_path / "r"))["data"]
    assert [Path(f["path"]).name for f in recorded["files"]] == ["a.txt", "b.txt"]
    (data / "c.txt").write_text(text[6000:7000])
    capsys.readouterr()
    train(cfg, resume=True)
    err = capsys.readouterr().err
    assert "c.txt" in err and "(added)" in err and "changed since the run was trained" in err


def test_jsonl_text_field_and_unknown_policy_reach_the_corpus(tmp_path):
    # how the files are read, and the char tokenizer's unknown-character policy, are chosen in the config
    lines = [json.dumps({"id": i, "body": bundled_text()[i * 300 : (i + 1) * 300]}) for i in range(20)]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    cfg = _tiny_run(tmp_path, "r", data=str(tmp_path / "docs.jsonl"), text_field="body", unknown="replace")
    path = train(cfg)
    tok = ckpt.read_config(path)["tokenizer"]
    assert tok.get("unknown") == "replace"
    model = ckpt.load(path)
    assert "{" not in model.tokenizer.decode(list(range(model.tokenizer.vocab_size - 1)))  # no JSON braces
    with pytest.raises(ValueError, match="unknown must be"):
        TrainConfig.from_dict({"unknown": "ignore"})
    with pytest.raises(ValueError, match="resume: text_field"):
        train({**cfg, "text_field": "id"}, resume=True)
