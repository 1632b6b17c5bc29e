"""`ddm.sampling.sample`: seeding, batch and thread invariance, caching, conditioning, argument errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddm.errors import InvalidArgument
from ddm.graphs import Absorbing, Uniform
from ddm.model import ModelConfig
from ddm.model.autoregressive import ARModel
from ddm.sampling import SampleStats, sample
from ddm.schedules import Geometric, LogLinear
from exact_scores import (
    BACKENDS,
    ExactScore,
    correlated_law,
    needs_rust,
    one_torch_thread,  # noqa: F401
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N, L = 3, 3
P0 = correlated_law(N, L)
GRAPHS = {"absorbing": (Absorbing(N), LogLinear()), "uniform": (Uniform(N), Geometric())}


class CarryingScore(ExactScore):
    """An exact score model that carries graph, schedule and seq_len, like a trained `ScoreModel`."""

    def __init__(self, graph, schedule, p0, time_independent: bool = False) -> None:
        super().__init__(graph, p0)
        self.graph, self.schedule, self.seq_len = graph, schedule, p0.dim()
        self.time_independent = time_independent


def _model(kind: str, **kw) -> CarryingScore:
    graph, schedule = GRAPHS[kind]
    return CarryingScore(graph, schedule, P0, **kw)


# ---- seeding ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_rows_do_not_depend_on_batch_size(kind: str, backend: str) -> None:
    model = _model(kind)
    big = sample(model, 16, batch_size=9, seed=42, backend=backend)
    small = sample(model, 16, batch_size=4, seed=42, backend=backend)
    assert torch.equal(big[:4], small)
    assert not torch.equal(big[:4], sample(model, 16, batch_size=4, seed=43, backend=backend))
    assert torch.equal(small, sample(model, 16, batch_size=4, seed=42, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_sample_is_the_sampler_stepped_by_hand(kind: str, backend: str) -> None:
    """`sample` writes the Rust steps into two buffers in turn and hands the model the grid's noise
    levels built once (issue 17): the tokens are those of `Sampler.step` called step by step."""
    from ddm.sampling import Sampler

    model = _model(kind)
    graph, schedule = GRAPHS[kind]
    got = sample(model, 12, batch_size=5, seed=9, backend=backend)
    s = Sampler(graph, schedule)
    s.set_timesteps(12)
    x = s.init_noise(5, L, seed=9)
    with torch.no_grad():
        for k in range(len(s.timesteps)):
            x = s.step(model(x, s.noise_level(k, 5)), k, x, seed=9, backend=backend).prev_sample
    assert torch.equal(got, x)


@needs_rust
def test_step_refuses_an_out_buffer_that_is_x() -> None:
    from ddm.sampling import Sampler

    graph, schedule = GRAPHS["absorbing"]
    s = Sampler(graph, schedule)
    s.set_timesteps(4)
    x = s.init_noise(2, L)
    ls = torch.zeros(2, L, graph.dim)
    with pytest.raises(ValueError, match="out must not share memory with x"):
        s.step(ls, 0, x, seed=1, backend="rust", out=x)
    out = torch.empty_like(x)
    assert s.step(ls, 0, x, seed=1, backend="rust", out=out).prev_sample.data_ptr() == out.data_ptr()


def test_seed_none_is_drawn_and_reported() -> None:
    model = _model("uniform")
    torch.manual_seed(0)
    x, stats = sample(model, 4, batch_size=5, return_stats=True)
    assert isinstance(stats, SampleStats) and 0 <= stats.seed < 2**63
    assert torch.equal(x, sample(model, 4, batch_size=5, seed=stats.seed))
    torch.manual_seed(0)
    assert torch.equal(x, sample(model, 4, batch_size=5))  # torch.manual_seed reproduces an unseeded run


_THREADS_SCRIPT = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from exact_scores import ExactScore, correlated_law
from ddm.graphs import Uniform, Absorbing
from ddm.schedules import Geometric, LogLinear
from ddm.sampling import sample
out = {{}}
for name, g, s in [("u", Uniform(3), Geometric()), ("a", Absorbing(3), LogLinear())]:
    m = ExactScore(g, correlated_law(3, 3))
    x = sample(m, 12, graph=g, schedule=s, seq_len=3, batch_size=3000, seed=9, backend="rust")
    out[name] = x.tolist()
print(json.dumps(out))
"""


@needs_rust
def test_rust_backend_does_not_depend_on_thread_count() -> None:
    script = _THREADS_SCRIPT.format(tests=str(Path(__file__).parent))
    results = []
    for threads in ("1", "2"):
        env = {**os.environ, "DDM_NUM_THREADS": threads}
        proc = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=True
        )
        results.append(json.loads(proc.stdout))
    assert results[0] == results[1]


