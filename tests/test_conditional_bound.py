"""`ddm.eval.conditional_bound`: the bound on scored positions given clean context positions."""

from __future__ import annotations

import math

import pytest
import torch
from ddm.eval import conditional_bound, likelihood_bound
from ddm.graphs import Absorbing, Uniform
from ddm.model import ModelConfig, ScoreModel
from ddm.schedules import Geometric, LogLinear


def _model(graph, schedule) -> ScoreModel:
    cfg = ModelConfig(hidden=32, heads=2, blocks=1, cond_dim=16, seq_len=16, dropout=0.0)
    cfg.scale_by_sigma = graph.absorbing
    model = ScoreModel(cfg, graph, schedule)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize(
    "graph,schedule", [(Absorbing(10), LogLinear()), (Uniform(10), Geometric(1e-3, 5.0))], ids=["abs", "uni"]
)
def test_every_position_scored_is_likelihood_bound_with_the_same_draws(graph, schedule):
    model = _model(graph, schedule)
    x = torch.randint(0, graph.vocab_size, (5, 16), generator=torch.Generator().manual_seed(1))
    b = likelihood_bound(model, x, num_t=8, batch_size=7, seed=3)
    c = conditional_bound(model, x, torch.ones(16, dtype=torch.bool), num_t=8, batch_size=7, seed=3)
    assert float((c.nats / 16).mean()) == b.nats_per_token
    assert c.tokens.tolist() == [16] * 5 and (c.mc_stderr > 0).all()
    nothing = conditional_bound(model, x, torch.zeros(16, dtype=torch.bool), num_t=4)
    assert nothing.nats.tolist() == [0.0] * 5 and nothing.tokens.tolist() == [0] * 5


def test_masked_diffusion_model_is_likelihood_bound_with_the_same_draws():
    graph, schedule = Absorbing(10), LogLinear()
    cfg = ModelConfig(hidden=32, heads=2, blocks=1, cond_dim=16, seq_len=16, dropout=0.0, subs=True)
    model = ScoreModel(cfg, graph, schedule)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    x = torch.randint(0, graph.vocab_size, (3, 16), generator=g)
    b = likelihood_bound(model.eval(), x, num_t=4, batch_size=5, seed=1)
    c = conditional_bound(model, x, torch.ones(16, dtype=torch.bool), num_t=4, batch_size=5, seed=1)
    assert float((c.nats / 16).mean()) == pytest.approx(b.nats_per_token, rel=1e-12)


def test_context_positions_are_never_noised_and_shape_errors_are_named():
    graph, schedule = Absorbing(10), LogLinear()
    seen = []

    def model(x, sigma):
        seen.append(x.clone())
        return torch.zeros(*x.shape, graph.dim)

    x = torch.randint(0, 9, (3, 8), generator=torch.Generator().manual_seed(2))
    scored = torch.arange(8) >= 5
    conditional_bound(model, x, scored, num_t=16, graph=graph, schedule=schedule)
    xs = torch.cat(seen)
    assert torch.equal(xs[:, :5], x.repeat_interleave(16, 0)[:, :5])  # the context stays clean
    assert (xs[:, 5:] == graph.mask_id).any()  # the continuation is noised
    with pytest.raises(ValueError, match="scored must have shape"):
        conditional_bound(model, x, torch.ones(7, dtype=torch.bool), graph=graph, schedule=schedule)
    with pytest.raises(TypeError, match="bool"):
        conditional_bound(model, x, torch.ones(8), graph=graph, schedule=schedule)


def test_exact_scores_give_the_conditional_nll():
    """With the exact scores of a correlated law over 3 positions, the bound on positions 1, 2 given a
    clean position 0 is -log p0(x1, x2 | x0) (up to the matched prior's O(eps) gap, here 1e-3)."""
    from exact_scores import ExactScore, correlated_law

    graph, schedule = Absorbing(3), LogLinear()
    p0 = correlated_law(3, 3, seed=4)
    model = ExactScore(graph, p0)
    for seq in ((0, 0, 0), (2, 1, 0), (1, 1, 2)):
        x = torch.tensor([seq] * 200)
        c = conditional_bound(
            model,
            x,
            torch.tensor([False, True, True]),
            num_t=16,
            batch_size=4096,
            graph=graph,
            schedule=schedule,
        )
        nll = -math.log(float(model.conditional({0: seq[0]})[seq[1] * 3 + seq[2]]))
        mean, se = float(c.nats.mean()), float(c.nats.std() / math.sqrt(len(x)))
        assert abs(mean - nll) < 4 * se + 3e-3, (seq, mean, se, nll)
        # the Monte-Carlo stderr is calibrated in root mean square against the spread over replicates
        rms = float(c.mc_stderr.pow(2).mean().sqrt())
        assert 0.7 < rms / float(c.nats.std()) < 1.3, (seq, rms, float(c.nats.std()))
