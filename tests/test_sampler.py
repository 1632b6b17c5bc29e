"""The scheduler-style `Sampler`: config, time grid, step dispatch, forward process, counter-based RNG."""

from __future__ import annotations

import json

import pytest
import torch
from ddm import _rng
from ddm.graphs import Absorbing, Uniform
from ddm.sampling import Sampler, SamplerOutput, sample
from ddm.sampling.sampler import inverse_cdf, native_available
from ddm.schedules import Geometric, LogLinear
from exact_scores import (
    BACKENDS,
    ExactScore,
    chi2_pvalue,
    correlated_law,
    empirical,
    needs_rust,
    one_torch_thread,  # noqa: F401
)
from scipy import stats

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GRAPHS = {"absorbing": (Absorbing(3), LogLinear()), "uniform": (Uniform(3), Geometric())}


# ---- config and grid ------------------------------------------------------------------------------------


def test_config_round_trips_through_json() -> None:
    s = Sampler(Uniform(7), Geometric(1e-3, 10.0), predictor="euler", eps=1e-4, denoise=False)
    cfg = json.loads(json.dumps(s.config))
    t = Sampler.from_config(cfg)
    assert t.config == s.config
    assert t.graph == Uniform(7) and t.schedule == Geometric(1e-3, 10.0)
    with pytest.raises(ValueError, match="unknown sampler config keys"):
        Sampler.from_config({**cfg, "steps": 3})


@pytest.mark.parametrize("denoise", [True, False])
@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_time_grid_and_step_noise(kind: str, denoise: bool) -> None:
    graph, schedule = GRAPHS[kind]
    steps, eps = 8, 1e-3
    t = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64)
    sb, rate = schedule(t)
    for predictor in ("analytic", "euler"):
        s = Sampler(graph, schedule, predictor=predictor, eps=eps, denoise=denoise)
        s.set_timesteps(steps)
        torch.testing.assert_close(s.times, t, rtol=0, atol=0)
        n_eval = steps + 1 if denoise else steps
        assert len(s.timesteps) == len(s.sigmas) == n_eval
        torch.testing.assert_close(s.sigmas, sb[:n_eval])
        for k in range(steps):  # docs/math.md section 5
            kind_k, noise = s.step_kind(k)
            assert kind_k == predictor
            want = rate[k] * (t[k] - t[k + 1]) if predictor == "euler" else sb[k] - sb[k + 1]
            assert noise == pytest.approx(float(want), rel=1e-12)
        if denoise:
            assert s.step_kind(steps) == ("denoise", pytest.approx(float(sb[-1]), rel=1e-12))
        sig = s.noise_level(2, 5)
        assert sig.shape == (5,) and bool((sig == sb[2]).all())


def test_step_argument_errors() -> None:
    s = Sampler(*GRAPHS["absorbing"])
    x = torch.full((2, 3), 3)
    ls = torch.zeros(2, 3, 4)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(ls, 0, x, seed=0)
    s.set_timesteps(4)
    with pytest.raises(ValueError, match=r"t_index must lie in \[0, 4\]"):
        s.step(ls, 5, x, seed=0)
    with pytest.raises(ValueError, match="log_score must have shape"):
        s.step(torch.zeros(2, 3, 3), 0, x, seed=0)
    with pytest.raises(TypeError, match="int64"):
        s.step(ls, 0, x.int(), seed=0)
    with pytest.raises(ValueError, match="not both"):
        s.step(ls, 0, x, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="backend must be one of"):
        s.step(ls, 0, x, seed=0, backend="numpy")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        s.set_timesteps(0)
    with pytest.raises(ValueError, match="predictor must be one of"):
        Sampler(*GRAPHS["absorbing"], predictor="tweedie")
    with pytest.raises(TypeError, match="graph must be"):
        Sampler("absorbing", LogLinear())
    out = s.step(ls, 0, x, seed=0)
    assert isinstance(out, SamplerOutput) and out.prev_sample.shape == (2, 3)


