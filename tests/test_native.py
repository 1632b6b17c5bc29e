"""The Rust core `ddm._core` through `ddm.sampling._native`: argument checks, determinism, `out=`, shapes.

The laws of the kernels are tested against the torch reference in `tests/test_parity.py`, and inside the
crate (`cargo test`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ddm import _core
from ddm.errors import BackendError, InvalidArgument
from ddm.graphs import Absorbing, Uniform
from ddm.sampling import _native

N = 7  # vocab size: absorbing dim 8 (MASK = 7), uniform dim 7
B, L = 3, 5
STEPS = _native.KINDS  # the kinds of `_core.reverse_step`
STREAM = 0x5EED0003  # the stream tag of `_core.corrupt`'s key


def kind(absorbing: bool) -> str:
    """The graph kind name of `_core` for the absorbing or the uniform graph."""
    return "absorbing" if absorbing else "uniform"


def arrays(absorbing: bool = True, seed: int = 0) -> dict:
    """Valid numpy arguments for a `_core` step on a [B, L] batch."""
    rng = np.random.default_rng(seed)
    dim = N + absorbing
    x = rng.integers(0, dim, (B, L), dtype=np.int64)
    return {
        "x": x,
        "log_score": rng.normal(size=(B, L, dim)).astype(np.float32),
        "level": np.full(B, 0.3),
        "graph": kind(absorbing),
        "vocab_size": N,
        "seed": 1,
        "step": 2,
    }


def call(name: str, a: dict, **kw):
    """Calls `_core.corrupt`, or `_core.reverse_step` of kind `name`, with the arguments in `a`."""
    a = {**a, **kw}
    level = a.pop("level")
    if name == "corrupt":
        a.pop("log_score")
        # p_move = 1 - e^{-level} unless given; an infinite level stays infinite (and is refused)
        p_move = (
            np.where(np.isinf(level), level, -np.expm1(-level)) if isinstance(level, np.ndarray) else level
        )
        return _core.corrupt(**{"p_move": p_move, "stream": STREAM, **a})
    return _core.reverse_step(name, level=level, **a)


def _f32(shape):
    return np.zeros(shape, np.float32)


# (description, function names, argument overrides, exception, message fragment)
BAD = [
    ("x float64", STEPS + ("corrupt",), {"x": np.zeros((B, L))}, TypeError, "x: expected dtype int64"),
    (
        "x int32",
        STEPS + ("corrupt",),
        {"x": np.zeros((B, L), np.int32)},
        TypeError,
        "x: expected dtype int64",
    ),
    ("x a list", STEPS + ("corrupt",), {"x": [[0] * L] * B}, TypeError, "x: expected a numpy.ndarray"),
    ("x rank 1", STEPS + ("corrupt",), {"x": np.zeros(B, np.int64)}, ValueError, "x: expected a 2-d"),
    ("x rank 3", STEPS + ("corrupt",), {"x": np.zeros((B, L, 1), np.int64)}, ValueError, "x: expected a 2-d"),
    (
        "x not contiguous",
        STEPS + ("corrupt",),
        {"x": np.zeros((L, B), np.int64).T},
        ValueError,
        "C-contiguous",
    ),
    (
        "x negative id",
        STEPS + ("corrupt",),
        {"x": np.full((B, L), -1, np.int64)},
        ValueError,
        "x: token id -1",
    ),
    (
        "x id > MASK",
        STEPS + ("corrupt",),
        {"x": np.full((B, L), N + 1, np.int64)},
        ValueError,
        "out of range",
    ),
    (
        "uniform given MASK",
        STEPS + ("corrupt",),
        {"graph": "uniform", "log_score": _f32((B, L, N)), "x": np.full((B, L), N, np.int64)},
        ValueError,
        "no MASK",
    ),
    (
        "score float64",
        STEPS,
        {"log_score": np.zeros((B, L, N + 1))},
        TypeError,
        "log_score: expected dtype float32",
    ),
    ("score float16", STEPS, {"log_score": _f32((B, L, N + 1)).astype(np.float16)}, TypeError, "float32"),
    ("score rank 2", STEPS, {"log_score": _f32((B, L))}, ValueError, "log_score: expected a 3-d"),
    ("score wrong B", STEPS, {"log_score": _f32((B + 1, L, N + 1))}, ValueError, "log_score: expected shape"),
    ("score wrong L", STEPS, {"log_score": _f32((B, L + 1, N + 1))}, ValueError, "log_score: expected shape"),
    (
        "absorbing given uniform-shaped score",
        STEPS,
        {"log_score": _f32((B, L, N))},
        ValueError,
        "dim = vocab_size + 1",
    ),
    (
        "uniform given absorbing-shaped score",
        STEPS,
        {"graph": "uniform", "log_score": _f32((B, L, N + 1)), "x": np.zeros((B, L), np.int64)},
        ValueError,
        "dim = vocab_size = 7",
    ),
    (
        "score not contiguous",
        STEPS,
        {"log_score": _f32((B, N + 1, L)).transpose(0, 2, 1)},
        ValueError,
        "contiguous",
    ),
    (
        "level float32",
        STEPS + ("corrupt",),
        {"level": np.zeros(B, np.float32)},
        TypeError,
        "expected dtype float64",
    ),
    ("level rank 2", STEPS + ("corrupt",), {"level": np.zeros((B, 1))}, ValueError, "expected a 1-d"),
    ("level wrong B", STEPS + ("corrupt",), {"level": np.zeros(B + 1)}, ValueError, "expected shape [B]"),
    (
        "level negative",
        STEPS + ("corrupt",),
        {"level": np.array([0.1, -0.1, 0.1])},
        ValueError,
        "at [1] must be",
    ),
    ("level NaN", STEPS + ("corrupt",), {"level": np.array([0.1, np.nan, 0.1])}, ValueError, "finite"),
    ("level inf", STEPS + ("corrupt",), {"level": np.array([np.inf, 0.1, 0.1])}, ValueError, "finite"),
    ("vocab_size 0", STEPS + ("corrupt",), {"vocab_size": 0}, ValueError, "vocab_size: must be in [1"),
    ("vocab_size negative", STEPS + ("corrupt",), {"vocab_size": -3}, ValueError, "vocab_size"),
    ("vocab_size float", STEPS + ("corrupt",), {"vocab_size": 7.0}, TypeError, "vocab_size: expected an int"),
    ("graph a bool", STEPS + ("corrupt",), {"graph": True}, TypeError, "graph: expected a str"),
    (
        "graph of unknown kind",
        STEPS + ("corrupt",),
        {"graph": "lazy"},
        ValueError,
        "graph: the Rust core has kernels for the graphs 'absorbing' and 'uniform' only, got \"lazy\"",
    ),
    ("graph capitalised", STEPS + ("corrupt",), {"graph": "Uniform"}, ValueError, 'got "Uniform"'),
    (
        "seed negative",
        STEPS + ("corrupt",),
        {"seed": -1},
        ValueError,
        "seed: must be an integer in [0, 2**64)",
    ),
    ("seed too large", STEPS + ("corrupt",), {"seed": 2**64}, ValueError, "seed"),
    ("seed float", STEPS + ("corrupt",), {"seed": 1.5}, TypeError, "seed: expected an int"),
    ("step negative", STEPS + ("corrupt",), {"step": -2}, ValueError, "step"),
    ("seq_offset negative", STEPS + ("corrupt",), {"seq_offset": -1}, ValueError, "seq_offset"),
    (
        "stream too large",
        ("corrupt",),
        {"stream": 2**32},
        ValueError,
        "stream: must be an integer in [0, 2**32)",
    ),
    ("stream negative", ("corrupt",), {"stream": -1}, ValueError, "stream: must be an integer in [0, 2**64)"),
    ("p_move above 1", ("corrupt",), {"p_move": np.array([0.1, 1.5, 0.1])}, ValueError, "in [0, 1]"),
    (
        "out wrong shape",
        STEPS + ("corrupt",),
        {"out": np.zeros((B, L + 1), np.int64)},
        ValueError,
        "out: expected shape",
    ),
    (
        "out wrong dtype",
        STEPS + ("corrupt",),
        {"out": np.zeros((B, L), np.int32)},
        TypeError,
        "out: expected dtype",
    ),
    (
        "out read-only",
        STEPS + ("corrupt",),
        {"out": np.zeros((B, L), np.int64)},
        ValueError,
        "out: must be writeable",
    ),
]


@pytest.mark.parametrize(
    "name, case", [(n, c) for c in BAD for n in c[1]], ids=[f"{n}-{c[0]}" for c in BAD for n in c[1]]
)
def test_bad_input_raises(name, case):
    desc, _, over, exc, frag = case
    a = arrays()
    a["x"][:, 0] = N  # MASK rows, so that every step reads some rows
    over = dict(over)
    if desc == "out read-only":
        over["out"].setflags(write=False)
    with pytest.raises(exc, match=re.escape(frag)):
        call(name, a, **over)


@pytest.mark.parametrize("name", STEPS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_log_score_in_a_read_row(name, bad):
    for absorbing in (True, False):
        a = arrays(absorbing)
        a["x"][1, 2] = N if absorbing else 0  # absorbing: a MASK row, which is read
        a["log_score"][1, 2, 3] = bad
        with pytest.raises(ValueError, match=r"log_score: non-finite value .* at \[1, 2, 3\]"):
            call(name, a)


@pytest.mark.parametrize("name", STEPS)
def test_non_finite_log_score_where_never_read_is_ignored(name):
    # Documented: absorbing rows that are not MASK are never read, and the entry at the current token is
    # ignored (treated as 0) in every row.
    a = arrays(True)
    a["x"][:] = 2
    a["x"][0, 0] = N
    a["log_score"][1:, :, :] = np.nan  # rows with x = 2, never read
    a["log_score"][0, 0, N] = np.nan  # the MASK entry of the MASK row
    out = call(name, a)
    assert (out[1:] == 2).all()
    u = arrays(False)
    u["log_score"][np.arange(B)[:, None], np.arange(L)[None, :], u["x"]] = np.inf
    call(name, u)


def test_out_aliasing_an_input_is_refused():
    a = arrays()
    with pytest.raises(ValueError, match="out: must be writeable and must not share memory"):
        call("analytic", a, out=a["x"])


@pytest.mark.parametrize("name", [*STEPS, "corrupt"])
@pytest.mark.parametrize("absorbing", [True, False])
def test_out_is_written_and_returned(name, absorbing):
    a = arrays(absorbing)
    fresh = call(name, a)
    out = np.full((B, L), -5, np.int64)
    got = call(name, a, out=out)
    assert got is out
    np.testing.assert_array_equal(out, fresh)
    assert fresh.dtype == np.int64 and fresh.shape == (B, L) and fresh.flags.c_contiguous


@pytest.mark.parametrize("name", [*STEPS, "corrupt"])
@pytest.mark.parametrize("shape", [(0, L), (B, 0), (0, 0)])
def test_empty_shapes(name, shape):
    b, length = shape
    a = arrays()
    a["x"] = np.zeros(shape, np.int64)
    a["log_score"] = np.zeros((b, length, N + 1), np.float32)
    a["level"] = np.full(b, 0.5)
    out = call(name, a)
    assert out.shape == shape and out.dtype == np.int64


def _batch(absorbing: bool, seed: int = 3):
    """A batch of 6 sequences of 40 tokens, half of them MASK for the absorbing graph."""
    rng = np.random.default_rng(seed)
    dim = N + absorbing
    x = rng.integers(0, N, (6, 40), dtype=np.int64)
    if absorbing:
        x[rng.random((6, 40)) < 0.5] = N
    ls = rng.normal(size=(6, 40, dim)).astype(np.float32)
    return x, ls, rng.uniform(0.05, 2.0, 6)


@pytest.mark.parametrize("name", [*STEPS, "corrupt"])
@pytest.mark.parametrize("absorbing", [True, False])
def test_same_output_for_1_and_2_threads(name, absorbing, monkeypatch):
    x, ls, lv = _batch(absorbing)
    a = {
        "x": x,
        "log_score": ls,
        "level": lv,
        "graph": kind(absorbing),
        "vocab_size": N,
        "seed": 9,
        "step": 4,
    }
    monkeypatch.setenv("DDM_NUM_THREADS", "1")
    one = call(name, a)
    monkeypatch.setenv("DDM_NUM_THREADS", "2")
    two = call(name, a)
    np.testing.assert_array_equal(one, two)
    assert not np.array_equal(one, x) or name == "corrupt"  # something moved


@pytest.mark.parametrize("name", [*STEPS, "corrupt"])
@pytest.mark.parametrize("absorbing", [True, False])
def test_batch_split_with_seq_offset(name, absorbing):
    x, ls, lv = _batch(absorbing)
    a = {"graph": kind(absorbing), "vocab_size": N, "seed": 5, "step": 1}
    whole = call(name, {**a, "x": x, "log_score": ls, "level": lv})
    head = call(name, {**a, "x": x[:2].copy(), "log_score": ls[:2].copy(), "level": lv[:2].copy()})
    tail = call(
        name, {**a, "x": x[2:].copy(), "log_score": ls[2:].copy(), "level": lv[2:].copy()}, seq_offset=2
    )
    np.testing.assert_array_equal(whole, np.concatenate([head, tail]))
    # A different seed or step gives a different result.
    assert not np.array_equal(whole, call(name, {**a, "x": x, "log_score": ls, "level": lv, "seed": 6}))


_SCRIPT = """
import hashlib, numpy as np
from ddm import _core
rng = np.random.default_rng(0)
x = rng.integers(0, 8, (8, 300), dtype=np.int64)
ls = rng.normal(size=(8, 300, 8)).astype(np.float32)
out = _core.reverse_step("analytic", x, ls, np.full(8, 0.7), "absorbing", 7, 3, 1)
print(hashlib.sha256(out.tobytes()).hexdigest())
"""


def test_rayon_num_threads_in_subprocesses():
    env = {k: v for k, v in os.environ.items() if k != "DDM_NUM_THREADS"}
    digests = set()
    for n in ("1", "2"):
        r = subprocess.run(
            [sys.executable, "-c", _SCRIPT],
            env={**env, "RAYON_NUM_THREADS": n},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        digests.add(r.stdout.strip())
    assert len(digests) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kernel_works_in_a_forked_child(monkeypatch):
    # The pool is used in the parent first; a forked child must not wait on the parent's threads.
    monkeypatch.delenv("DDM_NUM_THREADS", raising=False)
    x, ls, lv = _batch(True)
    want = _core.reverse_step("analytic", x, ls, lv, "absorbing", N, 1, 2)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        signal.alarm(30)  # a deadlock ends the child with SIGALRM
        try:
            got = _core.reverse_step("analytic", x, ls, lv, "absorbing", N, 1, 2)
            os._exit(0 if np.array_equal(got, want) else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"


# ---------------------------------------------------------------------------------------------------
# The torch wrapper
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("graph", [Absorbing(N), Uniform(N)], ids=["absorbing", "uniform"])
def test_native_wrapper_matches_core(graph):
    x, ls, lv = _batch(graph.absorbing)
    xt, lst, lvt = torch.from_numpy(x), torch.from_numpy(ls), torch.from_numpy(lv)
    for step in STEPS:
        got = _native.reverse_step(step, graph, xt, lst, lvt, 3, 7)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.int64
        want = _core.reverse_step(step, x, ls, lv, kind(graph.absorbing), N, 3, 7)
        np.testing.assert_array_equal(got.numpy(), want)
    got = _native.corrupt(graph, xt, lvt, 3, stream=STREAM)
    want = _core.corrupt(x, -np.expm1(-lv), kind(graph.absorbing), N, 3, STREAM)
    np.testing.assert_array_equal(got.numpy(), want)
    out = torch.empty_like(xt)
    assert _native.reverse_step("analytic", graph, xt, lst, lvt, 3, 7, out=out) is out
    want = _core.reverse_step("analytic", x, ls, lv, kind(graph.absorbing), N, 3, 7)
    np.testing.assert_array_equal(out.numpy(), want)


@pytest.mark.parametrize(
    "which, value, exc, frag",
    [
        ("x", lambda t: t.to(torch.int32), InvalidArgument, "x must have dtype torch.int64"),
        ("log_score", lambda t: t.double(), InvalidArgument, "log_score must have dtype torch.float32"),
        ("level", lambda t: t.float(), InvalidArgument, "dsigma must have dtype torch.float64"),
        ("x", lambda t: t.numpy(), InvalidArgument, "x must be a torch.Tensor"),
        ("log_score", lambda t: t.transpose(0, 1), InvalidArgument, "log_score must be contiguous"),
        ("log_score", lambda t: t.clone().requires_grad_(True), InvalidArgument, "must not require grad"),
    ],
)
def test_native_wrapper_rejects_bad_tensors(which, value, exc, frag):
    x, ls, lv = _batch(True)
    args = {"x": torch.from_numpy(x), "log_score": torch.from_numpy(ls), "level": torch.from_numpy(lv)}
    args[which] = value(args[which])
    with pytest.raises(exc, match=re.escape(frag)):
        _native.reverse_step("analytic", Absorbing(N), args["x"], args["log_score"], args["level"], 0, 0)


class Lazy(Uniform):
    """A graph the Rust core has no kernel for: a subclass of `Uniform` (which may change its law)."""


class Other(Absorbing):
    """A subclass of `Absorbing`: refused too, never run on the absorbing kernel."""


def _entry_points(graph):
    """Every `_native` entry point called on `graph` with valid tensors, as (name, thunk)."""
    x, ls, lv = (torch.from_numpy(v) for v in _batch(True))
    prop = _native_proposal()
    yield "corrupt", lambda: _native.corrupt(graph, x.clamp(max=N - 1), lv, 0, stream=STREAM)
    for step in STEPS:
        yield f"reverse_step/{step}", lambda step=step: _native.reverse_step(step, graph, x, ls, lv, 0, 0)
        yield (
            f"proposal_step/{step}",
            lambda step=step: _native.proposal_step(step, graph, x, ls, lv, 0, 0, prop),
        )
    yield "propose", lambda: _native.propose(graph, x, ls, 0, 0, prop)


def _native_proposal():
    """A proposal transform (temperature, top-k, top-p) as `_native` reads it."""
    return SimpleNamespace(temperature=0.8, top_k=3, top_p=0.9)


@pytest.mark.parametrize("graph", [Lazy(N), Other(N), object()], ids=["Lazy", "Other", "object"])
def test_a_graph_without_a_kernel_is_a_backend_error_on_every_entry_point(graph):
    for name, thunk in _entry_points(graph):
        with pytest.raises(BackendError, match=re.escape(type(graph).__qualname__)) as e:
            thunk()
        assert 'backend="torch"' in str(e.value), name
        assert not isinstance(e.value, InvalidArgument), name


def test_the_known_graphs_run_on_every_entry_point():
    # The same calls with the exact graph types succeed: the refusal above is the graph's alone.
    for name, thunk in _entry_points(Absorbing(N)):
        assert thunk() is not None, name


@pytest.mark.parametrize(
    "bad, frag",
    [
        (lambda x: x.to(torch.int32), "x must have dtype torch.int64"),
        (lambda x: x.t(), "x must be contiguous"),
        (lambda x: x.clamp(max=N - 1)[:, :1].expand(-1, 40), "x must be contiguous"),
        (lambda x: x + 100, "out of range"),  # found by the Rust core
    ],
)
def test_bad_input_is_an_invalid_argument_on_every_entry_point(bad, frag):
    x, ls, lv = (torch.from_numpy(v) for v in _batch(True))
    xb = bad(x)
    prop = _native_proposal()
    calls = [
        lambda: _native.corrupt(Absorbing(N), xb, lv, 0, stream=STREAM),
        lambda: _native.reverse_step("analytic", Absorbing(N), xb, ls, lv, 0, 0),
        lambda: _native.proposal_step("analytic", Absorbing(N), xb, ls, lv, 0, 0, prop),
        lambda: _native.propose(Absorbing(N), xb, ls, 0, 0, prop),
    ]
    for call_ in calls:
        with pytest.raises(InvalidArgument, match=re.escape(frag)):
            call_()


@pytest.mark.parametrize("kind", ["Euler", "tweedie", ""])
def test_unknown_kind_is_a_value_error_naming_it(kind):
    a = arrays()
    with pytest.raises(
        ValueError, match=re.escape(f"kind: must be one of 'euler', 'analytic', 'denoise', got \"{kind}\"")
    ):
        call(kind, a)
    x, ls, lv = (torch.from_numpy(v) for v in _batch(True))
    with pytest.raises(
        InvalidArgument,
        match=re.escape(f"kind must be one of ('euler', 'analytic', 'denoise'), got {kind!r}"),
    ):
        _native.reverse_step(kind, Absorbing(N), x, ls, lv, 0, 0)


def test_non_string_kind_is_a_type_error():
    with pytest.raises(TypeError, match="kind: expected a str"):
        call(1, arrays())


def test_native_corrupt_checks_sigma():
    x = torch.zeros((2, 3), dtype=torch.int64)
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(
            ValueError, match=re.escape("sigma: noise level") + ".* at \\[1\\] must be finite"
        ):
            _native.corrupt(Uniform(N), x, torch.tensor([0.1, bad], dtype=torch.float64), 0, stream=STREAM)
    with pytest.raises(InvalidArgument, match="sigma must have dtype torch.float64"):
        _native.corrupt(Uniform(N), x, torch.tensor([0.1, 0.2]), 0, stream=STREAM)
