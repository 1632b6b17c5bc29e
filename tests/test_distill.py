"""SDTT distillation (ddm.training.distill): the exact laws, the identity, exact resume, the student as an
ordinary checkpoint, and the bad inputs. Tiny models: the whole file runs in seconds."""

from __future__ import annotations

import dataclasses
import json
import signal

import ddm
import pytest
import torch
from _tiny import tiny_run
from ddm.errors import CheckpointError, InvalidArgument
from ddm.graphs import Absorbing, Uniform
from ddm.model import ModelConfig, ScoreModel
from ddm.sampling import predictors
from ddm.schedules import LogLinear
from ddm.training import distill as dst
from ddm.training.distill import DistillConfig, distill
from exact_scores import ExactScore, correlated_law


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    """A tiny masked, time-independent model trained for a few steps."""
    run_dir = tmp_path_factory.mktemp("teacher")
    cfg = tiny_run(run_dir, objective="masked", time_conditioning=False, dropout=0.0, steps=4)
    return ddm.train(cfg)


def _cfg(tmp_path, name="d", **kw):
    base = dict(run_dir=str(tmp_path / name), rounds=2, steps_per_round=2, teacher_steps=8, batch_size=4,
                save_every=1, log_every=1, progress=False, lr=1e-3)  # fmt: skip
    base.update(kw)
    return DistillConfig(**base)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Exact:
    """An exact score model with the attributes `sdtt_loss` reads."""

    def __init__(self, p0, n):
        self.graph, self.schedule = Absorbing(n), LogLinear()
        self.score = ExactScore(self.graph, p0)

    def __call__(self, x, sigma):
        return self.score(x, sigma)