def test_generator_reproduces_a_step() -> None:
    s = Sampler(*GRAPHS["uniform"])
    s.set_timesteps(4)
    x = torch.randint(0, 3, (50, 4), generator=torch.Generator().manual_seed(0))
    ls = torch.randn(50, 4, 3, generator=torch.Generator().manual_seed(1))
    a = s.step(ls, 0, x, generator=torch.Generator().manual_seed(5)).prev_sample
    b = s.step(ls, 0, x, generator=torch.Generator().manual_seed(5)).prev_sample
    c = s.step(ls, 0, x, generator=torch.Generator().manual_seed(6)).prev_sample
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_hand_written_loop_equals_sample(kind: str, backend: str) -> None:
    """`sample` is the Sampler loop: a user's loop with the same seed gives the same tokens."""
    graph, schedule = GRAPHS[kind]
    model = ExactScore(graph, correlated_law(3, 4))
    s = Sampler(graph, schedule, predictor="euler")
    s.set_timesteps(10)
    x = s.init_noise(6, 4, seed=21)
    for k in range(len(s.timesteps)):
        x = s.step(model(x, s.noise_level(k, 6)), k, x, seed=21, backend=backend).prev_sample
    y = sample(model, 10, graph=graph, schedule=schedule, seq_len=4, batch_size=6, predictor="euler",
               seed=21, backend=backend)  # fmt: skip
    assert torch.equal(x, y)


@needs_rust
@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_backends_draw_from_the_same_law(kind: str) -> None:
    """One analytic step from fixed tokens and log-scores: Rust draws follow the torch probabilities."""
    graph, schedule = GRAPHS[kind]
    s = Sampler(graph, schedule)
    s.set_timesteps(3)
    n = 20_000
    x = torch.full((n, 1), graph.dim - 1)
    ls = torch.tensor([0.3, -0.5, 1.2, 0.0])[: graph.dim].expand(n, 1, graph.dim).contiguous()
    probs = s.step_probs(ls, 1, x)[0, 0]  # (dim,)
    for backend in ("rust", "torch"):
        out = s.step(ls, 1, x, seed=13, backend=backend).prev_sample
        got = empirical(out, graph.dim)
        assert chi2_pvalue(got, probs, n) > 1e-3, backend


# ---- the two ends of the process ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(GRAPHS))
def test_add_noise_follows_the_forward_kernel(kind: str) -> None:
    graph, schedule = GRAPHS[kind]
    s = Sampler(graph, schedule)
    n, t = 30_000, 0.4
    x0 = torch.full((n, 1), 1)
    xt = s.add_noise(x0, t, seed=3)
    want = graph.transition(torch.tensor(1), schedule.total_noise(torch.tensor(t, dtype=torch.float64)))
    assert chi2_pvalue(empirical(xt, graph.dim), want, n) > 1e-3
    # per-sequence times, and rows keyed by (seed, row): a prefix of the batch is unchanged
    ts = torch.linspace(0.0, 1.0, 7, dtype=torch.float64)
    x7 = torch.randint(0, 3, (7, 5), generator=torch.Generator().manual_seed(0))
    a = s.add_noise(x7, ts, seed=9)
    assert torch.equal(a[0], x7[0])  # t = 0 keeps the data exactly (LogLinear: sigma_bar(0) = 0)
    assert torch.equal(a[:3], s.add_noise(x7[:3], ts[:3], seed=9))
    with pytest.raises(ValueError, match=r"\[B\] tensor"):
        s.add_noise(x7, ts[:3], seed=9)


def test_init_noise() -> None:
    s = Sampler(*GRAPHS["absorbing"])
    assert bool((s.init_noise(2, 5, seed=0) == 3).all())
    u = Sampler(Uniform(5), Geometric())
    x = u.init_noise(4000, 5, seed=1)
    assert (
        chi2_pvalue(empirical(x.reshape(-1, 1), 5), torch.full((5,), 0.2, dtype=torch.float64), 20_000) > 1e-3
    )
    assert torch.equal(x[:10], u.init_noise(10, 5, seed=1))


# ---- the categorical draw and the counter-based uniforms ------------------------------------------------


