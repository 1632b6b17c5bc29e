"""An autoregressive transformer baseline built from the score network's blocks.

The same `DiTBlock`s (pre-norm, adaLN-Zero modulation, rotary self-attention, MLP) with a causal mask
(`is_causal=True` in `scaled_dot_product_attention`) and no noise input: the conditioning vector is the
constant zero vector, so every modulation layer reduces to its learned bias (a learned per-block shift,
scale and gate, zero at initialisation). The parameter count matches a `ScoreModel` of the same config
up to the noise embedding (absent here) and one extra embedding row (BOS).

What the likelihood counts (exact, no bound): a block `x = (x_1 .. x_L)` is scored as

    log p(x) = sum_{i=1..L} log p(x_i | x_<i),

where `p(x_1 | x_<1)` is the prediction at a BOS token (id `vocab_size`, never a data token): a learned
unconditional distribution for the first token. The network reads `(BOS, x_1, .., x_{L-1})` and its
output at position i is the distribution of `x_{i+1}`, so all L tokens of a block are scored and the
probabilities of all `vocab_size ** L` blocks sum to 1 (tested by brute force). Training minimises the
mean over blocks of `-log p(x)` (next-token cross-entropy summed over the block); the per-token NLL is
that divided by L, directly comparable with the diffusion bound on the same blocks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ddm._categorical import inverse_cdf
from ddm.errors import InvalidArgument
from ddm.model.embeddings import Rotary
from ddm.model.transformer import DiTBlock, ModelConfig, _FinalLayer, bf16_autocast_on, run_block

__all__ = ["ARModel", "CausalBlock", "ancestral_sample", "sequence_nll"]


class CausalBlock(DiTBlock):
    """A `DiTBlock` whose self-attention is causal: position i attends to positions `<= i` only."""

    causal = True


class ARModel(nn.Module):
    """Causal transformer over `vocab_size` tokens: `model(x) -> next-token logits`.

    Attributes:
        config: the `ModelConfig` (`time_conditioning` and `scale_by_sigma` are unused).
        vocab_size: number of data tokens; the BOS token has id `vocab_size`.
        bos_id: `vocab_size`.
        seq_len: the longest block the model scores or samples.
        tokenizer: the tokenizer of the training corpus, or None.
        objective: `"autoregressive"` (a `ScoreModel` has no such attribute; `ddm eval` and `ddm report`
            dispatch on it).
    """

    objective = "autoregressive"

    def __init__(self, config: ModelConfig | dict | str, vocab_size: int, tokenizer: Any = None) -> None:
        super().__init__()
        if isinstance(config, str):
            config = ModelConfig.from_size(config)
        elif isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        elif not isinstance(config, ModelConfig):
            raise InvalidArgument(
                f"config must be a ModelConfig, dict or size name, got {type(config).__name__}"
            )
        config.validate()
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 2:
            raise InvalidArgument(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
        self.config = config
        self.vocab_size = vocab_size
        self.bos_id = vocab_size
        self.seq_len = config.seq_len
        self.tokenizer = tokenizer
        # bf16 autocast on a CPU with native bf16, as ScoreModel.cpu_bf16 (an opt-in; float32 by default)
        self.cpu_bf16 = False
        self.grad_checkpointing = False  # recompute each block in the backward pass (run_block)

        self.embed = nn.Embedding(vocab_size + 1, config.hidden)  # + BOS
        nn.init.normal_(self.embed.weight, std=0.02)
        self.rotary = Rotary(config.hidden // config.heads, config.seq_len)
        self.blocks = nn.ModuleList(
            CausalBlock(config.hidden, config.heads, config.cond_dim, config.mlp_ratio, config.dropout)
            for _ in range(config.blocks)
        )
        # zero-initialised: a fresh model predicts the uniform law, NLL = ln(vocab_size) per token
        self.final = _FinalLayer(config.hidden, config.cond_dim, vocab_size)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Next-token logits of a block.

        Args:
            x: tokens, int64 `[B, L]` in `[0, vocab_size)`, `1 <= L <= seq_len`.

        Returns:
            float32 `[B, L, vocab_size]` logits: row i is the distribution of `x[:, i]` given `x[:, :i]`
            (row 0 given BOS alone).
        """
        if x.dim() != 2:
            raise InvalidArgument(f"x must have shape [B, L], got {tuple(x.shape)}")
        B, L = x.shape
        if not 1 <= L <= self.seq_len:
            raise InvalidArgument(f"sequence length {L} must be in [1, seq_len = {self.seq_len}]")
        bos = torch.full((B, 1), self.bos_id, dtype=x.dtype, device=x.device)
        inp = torch.cat([bos, x[:, :-1]], dim=1)  # (B, L): BOS, x_1 .. x_{L-1}
        c = torch.zeros(B, self.config.cond_dim, device=x.device)  # (B, cond_dim) constant conditioning
        use_bf16 = bf16_autocast_on(x.device.type, self.config.bf16, self.cpu_bf16)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            h = self.embed(inp)  # (B, L, hidden)
            cos, sin = self.rotary(L)
            for block in self.blocks:
                h = run_block(block, self.grad_checkpointing, h, c, cos, sin)
            logits = self.final(h, c)  # (B, L, V)
        return logits.float()


