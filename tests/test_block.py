"""Block diffusion (BD3-LM, issue 15): the block-causal model, the block objective, the bound, the cache.

The equivalence tests compare a block model with `block_size = seq_len` against the same weights without
blocks; the cache tests compare the key / value cache against recomputing the whole context.
"""

from __future__ import annotations

import json

import pytest
import torch
from ddm import sample as ddm_sample
from ddm.errors import InvalidArgument
from ddm.eval.bound import conditional_bound, likelihood_bound
from ddm.graphs import Absorbing
from ddm.losses import block_loss, dwdse, masked_nelbo
from ddm.model import ScoreModel
from ddm.model.blocks import block_mask, training_mask
from ddm.model.transformer import ModelConfig
from ddm.schedules import LogLinear
from ddm.training import distributed as ddist

N, L = 7, 16
GRAPH, SCHEDULE = Absorbing(N), LogLinear()


def _config(subs: bool, block_size: int = 0, seq_len: int = L) -> ModelConfig:
    return ModelConfig(
        hidden=32, heads=2, blocks=2, cond_dim=16, seq_len=seq_len, dropout=0.0, time_conditioning=False,
        subs=subs, block_size=block_size,
    )  # fmt: skip


def _random_model(subs: bool, block_size: int = 0, seed: int = 0, seq_len: int = L) -> ScoreModel:
    """A model with every weight random (the zero-initialised output and gates too), so that every
    output depends on the context and the noise level."""
    torch.manual_seed(seed)
    model = ScoreModel(_config(subs, block_size, seq_len), GRAPH, SCHEDULE).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def _pair(subs: bool) -> tuple[ScoreModel, ScoreModel]:
    plain = _random_model(subs)
    block = ScoreModel(_config(subs, block_size=L), GRAPH, SCHEDULE).eval()
    block.load_state_dict(plain.state_dict())
    return plain, block


# ---- the mask -----------------------------------------------------------------------------------------


def test_training_mask_is_bd3lm_mask() -> None:
    """The `[x_t, x_0]` mask, entry by entry from BD3-LM section 3.2 (block size 2, L = 4)."""
    m = training_mask(4, 2).int()
    # queries: noisy 0..3, clean 0..3; keys likewise. Noisy sees its own noisy block and clean past blocks;
    # clean sees clean blocks up to its own.
    expect = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 1, 1],
            [0, 0, 0, 0, 1, 1, 1, 1],
        ]
    )
    assert torch.equal(m, expect)


def test_window_bands_the_mask() -> None:
    pos = torch.arange(8)
    noisy = torch.zeros(8, dtype=torch.bool)
    m = block_mask(pos, noisy, pos, noisy, 2, window=2)
    assert m[6].tolist() == [False] * 4 + [True] * 4  # block 3 sees (all of) blocks 2 and 3 only


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="block_size"):
        _config(True, block_size=5).validate()
    with pytest.raises(ValueError, match="time_conditioning=False"):
        ScoreModel(ModelConfig(**{**_config(True, 4).to_dict(), "time_conditioning": True}), GRAPH, SCHEDULE)
    model = _random_model(True, block_size=4)
    with pytest.raises(ValueError, match="x0"):
        model(torch.full((1, L), N), torch.ones(1))


# ---- block_size = seq_len is the ordinary model ----------------------------------------------------------