def test_inverse_cdf_is_exact_at_the_boundaries() -> None:
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.5, 0.0, 0.25]], dtype=torch.float64).expand(6, 6)
    u = torch.tensor([0.0, 0.2499, 0.25, 0.7499, 0.75, 1.0 - 2**-53], dtype=torch.float64)
    assert inverse_cdf(probs, u).tolist() == [1, 1, 3, 3, 5, 5]  # never the zero-probability states


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_inverse_cdf_refuses_invalid_rows(bad: float) -> None:
    # the steps clip at 0 before drawing; a negative, NaN or inf weight reaching the draw is a bug upstream
    probs = torch.tensor([[0.5, bad, 0.5], [0.2, 0.3, 0.5]], dtype=torch.float64)
    with pytest.raises(ValueError, match="non-negative with a positive, finite sum"):
        inverse_cdf(probs, torch.tensor([0.5, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="non-negative with a positive, finite sum"):
        inverse_cdf(torch.zeros(1, 3, dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64))


def test_mix32_matches_a_uint32_reference_and_is_a_bijection() -> None:
    def ref(x: int) -> int:  # lowbias32 in plain Python uint32 arithmetic
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    xs = torch.randint(0, 2**32, (5000,), generator=torch.Generator().manual_seed(0), dtype=torch.int64)
    xs = torch.cat([xs, torch.tensor([0, 1, 2**32 - 1])])
    got = _rng.mix32(xs)
    assert got.tolist() == [ref(int(v)) for v in xs]
    assert [_rng.mix32(int(v)) for v in xs[:50]] == got[:50].tolist()  # the int path agrees
    grid = torch.arange(2**16, dtype=torch.int64) * 65537
    assert torch.unique(_rng.mix32(grid)).numel() == 2**16


def test_uniforms_are_uniform_and_keyed() -> None:
    rows = torch.arange(400)
    u = _rng.uniforms(7, _rng.STREAM_STEP, 3, rows, 250)  # (400, 250)
    assert u.dtype == torch.float64 and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert stats.kstest(u.reshape(-1).numpy(), "uniform").pvalue > 1e-3
    # neighbouring keys are uncorrelated: positions, rows, steps, seeds, streams
    others = [
        u[:, 1:].reshape(-1),
        _rng.uniforms(7, _rng.STREAM_STEP, 3, rows + 1, 250)[:, :-1].reshape(-1),
        _rng.uniforms(7, _rng.STREAM_STEP, 4, rows, 250)[:, :-1].reshape(-1),
        _rng.uniforms(8, _rng.STREAM_STEP, 3, rows, 250)[:, :-1].reshape(-1),
        _rng.uniforms(7 + 2**32, _rng.STREAM_STEP, 3, rows, 250)[:, :-1].reshape(-1),
        _rng.uniforms(7, _rng.STREAM_LIMIT, 3, rows, 250)[:, :-1].reshape(-1),
    ]
    base = u[:, :-1].reshape(-1)
    for i, o in enumerate(others):
        r = float(torch.corrcoef(torch.stack([base, o]))[0, 1])
        assert abs(r) < 4 / base.numel() ** 0.5, f"key variant {i}: correlation {r}"
    # a row depends only on its index
    assert torch.equal(u[17], _rng.uniforms(7, _rng.STREAM_STEP, 3, torch.tensor([17]), 250)[0])


# ---- 64-bit keys (issue 12, defect 4) --------------------------------------------------------------------


def test_torch_uniforms_key_the_full_64_bits_of_step_and_sequence() -> None:
    seq = torch.arange(4)
    base = _rng.uniforms(7, _rng.STREAM_STEP, 3, seq, 5)
    for other in (
        _rng.uniforms(7, _rng.STREAM_STEP, 3, seq + 2**32, 5),
        _rng.uniforms(7, _rng.STREAM_STEP, 3 + 2**32, seq, 5),
        _rng.uniforms(7, _rng.STREAM_STEP, 3, seq + 2**62, 5),
    ):
        assert not bool((other == base).any()), "a high bit of the key is ignored"


@pytest.mark.parametrize(
    "backend",
    ["torch", pytest.param("rust", marks=pytest.mark.skipif(not native_available(), reason="no _core"))],
)
def test_seq_offset_two_to_the_32_gives_other_draws(backend: str) -> None:
    s = Sampler(Uniform(50), Geometric())
    s.set_timesteps(2)
    x = torch.zeros(8, 16, dtype=torch.int64)
    log_score = torch.zeros(8, 16, 50)  # uniform scores: every step moves many positions
    a = s.step(log_score, 0, x, seed=5, seq_offset=0, backend=backend).prev_sample
    b = s.step(log_score, 0, x, seed=5, seq_offset=2**32, backend=backend).prev_sample
    c = s.step(log_score, 0, x, seed=5, seq_offset=0, backend=backend).prev_sample
    assert torch.equal(a, c)
    assert (a != b).float().mean() > 0.5, "seq_offset 2^32 repeats the draws of seq_offset 0"
    i0 = s.init_noise(8, 16, seed=5, seq_offset=0)
    i1 = s.init_noise(8, 16, seed=5, seq_offset=2**32)
    assert (i0 != i1).float().mean() > 0.5
