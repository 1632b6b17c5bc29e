"""The exact output law of the ReMDM sampler (docs/math.md section 10), computed without sampling.

With exact scores and a per-position denoiser, remasking does not make the sampler converge to `p0` as fast
as the plain sampler: the positions unmasked in one step are drawn independently given the visible ones, and
remasking keeps sending dependent positions back to be redrawn together. The 4,000-draw test of
`test_remask.py` cannot see a bias of 0.01 in TV (its noise floor is about 0.023); the exact law can.

The law is computed twice: from the sampler's own per-position step probabilities (`Sampler.step_probs`
through `exact_scores.sampler_law`), and from the formulas of docs/math.md section 10 by an independent
enumeration here (the rates, and `x_theta` as the exact conditional of `p0` given the visible tokens). The
two must agree to rounding, and draws of `ddm.sample` must follow that law and not the plain sampler's.
"""

from __future__ import annotations

import pytest
import torch
from ddm.graphs import Absorbing
from ddm.sampling import Sampler, sample
from ddm.sampling.sampler import native_available
from ddm.schedules import LogLinear
from exact_scores import (
    ExactScore,
    chi2_pvalue,
    correlated_law,
    empirical,
    one_torch_thread,  # noqa: F401
    sampler_law,
    tv,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_rust = pytest.mark.skipif(not native_available(), reason="ddm._core not built")
N, L = 3, 3
P0 = correlated_law(N, L)
GRAPH = Absorbing(N)
EPS = 1e-5  # the sampler's default last time


def _states(n: int, length: int) -> torch.Tensor:
    """Every sequence over `n` real tokens and MASK (= `n`), lexicographic: `[(n + 1)^length, length]`."""
    return torch.cartesian_prod(*[torch.arange(n + 1)] * length).reshape(-1, length)


def _posterior(p0: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
    """`x_theta` of exact scores: `p0(x^i = y | the visible tokens of x)` at each masked position.

    Returns:
        float64 `[S, L, n + 1]`: the conditional at masked positions (0 on MASK), 0 at visible ones.
    """
    n, length = p0.shape[0], p0.dim()
    theta = torch.zeros(seqs.shape[0], length, n + 1, dtype=torch.float64)
    for s, x in enumerate(seqs.tolist()):
        masked = [i for i, tok in enumerate(x) if tok == n]
        sub = p0[tuple(slice(None) if tok == n else tok for tok in x)]  # over the masked positions
        for j, i in enumerate(masked):
            marginal = sub.sum(dim=[d for d in range(len(masked)) if d != j]) if len(masked) > 1 else sub
            theta[s, i, :n] = marginal / marginal.sum()
    return theta


def remdm_law(p0: torch.Tensor, steps: int, eta: float, kind: str = "cap") -> torch.Tensor:
    """The exact law of ReMDM's output over `n^L` sequences, from the formulas of docs/math.md section 10.

    On `t_k = linspace(1, eps, steps + 1)` with `a = exp(-sigma_bar(t))`, step `k` moves every position
    independently: a real token to MASK with probability `r_k` (`"cap"`: `min(eta, r_max)`, `"rescale"`:
    `eta r_max`, `r_max = min(1, (1 - a_s) / a_t)`), a MASK to `y ~ x_theta` with probability
    `(a_s - (1 - r_k) a_t) / (1 - a_t)`. A last step unmasks every MASK left. `eta = 0` is the plain
    (MDLM, equivalently analytic) sampler.

    Returns:
        float64 `[n^L]`, lexicographic.
    """
    n = p0.shape[0]
    seqs = _states(n, p0.dim())
    masked = (seqs == n)[..., None]  # (S, L, 1)
    theta = _posterior(p0, seqs)  # (S, L, n + 1)
    keep = torch.nn.functional.one_hot(seqs, n + 1).to(torch.float64)  # (S, L, n + 1)
    a = torch.exp(-LogLinear().total_noise(torch.linspace(1.0, EPS, steps + 1, dtype=torch.float64)))

    def move(q: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:  # probs: (S, L, n + 1)
        trans = torch.ones(seqs.shape[0], seqs.shape[0], dtype=torch.float64)  # (S, S')
        for i in range(seqs.shape[1]):
            trans *= probs[:, i, seqs[:, i]]
        return q @ trans

    q = masked[:, :, 0].all(-1).to(torch.float64)  # all MASK
    for k in range(steps):
        a_t, a_s = float(a[k]), float(a[k + 1])
        r_max = min(1.0, (1 - a_s) / a_t)
        r = min(eta, r_max) if kind == "cap" else eta * r_max
        unmask = (a_s - (1 - r) * a_t) / (1 - a_t)
        at_mask = theta * unmask
        at_mask[..., n] = 1 - unmask
        at_real = keep * (1 - r)
        at_real[..., n] += r
        q = move(q, torch.where(masked, at_mask, at_real))
    q = move(q, torch.where(masked, theta, keep))
    return q[~masked[:, :, 0].any(-1)]


def _law_from_step_probs(steps: int, remask: float | None, kind: str = "cap") -> torch.Tensor:
    """The law of `Sampler(remask=...)` from its own `step_probs`, over the `n^L` sequences of real tokens."""
    sampler = Sampler(GRAPH, LogLinear(), remask=remask, remask_schedule=kind)
    sampler.set_timesteps(steps)
    law = sampler_law(ExactScore(GRAPH, P0), sampler)  # over dim^L, lexicographic
    real = ~(_states(N, L) == N).any(-1)
    assert float(law[~real].sum()) == pytest.approx(0.0, abs=1e-12), "mass left on MASK after denoising"
    return law[real]


@pytest.mark.parametrize(("steps", "eta", "kind"), [(6, 0.5, "cap"), (6, 0.5, "rescale"), (64, 0.05, "cap")])
def test_the_formulas_give_the_samplers_law(steps: int, eta: float, kind: str) -> None:
    mine = remdm_law(P0, steps, eta, kind)
    assert float(mine.sum()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(_law_from_step_probs(steps, eta, kind), mine, rtol=0, atol=1e-12)


def test_remasking_converges_slower_than_the_plain_sampler() -> None:
    """eta = 0.05 (cap): the exact TV to p0 is 0.0129 / 0.0094 at 256 / 1024 steps, against 0.0029 /
    0.00074 without remasking (which falls as 1/steps)."""
    p = P0.reshape(-1)
    plain = {s: tv(_law_from_step_probs(s, None), p) for s in (256, 1024)}
    remdm = {s: tv(_law_from_step_probs(s, 0.05), p) for s in (256, 1024)}
    print(f"exact TV to p0: plain {plain}, ReMDM eta 0.05 {remdm}")
    assert plain[256] < 0.004 and plain[1024] < 0.001
    assert plain[1024] / plain[256] == pytest.approx(0.25, rel=0.05)  # first order in the step
    assert remdm[256] > 0.01 and remdm[1024] > 0.008  # a bias the plain sampler has not
    assert remdm[256] > 3 * plain[256] and remdm[1024] > 10 * plain[1024]
    assert remdm[1024] / remdm[256] > 0.5  # four times the steps does not even halve it
    # the independent enumeration agrees where the gap is widest
    assert tv(remdm_law(P0, 1024, 0.05), p) == pytest.approx(remdm[1024], abs=1e-12)


@pytest.mark.parametrize("backend", ["torch", pytest.param("rust", marks=needs_rust)])
def test_draws_follow_the_remasking_law_not_the_plain_one(backend: str) -> None:
    """32 steps, eta = 1 (cap): the exact TV to p0 is 0.068 with remasking and 0.024 without (0.044
    between the two laws). 20,000 draws must fit the ReMDM law and reject the plain one: a test of the
    law that the plain sampler's bias could not pass."""
    n, steps = 20_000, 32
    remdm, plain = remdm_law(P0, steps, 1.0), remdm_law(P0, steps, 0.0)
    assert tv(remdm, plain) > 0.03
    x = sample(ExactScore(GRAPH, P0), steps, batch_size=n, remask=1.0, seed=21, backend=backend,
               graph=GRAPH, schedule=LogLinear(), seq_len=L)  # fmt: skip
    got = empirical(x, N)
    assert chi2_pvalue(got, remdm, n) > 1e-3
    assert chi2_pvalue(got, plain, n) < 1e-6