def _product_law(n, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    law = torch.ones([n] * length, dtype=torch.float64)
    for i in range(length):
        p = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
        shape = [1] * length
        shape[i] = n
        law = law * (p / p.sum()).reshape(shape)
    return law


def test_loss_is_zero_for_a_teacher_exact_at_the_step_size():
    """A product law makes factorised steps exact at any size: the student equal to the exact teacher
    has loss 0 for every divergence; a correlated law (where two steps are not one) does not."""
    n, length = 3, 3
    x0 = torch.randint(0, n, (64, length), generator=torch.Generator().manual_seed(1))
    rows = torch.arange(64)
    exact = _Exact(_product_law(n, length), n)
    for loss in dst.LOSSES:
        per_seq = dst.sdtt_loss(exact, exact, x0, seed=3, step=0, rows=rows, dt=0.2, loss=loss)
        assert per_seq.abs().max() < 1e-10, loss  # float64 rounding in the logs
    corr = _Exact(correlated_law(n, length, weight=0.9), n)
    per_seq = dst.sdtt_loss(corr, corr, x0, seed=3, step=0, rows=rows, dt=0.2, loss="reverse_kl")
    assert per_seq.mean() > 1e-4


def test_two_step_law_sums_out_the_first_step():
    """Where the context is fixed (a product law), two analytic steps of dt compose to one of 2dt, and the
    law is a distribution at every masked position."""
    n, length = 4, 2
    exact = _Exact(_product_law(n, length, seed=2), n)
    x_t = torch.full((5, length), n)
    s = [torch.full((5,), v, dtype=torch.float64) for v in (2.0, 1.2, 0.5)]
    u = torch.rand(5, length, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    two = dst.teacher_two_step_law(exact, x_t, tuple(s), u)
    one = dst.step_law(exact(x_t, s[0]), s[0] - s[2])
    assert torch.allclose(two, one, atol=1e-13)
    assert torch.allclose(two.sum(-1), torch.ones(5, length, dtype=torch.float64))


def test_zero_optimizer_steps_is_the_identity(teacher_path, tmp_path):
    student_path = distill(teacher_path, _cfg(tmp_path, rounds=1, steps_per_round=0))
    teacher, student = ddm.load(teacher_path), ddm.load(student_path)
    assert _same(_weights(teacher), _weights(student))
    kw = dict(batch_size=2, seed=5)
    assert torch.equal(ddm.sample(teacher, 4, **kw), ddm.sample(student, 4, **kw))


def test_student_is_an_ordinary_checkpoint(teacher_path, tmp_path):
    path = distill(teacher_path, _cfg(tmp_path))
    student = ddm.load(path)
    rec = ddm.io.checkpoint.read_config(path)["distill"]
    assert rec["teacher"] == str(teacher_path) and rec["teacher_steps"] == 8 and rec["student_steps"] == 2
    assert not _same(_weights(student), _weights(ddm.load(teacher_path)))  # it trained
    card_dir = tmp_path / "card"
    ddm.io.hub.save_pretrained(student, card_dir)
    assert (
        "## Distillation" in (card_dir / "README.md").read_text()
        and "**2 steps**" in (card_dir / "README.md").read_text()
    )
    for name in predictors.names():
        x = ddm.sample(student, 2, predictor=name, batch_size=2, seed=1)
        assert x.shape == (2, student.seq_len) and int(x.max()) < student.graph.vocab_size, name


def test_killed_and_resumed_equals_uninterrupted(teacher_path, tmp_path, monkeypatch):
    whole = ddm.load(distill(teacher_path, _cfg(tmp_path, "whole")))
    real_step = dst._Run.train_step
    for kill_at in (1, 2, 3):  # mid round 0, the round boundary, mid round 1

        def dying(self, *a, _k=kill_at, **kw):
            if self.step == _k:
                raise KeyboardInterrupt
            return real_step(self, *a, **kw)

        cfg = _cfg(tmp_path, f"kill{kill_at}")
        monkeypatch.setattr(dst._Run, "train_step", dying)
        with pytest.raises(KeyboardInterrupt):
            distill(teacher_path, cfg)
        monkeypatch.setattr(dst._Run, "train_step", real_step)
        resumed = ddm.load(distill(teacher_path, cfg, resume=True))
        assert _same(_weights(whole), _weights(resumed)), kill_at


def test_batch_split_gives_the_same_loss(teacher_path, tmp_path):
    """The keyed draws make a step's batch and noise independent of grad_accum."""
    a = distill(teacher_path, _cfg(tmp_path, "a", rounds=1, steps_per_round=1))
    b = distill(teacher_path, _cfg(tmp_path, "b", rounds=1, steps_per_round=1, grad_accum=2))
    la, lb = (json.loads(ddm.io.run.log_path(tmp_path / n).read_text()) for n in "ab")
    assert la["loss"] == pytest.approx(lb["loss"], rel=1e-12) and la["loss"] > 0 and a.name == b.name


def test_bad_input(teacher_path, tmp_path):
    with pytest.raises(InvalidArgument, match="rounds"):
        DistillConfig(rounds=0)
    with pytest.raises(InvalidArgument, match=r"dt schedule leaves \[0, 1\]"):
        DistillConfig(rounds=2, dt_schedule=(0.25, 0.75))
    with pytest.raises(InvalidArgument, match=r"dt schedule leaves \[0, 1\]"):
        DistillConfig(rounds=8, teacher_steps=128)
    with pytest.raises(InvalidArgument, match="loss"):
        DistillConfig(loss="kl")
    with pytest.raises(CheckpointError, match="does not load"):
        distill(tmp_path / "nowhere", _cfg(tmp_path))
    mc = ModelConfig.from_size("tiny", hidden=32, heads=2, blocks=1, cond_dim=16, seq_len=16)
    uniform = ScoreModel(mc, Uniform(5), LogLinear())
    with pytest.raises(InvalidArgument, match="absorbing-only"):
        distill(uniform, _cfg(tmp_path))
    teacher = ddm.load(teacher_path)
    other = ScoreModel(
        dataclasses.replace(teacher.config), Absorbing(teacher.graph.vocab_size + 1), LogLinear()
    )
    with pytest.raises(InvalidArgument, match="graph"):
        distill(teacher_path, _cfg(tmp_path), student=other)
    distill(teacher_path, _cfg(tmp_path, "again", rounds=1, steps_per_round=1))
    with pytest.raises(InvalidArgument, match="already has checkpoints"):
        distill(teacher_path, _cfg(tmp_path, "again", rounds=1, steps_per_round=1))


def test_cli_distill_trains_a_student_that_ddm_sample_uses(teacher_path, tmp_path, capsys):
    from ddm.cli import main  # the top layer, imported where it is tested

    run_dir = tmp_path / "cli"
    argv = ["distill", str(teacher_path), "--run-dir", str(run_dir), "--rounds", "1", "--no-progress"]
    argv += ["--steps-per-round", "2", "--teacher-steps", "4", "--batch-size", "2", "--dt-schedule", "0.25"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2-step student" in out
    assert main(["sample", "--checkpoint", str(run_dir), "--steps", "2", "--num", "1"]) == 0
    assert main(["distill", str(teacher_path), "--run-dir", str(tmp_path / "x"), "--rounds", "0"]) == 2
    assert "rounds must be an integer >= 1" in capsys.readouterr().err


def test_ctrl_c_saves_and_resumes_exactly(teacher_path, tmp_path, monkeypatch, capsys):
    """SIGINT during a step: the step finishes, a checkpoint is saved, the resume equals the whole run."""
    whole = ddm.load(distill(teacher_path, _cfg(tmp_path, "whole", save_every=100)))
    real_step = dst._Run.train_step

    def interrupted(self, *a, **kw):
        if self.step == 1:
            signal.raise_signal(signal.SIGINT)  # the handler only sets a flag: the step goes on
        return real_step(self, *a, **kw)

    cfg = _cfg(tmp_path, "ctrlc", save_every=100)
    monkeypatch.setattr(dst._Run, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distill(teacher_path, cfg)
    assert ddm.io.run.steps(tmp_path / "ctrlc") == [2] and "resume with" in capsys.readouterr().err
    monkeypatch.setattr(dst._Run, "train_step", real_step)
    assert _same(_weights(whole), _weights(ddm.load(distill(teacher_path, cfg, resume=True))))


def test_a_dwdse_teacher_distils(tmp_path):
    """A time-conditioned absorbing score model (the DWDSE objective) is a teacher too."""
    teacher = ddm.train(tiny_run(tmp_path / "t", objective="diffusion", dropout=0.0, steps=2))
    student = ddm.load(distill(teacher, _cfg(tmp_path, rounds=1, steps_per_round=2)))
    assert not _same(_weights(student), _weights(ddm.load(teacher)))
    assert ddm.sample(student, 4, batch_size=2, seed=0).shape == (2, student.seq_len)


def test_a_loaded_model_is_a_teacher_with_its_data(teacher_path, tmp_path):
    """A model object from ddm.load finds its training data through its checkpoint, like the path."""
    by_model = ddm.load(distill(ddm.load(teacher_path), _cfg(tmp_path, "m", rounds=1, steps_per_round=1)))
    by_path = ddm.load(distill(teacher_path, _cfg(tmp_path, "p", rounds=1, steps_per_round=1)))
    assert _same(_weights(by_model), _weights(by_path))