# ---- caching ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("predictor", ["analytic", "euler"])
def test_cache_gives_identical_samples_with_fewer_calls(predictor: str, backend: str) -> None:
    model = _model("absorbing", time_independent=True)
    kw = dict(batch_size=6, seed=3, predictor=predictor, backend=backend, return_stats=True)
    cached, s1 = sample(model, 200, **kw)
    plain, s2 = sample(model, 200, cache=False, **kw)
    assert s1.cache and not s2.cache
    assert torch.equal(cached, plain)
    assert s2.network_calls == s2.evaluations == 201 and s2.rows_evaluated == 6 * 201
    # at most one call per step in which some row changed: at most L unmaskings per row (+ the first call)
    assert s1.network_calls <= 1 + 6 * L
    assert s1.rows_evaluated <= 6 * (1 + L)
    # conditioning and caching together
    a = sample(model, 100, batch_size=4, seed=8, prefix=[2], backend=backend)
    b = sample(model, 100, batch_size=4, seed=8, prefix=[2], backend=backend, cache=False)
    assert torch.equal(a, b)


def test_cache_with_score_model() -> None:
    """A time-independent `ScoreModel` (random weights): caching on and off give the same samples."""
    model_mod = pytest.importorskip("ddm.model")
    cfg = model_mod.ModelConfig(
        hidden=32, heads=2, blocks=1, cond_dim=16, seq_len=24, time_conditioning=False, dropout=0.0
    )
    torch.manual_seed(0)
    model = model_mod.ScoreModel(cfg, Absorbing(11), LogLinear()).eval()
    for p in model.final.parameters():  # the output layer starts at zero; give it something to say
        torch.nn.init.normal_(p, std=0.5)
    assert model.time_independent
    a, sa = sample(model, 64, batch_size=3, seed=1, return_stats=True)
    b, sb = sample(model, 64, batch_size=3, seed=1, cache=False, return_stats=True)
    assert torch.equal(a, b)
    assert sa.network_calls < sb.network_calls == 65
    assert a.shape == (3, 24) and int(a.max()) < 11


def test_cache_requires_absorbing() -> None:
    with pytest.raises(ValueError, match="absorbing"):
        sample(_model("uniform"), 4, cache=True, seed=0)


# ---- conditioning ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_fixed_positions_never_change(kind: str, backend: str) -> None:
    graph, schedule = GRAPHS[kind]
    model = ExactScore(graph, correlated_law(N, 5))
    seen = []

    def spy(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return model(x, sigma)

    x = sample(
        spy, 20, graph=graph, schedule=schedule, seq_len=5, batch_size=50, prefix=[1], suffix=[0, 2],
        infill={2: 1}, seed=4, backend=backend,
    )  # fmt: skip
    fixed = torch.tensor([1, -1, 1, 0, 2])
    for xs in [*seen, x]:  # the model always sees the fixed tokens, and so does the output
        assert bool((xs[:, fixed >= 0] == fixed[fixed >= 0]).all())
    assert len(seen) == 21


def test_infill_forms_agree() -> None:
    model = _model("absorbing")
    mask = torch.tensor([False, True, False])
    tokens = torch.tensor([0, 2, 0])
    a = sample(model, 10, batch_size=8, seed=2, infill={1: 2})
    b = sample(model, 10, batch_size=8, seed=2, infill=(mask, tokens))
    assert torch.equal(a, b) and bool((a[:, 1] == 2).all())


# ---- callables, devices, progress ------------------------------------------------------------------------


def test_plain_callable_needs_graph_schedule_and_seq_len() -> None:
    graph, schedule = GRAPHS["absorbing"]
    model = ExactScore(graph, P0)
    with pytest.raises(ValueError, match="graph is required"):
        sample(model, 4)
    with pytest.raises(ValueError, match="schedule is required"):
        sample(model, 4, graph=graph)
    with pytest.raises(ValueError, match="seq_len is required"):
        sample(model, 4, graph=graph, schedule=schedule)
    x = sample(model, 4, graph=graph, schedule=schedule, seq_len=L, device="cpu", seed=0)
    assert x.shape == (1, L) and x.device.type == "cpu"


def test_no_mask_left_and_mask_kept_without_denoise() -> None:
    model = _model("absorbing")
    x = sample(model, 2, batch_size=200, seed=1)
    assert int(x.max()) < N
    # without denoising, the fraction (1 - 1e-3) eps of positions stays masked in law (LogLinear schedule)
    y = sample(model, 2, batch_size=200, seed=1, denoise=False, eps=0.5)
    assert 0.35 < float((y == N).double().mean()) < 0.65


def test_progress_bar_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    sample(_model("uniform"), 5, seed=0, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "sampling" in captured.err


# ---- bad arguments --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(steps=0), ValueError, "steps must be >= 1"),
        (dict(steps=2.5), TypeError, "steps must be an int"),
        (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
        (dict(seq_len=4), ValueError, "longer than the model's seq_len=3"),
        (dict(prefix=[0, 1, 2, 0]), ValueError, "prefix has 4 tokens, longer than seq_len=3"),
        (dict(suffix=[0, 1, 2, 0]), ValueError, "suffix has 4 tokens"),
        (dict(prefix=[3]), ValueError, "prefix holds token id 3, outside the vocabulary"),
        (dict(prefix=[-1]), ValueError, "outside the vocabulary"),
        (dict(suffix=torch.tensor([0.5])), TypeError, "integer token ids"),
        (dict(prefix="abc"), TypeError, "encode text"),
        (dict(prefix=[1], infill={0: 2}), ValueError, "already fixed"),
        (dict(infill={3: 0}), ValueError, "infill position 3 is outside"),
        (dict(infill={0: 7}), ValueError, "outside the vocabulary"),
        (dict(infill=(torch.ones(2, dtype=torch.bool), torch.zeros(2))), TypeError, "integer tensor"),
        (dict(infill=(torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.long))), ValueError,
         r"shape \[3\]"),
        (dict(infill=[1, 2, 3]), TypeError, "infill must be a dict"),
        (dict(predictor="heun"), ValueError, "predictor must be one of"),
        (dict(backend="jax"), ValueError, "backend must be one of"),
        (dict(eps=0.0), ValueError, "eps must lie in"),
        (dict(seed=-1), ValueError, "seed must lie in"),
        (dict(seed=2**64), ValueError, "seed must lie in"),
        (dict(graph=Absorbing(4)), ValueError, "does not match the model's graph"),
    ],
)  # fmt: skip
def test_bad_arguments(kwargs: dict, exc: type, match: str) -> None:
    args = dict(steps=3, seed=0)
    args.update(kwargs)
    steps = args.pop("steps")
    with pytest.raises(exc, match=match):
        sample(_model("absorbing"), steps, **args)