def _check_tokens(x: Any, vocab_size: int, name: str = "x") -> torch.Tensor:
    if not torch.is_tensor(x):
        raise InvalidArgument(f"{name} must be a LongTensor [B, L], got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype == torch.bool:
        raise InvalidArgument(f"{name} must hold integer token ids, got dtype {x.dtype}")
    if x.dim() != 2 or x.numel() == 0:
        raise InvalidArgument(f"{name} must have shape [B, L] with B, L >= 1, got {tuple(x.shape)}")
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= vocab_size:
        raise InvalidArgument(
            f"{name} holds token ids in [{lo}, {hi}], outside the vocabulary [0, {vocab_size})"
        )
    return x.long()


def sequence_nll(model: Any, x: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
    """Exact negative log-likelihood of each block, `-sum_i log p(x_i | x_<i)` in nats.

    Args:
        model: an `ARModel` (or a wrapper whose call returns its logits, e.g. DistributedDataParallel;
            `vocab_size` is read from the wrapped module).
        x: int64 `[B, L]` tokens in `[0, vocab_size)`.
        scored: optional bool `[B, L]`: only these positions count (a response given its prompt,
            `ddm.data.pairs`), and the sum is normalised over them: `L / n_scored` times it, the
            per-token loss of the diffusion objectives' masks (`ddm.training.objective`).

    Returns:
        float32 `[B]` NLL per block (differentiable; divide by L for nats per token).
    """
    inner = getattr(model, "module", model)
    x = _check_tokens(x, inner.vocab_size)
    logits = model(x)  # (B, L, V)
    nll = F.cross_entropy(logits.transpose(1, 2), x, reduction="none")  # (B, L)
    if scored is None:
        return nll.sum(-1)  # (B,)
    nll = torch.where(scored, nll, torch.zeros_like(nll))
    return nll.sum(-1) * (x.shape[1] / scored.sum(-1).clamp(min=1).to(nll.dtype))


@torch.no_grad()
def ancestral_sample(
    model: ARModel,
    batch_size: int,
    seq_len: int | None = None,
    *,
    seed: int = 0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Draws blocks from the model's exact law, one token at a time (ancestral sampling).

    Categoricals are drawn in float64 by inverse CDF (`ddm.sampling.sampler.inverse_cdf`; no float32
    Gumbel truncation, docs/math.md section 5). Each
    step reruns the network on the prefix (no key/value cache): `O(L^2)` work, meant for tests and small
    reference sets.

    Args:
        model: an `ARModel`.
        batch_size: number of blocks `B`.
        seq_len: block length (default `model.seq_len`).
        seed: seed of a `torch.Generator` on the CPU.
        temperature: divides the logits (1.0: the model's law).

    Returns:
        int64 `[batch_size, seq_len]` tokens on the model's device.
    """
    seq_len = model.seq_len if seq_len is None else seq_len
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise InvalidArgument(f"{name} must be a positive integer, got {v!r}")
    if seq_len > model.seq_len:
        raise InvalidArgument(f"seq_len {seq_len} is larger than the model's seq_len {model.seq_len}")
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise InvalidArgument(f"temperature must be a positive finite number, got {temperature!r}")
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(batch_size, seq_len, dtype=torch.long, device=model.device)  # (B, L)
    try:
        for i in range(seq_len):
            # positions > i do not influence row i (causal), so the zeros there are harmless
            logits = model(x[:, : i + 1])[:, i].double().cpu() / temperature  # (B, V)
            probs = torch.softmax(logits, dim=-1)  # (B, V) float64
            u = torch.rand(batch_size, generator=gen, dtype=torch.float64)  # (B,) in [0, 1)
            x[:, i] = inverse_cdf(probs, u).to(x.device)  # (B,)
    finally:
        if was_training:
            model.train()
    return x