@pytest.mark.parametrize("subs", [True, False])
def test_one_block_loss_is_the_ordinary_loss(subs: bool) -> None:
    plain, block = _pair(subs)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randint(0, N, (4, L), generator=gen)
    t = torch.rand(4, generator=gen)
    u = torch.rand(4, L, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        if subs:
            want = masked_nelbo(plain.log_probs, GRAPH, SCHEDULE, x0, t=t, u=u)
            got = block_loss(lambda x, s, c: block(x, s, log_probs=True, x0=c), GRAPH, SCHEDULE, x0, L,
                             t=t[:, None], u=u)  # fmt: skip
        else:
            want = dwdse(plain, GRAPH, SCHEDULE, x0, t=t, u=u)
            got = block_loss(lambda x, s, c: block(x, s, x0=c), GRAPH, SCHEDULE, x0, L, loss="diffusion",
                             t=t[:, None], u=u)  # fmt: skip
    assert want.abs().min() > 1.0
    torch.testing.assert_close(got, want)


def test_one_block_vectorised_pass_is_the_ordinary_network() -> None:
    """With one block the model skips the clean copy; the `[x_t, x0]` pass with the mask gives the same."""
    _, block = _pair(True)
    gen = torch.Generator().manual_seed(14)
    x0 = torch.randint(0, N, (3, L), generator=gen)
    x_t = torch.where(torch.rand(3, L, generator=gen) < 0.5, N, x0)
    with torch.no_grad():
        c = block._cond(torch.zeros(3))
        torch.testing.assert_close(block._vectorised(x_t, x0, c), block._raw(x_t, 1.0, x0))


@pytest.mark.parametrize("subs", [True, False])
def test_one_block_keyed_training_loss_is_the_ordinary_one(subs: bool) -> None:
    """The training loop's keyed loss: block 0 gets the row's time and the same corruption."""
    plain, block = _pair(subs)
    x0 = torch.randint(0, N, (3, L), generator=torch.Generator().manual_seed(2))
    rows = torch.arange(5, 8)
    kw = dict(seed=3, step=11, rows=rows, eps_t=1e-3)
    with torch.no_grad():
        want = ddist.keyed_loss(
            (lambda x, s: plain(x, s, log_probs=True)) if subs else plain, GRAPH, SCHEDULE, x0,
            objective="masked" if subs else "diffusion", **kw,
        )  # fmt: skip
        got = ddist.keyed_loss(
            lambda x, s, c: block(x, s, log_probs=subs, x0=c), GRAPH, SCHEDULE, x0, objective="block",
            block_size=L, block_loss="masked" if subs else "diffusion", **kw,
        )  # fmt: skip
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("subs", [True, False])
def test_one_block_bound_is_the_ordinary_bound(subs: bool) -> None:
    plain, block = _pair(subs)
    x = torch.randint(0, N, (5, L), generator=torch.Generator().manual_seed(4))
    # the same estimator for both: a block model has only the "strata" design (one time per block)
    a = likelihood_bound(plain, x, num_t=4, batch_size=8, seed=5, design="strata")
    b = likelihood_bound(block, x, num_t=4, batch_size=8, seed=5)
    assert b.design == "strata"
    assert a.nats_per_token == pytest.approx(b.nats_per_token, rel=1e-6)
    assert a.stderr == pytest.approx(b.stderr, rel=1e-5)
    with pytest.raises(ValueError, match="not defined for block models"):
        likelihood_bound(block, x, num_t=4, design="masks")
    scored = torch.arange(L) >= 5
    ca = conditional_bound(plain, x, scored, num_t=3, seed=6, design="strata")
    cb = conditional_bound(block, x, scored, num_t=3, seed=6)
    torch.testing.assert_close(ca.nats, cb.nats)


def test_conditional_bound_refuses_context_after_a_scored_block() -> None:
    """A block is scored given the clean blocks before it only: context in a later block is invisible to
    it, so the figure would not bound -log p(scored | context). Refused, as `sample` refuses a suffix."""
    model = _random_model(True, block_size=4)
    x = torch.randint(0, N, (2, L), generator=torch.Generator().manual_seed(11))
    suffix_context = torch.arange(L) < 4  # block 0 scored, blocks 1..3 context
    with pytest.raises(InvalidArgument, match="context after a scored block"):
        conditional_bound(model, x, suffix_context, num_t=2)
    per_row = torch.stack([torch.arange(L) >= 8, torch.arange(L) == 2])  # row 1: context in blocks 1..3
    with pytest.raises(InvalidArgument, match="sequence 1"):
        conditional_bound(model, x, per_row, num_t=2)
    # context before the scored blocks, or inside a scored block, is what the model conditions on
    inside = (torch.arange(L) >= 4) & (torch.arange(L) != 5)  # position 5: context inside scored block 1
    for scored in (torch.arange(L) >= 8, inside):
        c = conditional_bound(model, x, scored, num_t=2)
        assert torch.isfinite(c.nats).all()


# ---- the block structure -------------------------------------------------------------------------------


def test_block_sees_only_the_clean_past() -> None:
    """Block b's output depends on x_t of block b and x0 of blocks < b, and on nothing else."""
    model = _random_model(True, block_size=4)
    gen = torch.Generator().manual_seed(7)
    x0 = torch.randint(0, N, (1, L), generator=gen)
    x_t = torch.where(torch.rand(1, L, generator=gen) < 0.5, N, x0)
    sigma = torch.rand(1, L, generator=gen) + 0.1
    base = model(x_t, sigma, log_probs=True, x0=x0)
    for b in range(4):
        lo, hi = 4 * b, 4 * b + 4
        x0b = x0.clone()
        x0b[:, lo:hi] = (x0b[:, lo:hi] + 1) % N  # change clean block b
        out = model(x_t, sigma, log_probs=True, x0=x0b)
        torch.testing.assert_close(out[:, :hi], base[:, :hi])  # blocks <= b do not see clean block b
        if hi < L:
            assert not torch.allclose(out[:, hi:], base[:, hi:])  # blocks > b do
        x_tb = x_t.clone()
        x_tb[:, lo:hi] = N  # change noisy block b
        out = model(x_tb, sigma, log_probs=True, x0=x0)
        torch.testing.assert_close(out[:, :lo], base[:, :lo])
        torch.testing.assert_close(out[:, hi:], base[:, hi:])


def test_block_noise_levels_are_per_block() -> None:
    """The DWDSE block model's scale is per position: block b's log-scores move with block b's sigma."""
    model = _random_model(False, block_size=4)
    x0 = torch.randint(0, N, (1, L), generator=torch.Generator().manual_seed(8))
    x_t = torch.full_like(x0, N)
    s1 = torch.full((1, L), 0.5)
    s2 = s1.clone()
    s2[:, 4:8] = 2.0
    a, b = model(x_t, s1, x0=x0), model(x_t, s2, x0=x0)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    torch.testing.assert_close(a[:, 8:], b[:, 8:])
    assert not torch.allclose(a[:, 4:8], b[:, 4:8])


# ---- the key / value cache -----------------------------------------------------------------------------


@pytest.mark.parametrize("subs", [True, False])
def test_cache_gives_the_recomputed_scores(subs: bool) -> None:
    """Block by block over 6 blocks of 4 (past seq_len = 16: the context slides), the cached scores of a
    noisy block equal one pass over the whole clean context, for the batch and for a subset of its rows."""
    model = _random_model(subs, block_size=4)
    gen = torch.Generator().manual_seed(9)
    B, bs = 3, 4
    clean = torch.randint(0, N, (B, 6 * bs), generator=gen)
    kv = model.empty_cache(B)
    idx = torch.tensor([2, 0])
    with torch.no_grad():
        for n in range(6):
            lo = n * bs
            x = torch.where(torch.rand(B, bs, generator=gen) < 0.6, N, clean[:, lo : lo + bs])
            sigma = torch.rand(B, generator=gen) + 0.05
            want = model.block_scores_recompute(clean[:, :lo], x, sigma)
            got = model.block_scores(x, sigma, kv)
            assert got.shape == (B, bs, GRAPH.dim)
            torch.testing.assert_close(got, want)
            sub = model.block_scores(x[idx], sigma[idx], kv.select(idx))
            torch.testing.assert_close(sub, want[idx])
            kv = model.commit_block(kv, clean[:, lo : lo + bs])
            assert kv.length == min(lo + bs, 12) and kv.end == lo + bs  # at most 3 blocks of context
    # inside seq_len the uncached pass is the training forward: a fully masked last block given x0
    x_t = clean[:, :L].clone()
    x_t[:, 12:] = N
    sigma = torch.full((B,), 0.7)
    with torch.no_grad():
        train_out = model(x_t, sigma, x0=clean[:, :L])[:, 12:]
        torch.testing.assert_close(model.block_scores_recompute(clean[:, :12], x_t[:, 12:], sigma), train_out)


def _record(model: ScoreModel, name: str, log: list[torch.Tensor]) -> None:
    fn = getattr(model, name)

    def wrapped(*args: object, **kwargs: object) -> torch.Tensor:
        out = fn(*args, **kwargs)
        log.append(out.clone())
        return out

    setattr(model, name, wrapped)


def _eos_for(x: torch.Tensor, prefix: int) -> int:
    """The token whose first occurrences after the prefix stop the rows at the most different lengths,
    some past seq_len (so the test crosses the sliding context)."""

    def lengths(tok: int) -> list[int]:
        hit = x[:, prefix:] == tok
        return [int(h.int().argmax()) + prefix + 1 if h.any() else x.shape[1] for h in hit]

    return max(range(N), key=lambda tok: (len(set(lengths(tok))) + (max(lengths(tok)) > L), -tok))


@pytest.mark.parametrize("predictor", ["analytic", "euler", "first_hitting", "confidence"])
def test_cached_sampling_equals_recomputing(predictor: str) -> None:
    """ddm.sample with and without the cache: the same log-scores at every call (float32 rounding) and
    the same tokens, on a batch whose rows stop at their end-of-sequence token at different lengths,
    with a prefix of one and a half blocks and max_len past seq_len."""
    prefix, max_len = [1, 2, 3, 1, 2, 3], 32
    kw = dict(batch_size=5, max_len=max_len, seed=3, predictor=predictor, prefix=prefix, return_stats=True)
    eos = _eos_for(ddm_sample(_random_model(True, block_size=4), 4, **kw)[0], len(prefix))
    runs = []
    for kv in (True, False):
        model = _random_model(True, block_size=4)
        log: list[torch.Tensor] = []
        _record(model, "block_scores" if kv else "block_scores_recompute", log)
        x, stats = ddm_sample(model, 4, kv_cache=kv, stop_at_eos=True, eos_id=eos, **kw)
        runs.append((x, stats, log))
    (xa, sa, la), (xb, sb, lb) = runs
    assert torch.equal(xa, xb)
    assert torch.equal(sa.lengths, sb.lengths)
    assert len(set(sa.lengths.tolist())) > 1 and int(sa.lengths.max()) > L  # different lengths, past L
    assert len(la) == len(lb) > 5
    for a, b in zip(la, lb, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.equal(xa[:, :6], torch.tensor(prefix).expand(5, 6))
    for row, n in zip(xa, sa.lengths.tolist(), strict=True):
        assert n > 6 and not (row[6 : n - 1] == eos).any()  # stops at its first EOS
        assert row[n - 1] == eos or n == max_len
        assert (row[n:] == eos).all()  # padded with EOS


def test_block_sampling_rows_do_not_depend_on_the_batch() -> None:
    model = _random_model(False, block_size=4)
    a = ddm_sample(model, 6, batch_size=3, max_len=20, seed=11)
    b = ddm_sample(model, 6, batch_size=1, max_len=20, seed=11)
    assert a.shape == (3, 20) and torch.equal(a[:1], b)
    assert not (a == N).any()
    c = ddm_sample(model, 6, batch_size=3, max_len=20, seed=12)
    assert not torch.equal(a, c)


def test_block_sampling_checks() -> None:
    model = _random_model(True, block_size=4)
    with pytest.raises(ValueError, match="predictor must be"):
        ddm_sample(model, 4, predictor="ancestral", max_len=8)
    with pytest.raises(ValueError, match="remask"):
        ddm_sample(model, 4, predictor="confidence", remask=0.1, max_len=8)
    with pytest.raises(ValueError, match="eos_id"):
        ddm_sample(model, 4, max_len=8, stop_at_eos=True)
    with pytest.raises(ValueError, match="suffix"):
        ddm_sample(model, 4, max_len=8, suffix=[1])
    with pytest.raises(ValueError, match="max_len"):
        ddm_sample(_random_model(True), 4, max_len=8)


# ---- training and the command line ---------------------------------------------------------------------


@pytest.mark.parametrize("block_loss_kind", ["masked", "diffusion"])
def test_train_eval_sample_on_the_command_line(tmp_path, capsys, block_loss_kind: str) -> None:
    from ddm.cli import main
    from ddm.io import load

    run = tmp_path / "run"
    argv = ["train", "--run-dir", str(run), "--objective", "block", "--block-size", "4", "--block-loss",
            block_loss_kind, "--hidden", "32", "--heads", "2", "--blocks", "1", "--cond-dim", "16",
            "--seq-len", "16", "--batch-size", "4", "--steps", "3", "--warmup-steps", "1", "--eval-every",
            "0", "--eval-sequences", "2", "--eval-num-t", "2", "--save-every", "3", "--no-progress",
            "--no-plot"]  # fmt: skip
    assert main(argv) == 0
    model = load(run)
    assert model.block_size == 4 and model.config.subs == (block_loss_kind == "masked")
    assert model.time_independent
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--json", "--num-t", "2", "--max-sequences", "3"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["seq_len"] == 16 and 0 < rec["nats_per_token"] < 10 and "bits_per_char" in rec
    out = tmp_path / "s.txt"
    assert main(["sample", "--checkpoint", str(run), "--steps", "4", "--num", "2", "--max-len", "37",
                 "--prefix", "the ", "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    texts = out.read_text(encoding="utf-8").split("\n" + "=" * 80 + "\n")
    assert len(texts) == 2 and all(t.startswith("the ") for t in texts)
    assert len(texts[0]) == 37
    eos = model.tokenizer.encode("e")[0]  # a frequent character as the end of sequence
    assert main(["sample", "--checkpoint", str(run), "--steps", "4", "--num", "3", "--max-len", "64",
                 "--stop-at-eos", "--eos-id", str(eos), "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    for t in out.read_text(encoding="utf-8").rstrip("\n").split("\n" + "=" * 80 + "\n"):
        assert t.count("e") <= 1 and (t.endswith("e") or len(t) == 64)
    assert main(["sample", "--checkpoint", str(run), "--stop-at-eos"]) == 2  # the char tokenizer has no EOS


# ---- documents and end-of-sequence ids -----------------------------------------------------------------


def test_eos_ids_of_the_tokenizers() -> None:
    from ddm.data.registry import EOS_CHAR, REGISTRY, _documents
    from ddm.tokenizers import CharTokenizer, ProteinTokenizer, from_config

    tok = CharTokenizer("ab\x03", eos="\x03")
    assert tok.eos_id == 0 and from_config(tok.to_config()) == tok and tok != CharTokenizer("ab\x03")
    assert (
        CharTokenizer("ab").to_config() == {"type": "char", "chars": "ab"}
        and CharTokenizer("ab").eos_id is None
    )
    with pytest.raises(ValueError, match="eos"):
        CharTokenizer("ab", eos="c")
    assert ProteinTokenizer().eos_id == ProteinTokenizer().encode("\n")[0]
    assert REGISTRY["shakespeare"].tokenizer["eos"] == EOS_CHAR
    split = _documents({"b": "two\n", "a": "one", "c": "three"}, ("b",), ("c",))
    assert split == {"train": "one\n\x03", "valid": "two\n\x03", "test": "three\n\x03"}
    with pytest.raises(ValueError, match="end-of-document"):
        _documents({"a": "x\x03"}, (), ())


def test_padding_after_eos_does_not_count() -> None:
    """With `scored = until_eos(x0)` the loss of rows padded after their EOS counts the EOS and nothing
    after it: the times of the blocks that hold only padding do not matter, and padding stays clean."""
    from ddm.losses import until_eos

    model = _random_model(True, block_size=4)
    x0 = torch.tensor([[1, 2, 3, 5, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0] * 4])  # EOS = 0
    scored = until_eos(x0, 0)
    assert scored.sum(1).tolist() == [6, 2]
    u = torch.rand(2, L, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    seen: list[torch.Tensor] = []

    def fn(x: torch.Tensor, s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return model(x, s, log_probs=True, x0=c)

    t1 = torch.tensor([[0.3, 0.6, 0.2, 0.9], [0.5, 0.4, 0.7, 0.8]])
    t2 = t1.clone()
    t2[0, 2:] = 0.99  # blocks of padding only
    t2[1, 1:] = 0.99
    with torch.no_grad():
        a = block_loss(fn, GRAPH, SCHEDULE, x0, 4, t=t1, u=u, scored=scored)
        b = block_loss(fn, GRAPH, SCHEDULE, x0, 4, t=t2, u=u, scored=scored)
    torch.testing.assert_close(a, b)
    assert torch.equal(seen[0][~scored], x0[~scored])  # the padding is never masked