def test_wrong_model_output_shape() -> None:
    graph, schedule = GRAPHS["absorbing"]
    with pytest.raises(ValueError, match="the model returned shape"):
        sample(lambda x, s: torch.zeros(*x.shape, N), 3, graph=graph, schedule=schedule, seq_len=L)
    with pytest.raises(TypeError, match="floating tensor"):
        sample(lambda x, s: x, 3, graph=graph, schedule=schedule, seq_len=L)


# ---- the command line -----------------------------------------------------------------------------------


def test_cli_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = pytest.importorskip("ddm.io.checkpoint")
    from ddm.cli import main
    from ddm.model import EMA, ModelConfig, ScoreModel
    from ddm.tokenizers import CharTokenizer

    tok = CharTokenizer("abcd")
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=32, heads=2, blocks=1, cond_dim=16, seq_len=12, dropout=0.0)
    model = ScoreModel(cfg, Absorbing(tok.vocab_size), LogLinear(), tokenizer=tok)
    config = {
        "model": model.config.to_dict(),
        "graph": model.graph.to_config(),
        "schedule": model.schedule.to_config(),
        "tokenizer": tok.to_config(),
        "train": {},
    }
    opt = torch.optim.AdamW(model.parameters())
    path = checkpoint.save(tmp_path, 1, model=model, config=config, ema=EMA(model, 0.9), optimizer=opt)
    args = ["sample", "--checkpoint", str(path), "--steps", "8", "--num", "3", "--seed", "4"]
    assert main([*args, "--prefix", "ab", "--suffix", "dc"]) == 0
    out = capsys.readouterr()
    texts = out.out.strip("\n").split("\n" + "=" * 80 + "\n")
    assert len(texts) == 3
    for t in texts:
        assert len(t) == 12 and t.startswith("ab") and t.endswith("dc") and set(t) <= set("abcd")
    assert "network calls" in out.err
    # the same seed writes the same samples to a file
    dest = tmp_path / "samples.txt"
    assert main([*args, "--prefix", "ab", "--suffix", "dc", "--out", str(dest), "--no-progress"]) == 0
    assert dest.read_text(encoding="utf-8") == out.out
    # a prefix longer than the sequence is a clean error (exit status 2), not a traceback
    assert main([*args, "--prefix", "a" * 13]) == 2
    assert "longer than seq_len" in capsys.readouterr().err


def test_an_autoregressive_model_is_named_as_such() -> None:
    """An AR checkpoint given to sample() says what it is and how to draw from it (it used to say
    "graph is required")."""
    model = ARModel(ModelConfig(hidden=32, heads=2, blocks=1, cond_dim=16, seq_len=8), vocab_size=5)
    with pytest.raises(InvalidArgument, match="autoregressive.*ancestral_sample"):
        sample(model, 4)
