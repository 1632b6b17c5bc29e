"""The score network: a DiT-style transformer over token sequences (SEDD, Lou, Meng, Ermon 2024, C.1).

Tokens are embedded, the total noise `sigma_bar` is embedded into a conditioning vector `c`, and each
layer (`DiTBlock`, DiT's name for it) applies adaLN-Zero modulation (shift, scale and a gate, all regressed
from `c` by a zero-initialised linear layer; Peebles & Xie 2023) around non-causal self-attention with
rotary positions and an MLP. "Block" elsewhere in the model means a BD3-LM block (`ddm.model.blocks`). The
output layer is zero-initialised too, so a fresh model outputs a constant log-score. For the absorbing
graph the output is the SEDD "scale by sigma" parametrisation (docs/math.md section 4):

    l = raw - log esigm1(sigma_bar) - log N,   then l[x^i] := 0   (N real tokens).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ddm.errors import InvalidArgument
from ddm.graphs import Absorbing, log_expm1
from ddm.model.blocks import KVCache, block_mask, training_mask
from ddm.model.embeddings import NoiseEmbedding, Rotary, rotate_pairs
from ddm.model.pretrained import PretrainedMixin

__all__ = [
    "CPU_EXPLICIT_ATTENTION_MAX",
    "SIZES",
    "DiTBlock",
    "ModelConfig",
    "ScoreModel",
    "attention",
    "cpu_has_native_bf16",
    "is_absorbing",
    "run_block",
]

# Named sizes. `tiny` trains in minutes on a laptop CPU; `small` and `medium` are SEDD's sizes.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden": 192, "heads": 4, "blocks": 3, "cond_dim": 64},
    "small": {"hidden": 768, "heads": 12, "blocks": 12, "cond_dim": 128},
    "medium": {"hidden": 1024, "heads": 16, "blocks": 24, "cond_dim": 128},
}


@dataclass
class ModelConfig:
    """Architecture of a `ScoreModel`. Defaults are SEDD's `small` model."""

    hidden: int = 768  # width of the residual stream
    heads: int = 12  # attention heads; hidden / heads must be even (rotary pairs)
    blocks: int = 12  # transformer layers (DiTBlocks); the key is kept as checkpoints and SEDD spell it
    cond_dim: int = 128  # width of the noise conditioning vector
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * hidden
    dropout: float = 0.1  # dropout on the attention and MLP branches (SEDD: 0.1)
    seq_len: int = 1024  # the longest sequence the model accepts (rotary table length)
    time_conditioning: bool = True  # False: absorbing only, sigma is ignored (docs/math.md section 4)
    scale_by_sigma: bool = True  # absorbing "scale by sigma" output parametrisation
    subs: bool = False  # absorbing: MDLM's SUBS output, log p(x0 | x_t) over the N tokens (math.md 7)
    block_size: int = 0  # > 0: a block-diffusion model (BD3-LM, ddm.model.blocks); divides seq_len
    bf16: bool = True  # bf16 autocast on CUDA (on the CPU only with ScoreModel.cpu_bf16 and native bf16)
    # class labels: an embedding added to the adaLN conditioning (0: unconditional, no parameters)
    num_classes: int = 0  # > 0: label ids 0 .. num_classes - 1, and num_classes is the null (dropped) label
    label_names: list[str] | None = None  # the names of the label ids (from the data), or None

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> ModelConfig:
        """Config of a named size (`tiny`, `small`, `medium`) with fields overridden."""
        if size not in SIZES:
            raise InvalidArgument(f"model size must be one of {sorted(SIZES)}, got {size!r}")
        return cls(**{**SIZES[size], **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InvalidArgument(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the fields."""
        return asdict(self)

    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        for name in ("hidden", "heads", "blocks", "cond_dim", "mlp_ratio", "seq_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise InvalidArgument(f"model.{name} must be a positive integer, got {v!r}")
        if self.hidden % self.heads:
            raise InvalidArgument(
                f"model.hidden ({self.hidden}) must be divisible by model.heads ({self.heads})"
            )
        if (self.hidden // self.heads) % 2:
            raise InvalidArgument(
                f"model.hidden / model.heads must be even for rotary, got {self.hidden // self.heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidArgument(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        b = self.block_size
        if not isinstance(b, int) or isinstance(b, bool) or b < 0:
            raise InvalidArgument(f"model.block_size must be an integer >= 0, got {b!r}")
        if b and self.seq_len % b:
            raise InvalidArgument(f"model.block_size ({b}) must divide model.seq_len ({self.seq_len})")
        _validate_labels(self.num_classes, self.label_names)


def _validate_labels(num_classes: Any, names: Any) -> None:
    """`model.num_classes` an integer >= 0; `model.label_names` None or `num_classes` distinct strings."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise InvalidArgument(f"model.num_classes must be an integer >= 0, got {num_classes!r}")
    if names is None:
        return
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise InvalidArgument(f"model.label_names must be a list of strings, got {names!r}")
    if len(names) != num_classes or len(set(names)) != len(names):
        raise InvalidArgument(
            f"model.label_names must be num_classes={num_classes} distinct names, got {list(names)!r}"
        )


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX-BF16 tiles), as torch detects it.

    Only then is bf16 autocast on the CPU faster than float32 (1.8x for the demo model's forward on AMX);
    elsewhere bf16 is emulated and slower, so `ScoreModel.cpu_bf16` has no effect there.
    """
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None and fn():
            return True
    return False


def run_block(block: Any, grad_checkpointing: bool, *args: Any) -> Any:
    """`block(*args)`; with `grad_checkpointing` and gradients on, through `torch.utils.checkpoint`: the
    block's activations are not kept but recomputed in the backward pass (the same gradients, the RNG of
    its dropout replayed; less memory, one more forward of the block)."""
    if grad_checkpointing and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def bf16_autocast_on(device_type: str, bf16: bool, cpu_bf16: bool) -> bool:
    """Whether a forward on `device_type` runs under bf16 autocast: on CUDA when `bf16`, on the CPU when
    `bf16` and `cpu_bf16` and the CPU has native bf16 (`cpu_has_native_bf16`); float32 otherwise."""
    return bf16 and (device_type == "cuda" or (device_type == "cpu" and cpu_bf16 and cpu_has_native_bf16()))


def is_absorbing(graph: Any) -> bool:
    """True for an absorbing graph (it has a MASK state)."""
    return isinstance(graph, Absorbing)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift  # (B, L, hidden)


class DiTBlock(nn.Module):
    """One transformer layer: pre-norm, adaLN-Zero modulation and rotary self-attention (DiT's "block").

    `causal` (a class attribute) makes the attention causal: `ddm.model.autoregressive.CausalBlock` is
    this block with `causal = True`, so the score network and the AR baseline share one block.
    """

    causal = False

    def __init__(self, hidden: int, heads: int, cond_dim: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(hidden, bias=False)
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.attn_out = nn.Linear(hidden, hidden, bias=False)
        self.norm2 = nn.LayerNorm(hidden, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp_ratio * hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_ratio * hidden, hidden),
        )
        # adaLN-Zero: shift/scale/gate for both branches, zero at init so each layer starts as identity.
        self.modulation = nn.Linear(cond_dim, 6 * hidden)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """`h` `[B, L, hidden]`, `c` `[B, cond_dim]` (or `[1, cond_dim]`: one noise level for all) ->
        `[B, L, hidden]`."""
        return self.forward_kv(h, c, cos, sin)[0]

    def forward_kv(
        self,
        h: torch.Tensor,
        c: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block with an attention mask and cached keys / values (block diffusion, `ddm.model.blocks`).

        Pre-norm, modulate, attend, gate (Peebles & Xie 2023), with few passes over the activations: the
        norm's weight is folded into the modulation's scale (`LN(h) w (1 + s) + b` as one `addcmul` of the
        unweighted norm), the gates are `addcmul`s into the residual, and the rotary turn of the queries
        and keys is one complex multiplication (`rotate_pairs`).

        Args:
            h: `[B, L, hidden]`; `c`: `[B, cond_dim]` or `[1, cond_dim]`; `cos`, `sin`: the rotary tables
                of the L positions.
            mask: optional bool `[L, T + L]` (or `[L, L]` without `past`): True where query i may attend
                key j; None is full attention (causal for a `CausalBlock`).
            past: optional `(keys, values)`, each `[B, heads, T, head_dim]`, rotated at their own
                positions: the L queries attend to them before their own keys.

        Returns:
            `(h [B, L, hidden], keys, values)`: the keys and values of the L new positions only,
            `[B, heads, L, head_dim]`.
        """
        B, L, D = h.shape
        hd = D // self.heads
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None].chunk(
            6, dim=-1
        )  # (B, 1, D)
        p = self.dropout if self.training else 0.0

        a = _norm_modulate(self.norm1, h, shift1, scale1)  # (B, L, D)
        qkv = self.qkv(a).view(B, L, 3, self.heads, hd)  # (B, L, 3, H, hd)
        qk = rotate_pairs(qkv[:, :, :2].float(), cos[:, None, None], sin[:, None, None]).to(qkv.dtype)
        q, k = qk.permute(2, 0, 3, 1, 4)  # (B, H, L, hd) each
        v = qkv[:, :, 2].transpose(1, 2)  # (B, H, L, hd)
        k_all, v_all = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        o = attention(q, k_all, v_all, mask, p, causal=self.causal and mask is None)  # (B, H, L, hd)
        o = o.transpose(1, 2).reshape(B, L, D)  # (B, L, D)
        h = torch.addcmul(h, gate1, F.dropout(self.attn_out(o), p, self.training))

        m = self.mlp(_norm_modulate(self.norm2, h, shift2, scale2))  # (B, L, D)
        return torch.addcmul(h, gate2, F.dropout(m, p, self.training)), k, v


# The largest `Lq x Lk` at which `attention` on the CPU computes `softmax(q k^T / sqrt(hd)) v` itself, in
# float32, instead of calling SDPA's fused kernel, whose backward is slow on the CPU. For bf16 inputs on
# an AVX512-BF16 CPU the explicit form's forward + backward is 1.9x faster at 64 x 64, 1.25-1.5x at
# 128 x 128, and 0.63x at 256 x 256 (`benches/attention_cpu.py`; the demo's training step: 1.11x).
CPU_EXPLICIT_ATTENTION_MAX = 128 * 128


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    causal: bool = False,
) -> torch.Tensor:
    """Scaled dot-product attention `softmax(q k^T / sqrt(hd) + mask) v`, `[B, H, Lq, hd]` in q's dtype.

    `F.scaled_dot_product_attention`, except for bf16 inputs on the CPU with `Lq x Lk` at most
    `CPU_EXPLICIT_ATTENTION_MAX` and no dropout: there the same formula is computed explicitly in
    float32, which is faster at these lengths (the fused CPU kernel's backward is slow) and no less precise
    (the fused kernel accumulates in float32 too).

    Args:
        q: `[B, H, Lq, hd]`; k, v: `[B, H, Lk, hd]`.
        mask: optional bool `[Lq, Lk]`, True where query i may attend key j (every row needs one True).
        dropout_p: dropout on the attention weights (SDPA's).
        causal: query i attends to keys `j <= i` (with `mask` None and `Lq == Lk`).
    """
    Lq, Lk = q.shape[-2], k.shape[-2]
    explicit = (
        q.device.type == "cpu" and q.dtype == torch.bfloat16 and dropout_p == 0.0
        and Lq * Lk <= CPU_EXPLICIT_ATTENTION_MAX
    )  # fmt: skip
    if not explicit:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
    if causal:
        mask = torch.ones(Lq, Lk, dtype=torch.bool, device=q.device).tril()
    with torch.autocast("cpu", enabled=False):  # float32 products, not autocast's bf16 ones
        s = (q.float() * q.shape[-1] ** -0.5) @ k.float().transpose(-1, -2)  # (B, H, Lq, Lk)
        if mask is not None:
            s = s.masked_fill(~mask, -torch.inf)
        return (torch.softmax(s, dim=-1) @ v.float()).to(q.dtype)


def _norm_modulate(
    norm: nn.LayerNorm, h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """`_modulate(norm(h), shift, scale)` with the norm's weight folded into the scale: one pass fewer."""
    z = F.layer_norm(h, norm.normalized_shape, None, None, norm.eps)  # (B, L, D)
    return torch.addcmul(shift, z, norm.weight * (1 + scale))  # (B, L, D)


class _FinalLayer(nn.Module):
    def __init__(self, hidden: int, cond_dim: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, bias=False)
        self.modulation = nn.Linear(cond_dim, 2 * hidden)
        self.linear = nn.Linear(hidden, dim)
        for layer in (self.modulation, self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c)[:, None].chunk(2, dim=-1)  # (B, 1, hidden)
        return self.linear(_modulate(self.norm(h), shift, scale))  # (B, L, dim)


class ScoreModel(PretrainedMixin, nn.Module):
    """Score network `model(x, sigma) -> log-score`, carrying what a sampler needs.

    Attributes:
        config: the `ModelConfig`.
        graph: the forward graph (`ddm.graphs.Uniform` or `Absorbing`); `dim = graph.dim`.
        schedule: the noise schedule the model was trained with.
        seq_len: the longest accepted sequence.
        time_independent: True for an absorbing model without noise input: its output depends on sigma
            only through the closed-form scale, so a sampler may reuse the network output when no token
            changed.
        tokenizer: the tokenizer of the training corpus, or None.
        mask_id: the graph's MASK id (None without one).
        cpu_bf16: set True to run the forward under bf16 autocast on a CPU with native bf16
            (`cpu_has_native_bf16`) when `config.bf16`; False by default (float32: the same law as
            training on the CPU).
        grad_checkpointing: set True to recompute each block's activations in the backward pass
            (`run_block`; `TrainConfig.grad_checkpointing`).
    """

    def __init__(
        self, config: ModelConfig | dict | str, graph: Any, schedule: Any, tokenizer: Any = None
    ) -> None:
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
        self.config = config
        self.graph = graph
        self.schedule = schedule
        self.tokenizer = tokenizer
        self.dim = int(graph.dim)
        self.mask_id = graph.mask_id
        self.seq_len = config.seq_len
        self.absorbing = is_absorbing(graph)
        if config.subs and not self.absorbing:
            raise InvalidArgument("model.subs=True (the masked-diffusion output) needs an absorbing graph")
        if not config.time_conditioning and not (self.absorbing and (config.scale_by_sigma or config.subs)):
            raise InvalidArgument(
                "model.time_conditioning=False needs an absorbing graph and scale_by_sigma=True or subs=True "
                "(only the absorbing score factorises into a time-independent part and a closed-form scale)"
            )
        self.time_independent = not config.time_conditioning
        self.block_size = config.block_size
        if self.block_size and not (self.absorbing and self.time_independent):
            raise InvalidArgument(
                "model.block_size > 0 (block diffusion) needs an absorbing graph and time_conditioning=False "
                "(each block has its own noise level, which enters only through the closed-form scale)"
            )
        # bf16 autocast on the CPU too, where the CPU computes in bf16 natively (cpu_has_native_bf16): an
        # opt-in, since bf16 moves the log-scores (by ~1e-2 on the demo model) and with them the law
        self.cpu_bf16 = False
        self.grad_checkpointing = False  # recompute each block in the backward pass (run_block)

        self.embed = nn.Embedding(self.dim, config.hidden)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.noise_embed = NoiseEmbedding(config.cond_dim)
        self.rotary = Rotary(config.hidden // config.heads, config.seq_len)
        self.blocks = nn.ModuleList(
            DiTBlock(config.hidden, config.heads, config.cond_dim, config.mlp_ratio, config.dropout)
            for _ in range(config.blocks)
        )
        self.final = _FinalLayer(config.hidden, config.cond_dim, self.dim)
        if config.num_classes:  # one row per label and one for the null label (DiT's LabelEmbedder)
            self.label_embed = nn.Embedding(config.num_classes + 1, config.cond_dim)
            nn.init.normal_(self.label_embed.weight, std=0.02)

    @property
    def num_classes(self) -> int:
        """The number of class labels (0: an unconditional model); `null_label` is the dropped label."""
        return self.config.num_classes

    @property
    def null_label(self) -> int:
        """The id of the null label (`num_classes`): the unconditional model of classifier-free guidance."""
        if not self.num_classes:
            raise InvalidArgument("this model was trained without labels (model.num_classes = 0)")
        return self.num_classes

    @property
    def label_names(self) -> list[str] | None:
        """The names of the label ids, or None."""
        return self.config.label_names

    def _labels(self, x: torch.Tensor, label: Any) -> torch.Tensor | None:
        """The label ids `[B]` (None for an unconditional model); None on a labelled model is the null
        label. An int or a 0-d tensor is every row's label."""
        if label is None:
            return (
                None if not self.num_classes else torch.full((x.shape[0],), self.num_classes, device=x.device)
            )
        if not self.num_classes:
            raise InvalidArgument(
                "label given, but this model was trained without labels (model.num_classes = 0)"
            )
        lab = torch.as_tensor(label, device=x.device)
        if lab.is_floating_point() or lab.dtype == torch.bool:
            raise InvalidArgument(f"label must hold integer ids, got dtype {lab.dtype}")
        lab = lab.to(torch.int64).reshape(-1)
        if lab.numel() == 1:
            lab = lab.expand(x.shape[0])
        if lab.numel() != x.shape[0]:
            raise InvalidArgument(f"label must have B={x.shape[0]} entries (or one), got {lab.numel()}")
        if bool(((lab < 0) | (lab > self.num_classes)).any()):
            raise InvalidArgument(
                f"label ids must be in [0, {self.num_classes}] ({self.num_classes}: the null label), "
                f"got {lab.tolist()}"
            )
        return lab

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        log_probs: bool = False,
        x0: torch.Tensor | None = None,
        label: Any = None,
    ) -> torch.Tensor:
        """Log-score of the concrete score (docs/math.md section 1); `log_probs=True`: `log_probs(x, sigma)`.

        With `config.subs` (the masked-diffusion model, docs/math.md section 7) the score is the closed form
        `s_y = p(y | x_t) / expm1(sigma_bar)` at MASK positions, from `log_probs`; rows of unmasked
        positions are 0 (the absorbing reverse process never moves them).

        Args:
            x: tokens, int64 `[B, L]` with values in `[0, dim)` and `L <= seq_len`.
            sigma: total noise `sigma_bar`, `[B]`, `[B, 1]`, 0-d or a float; for a block model also
                `[B, L]`, one level per position (each block its own).
            x0: a block model (`config.block_size > 0`) only, and required there: the clean sequence
                `[B, L]`; block b of `x` is scored given the clean blocks before it (BD3-LM's vectorised
                input `[x, x0]`, `ddm.model.blocks`).
            label: a labelled model (`config.num_classes > 0`) only: the class id of each row, int64 `[B]`
                or one int; None is the null label (the unconditional model).

        Returns:
            float32 `[B, L, dim]` log-scores, exactly 0 at the current token.
        """
        if log_probs:
            return self.log_probs(x, sigma, x0=x0, label=label)
        sig = self._levels(x, sigma)  # (B, 1) or (B, L)
        if self.config.subs:
            logp = self.log_probs(x, sigma, x0=x0, label=label)  # (B, L, N)
            l = logp - log_expm1(sig)[..., None]
            l = torch.cat([l, torch.zeros_like(l[..., :1])], dim=-1)  # (B, L, dim): MASK entry 0 (current)
            return torch.where((x == self.mask_id)[..., None], l, torch.zeros_like(l))
        return self._head(self._raw(x, sigma, x0, label), x, sig)

    def log_probs(
        self, x: torch.Tensor, sigma: torch.Tensor | float, x0: torch.Tensor | None = None, label: Any = None
    ) -> torch.Tensor:
        """`log p(x0 | x_t)` of a SUBS model (`config.subs`), float32 `[B, L, N]` (docs/math.md section 7).

        The network's outputs over the N real tokens, log-softmax normalised (zero probability on MASK);
        at an unmasked position the token is carried over: `log p = 0` at it and `-inf` elsewhere. `x0`:
        as in `forward` (block models); `label`: as in `forward`.
        """
        if not self.config.subs:
            raise InvalidArgument("log_probs needs a masked-diffusion model (model.subs=True)")
        return self._subs(self._raw(x, sigma, x0, label), x)

    def _subs(self, raw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        n = self.graph.vocab_size  # the real tokens, ids 0 .. N - 1
        logp = torch.log_softmax(raw[..., :n], dim=-1)  # (B, L, N)
        unmasked = x != self.mask_id  # (B, L)
        carried = torch.full_like(logp, -torch.inf).scatter(-1, x.clamp(max=n - 1)[..., None], 0.0)
        return torch.where(unmasked[..., None], carried, logp)

    def _sigma(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        B = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(B)
        if sigma.numel() != B:
            raise InvalidArgument(f"sigma must have B={B} entries (or one), got shape {tuple(sigma.shape)}")
        return sigma

    def _levels(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The noise level per sequence `[B, 1]`, or per position `[B, L]` (block models)."""
        if self.block_size and torch.is_tensor(sigma) and sigma.dim() == 2 and sigma.shape[1] > 1:
            if tuple(sigma.shape) != tuple(x.shape):
                raise InvalidArgument(
                    f"sigma must be [B] or [B, L] = {tuple(x.shape)}, got {tuple(sigma.shape)}"
                )
            return sigma.to(device=x.device, dtype=torch.float32)
        return self._sigma(x, sigma)[:, None]

    def _head(self, raw: torch.Tensor, x: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
        """SEDD's log-score from the raw output (scaled for the absorbing graph), 0 at the current token."""
        if self.absorbing and self.config.scale_by_sigma:
            raw = raw - log_expm1(sig)[..., None] - math.log(self.graph.vocab_size)  # sig (B, 1) or (B, L)
        return raw.scatter(-1, x[..., None], 0.0)  # (B, L, dim), 0 at the current token

    def _check_x(self, x: torch.Tensor, name: str = "x") -> None:
        if x.dim() != 2:
            raise InvalidArgument(f"{name} must have shape [B, L], got {tuple(x.shape)}")

    def _trunk(
        self,
        tokens: torch.Tensor,
        c: torch.Tensor,
        start: int = 0,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        positions: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The layers on `tokens` `[B, T]` at positions `start ..` (or the rotary tables `positions`):
        `(raw output [B, T, dim] float32, keys, values)` with the new keys / values of every layer."""
        use_bf16 = bf16_autocast_on(tokens.device.type, self.config.bf16, self.cpu_bf16)
        keys, values = [], []
        with torch.autocast(device_type=tokens.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            h = self.embed(tokens)  # (B, T, hidden)
            cos, sin = self.rotary(tokens.shape[1], start) if positions is None else positions
            for i, layer in enumerate(self.blocks):
                past = cache.past(i) if cache is not None else None
                h, k, v = run_block(layer.forward_kv, self.grad_checkpointing, h, c, cos, sin, mask, past)
                keys.append(k)
                values.append(v)
            raw = self.final(h, c)  # (B, T, dim)
        return raw.float(), keys, values

    def _cond(self, sigma: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The conditioning `[B, cond_dim]`, or `[1, cond_dim]` in CPU inference when the whole batch
        shares one noise level (every sampling step): embedded once, the modulations broadcast. `labels`
        (`[B]`, a labelled model's ids from `_labels`) add their embedding before the SiLU (DiT)."""
        cond = sigma if self.config.time_conditioning else torch.zeros_like(sigma)
        if cond.shape[0] > 1 and cond.device.type == "cpu" and not torch.is_grad_enabled():
            if bool((cond == cond[0]).all()):  # no device sync: CPU only
                cond = cond[:1]
        e = self.noise_embed(cond)  # (B or 1, cond_dim)
        if labels is not None:
            e = e + self.label_embed(labels)  # (B, cond_dim)
        return F.silu(e)

    def _raw(
        self, x: torch.Tensor, sigma: torch.Tensor | float, x0: torch.Tensor | None, label: Any = None
    ) -> torch.Tensor:
        """The network's output `[B, L, dim]` before the parametrisation (`_head` or `_subs`)."""
        self._check_x(x)
        B, L = x.shape
        labels = self._labels(x, label)
        if L > self.seq_len:
            raise InvalidArgument(f"sequence length {L} is larger than the model's seq_len {self.seq_len}")
        if not self.block_size:
            if x0 is not None:
                raise InvalidArgument("x0 is an input of block models only (model.block_size > 0)")
            return self._trunk(x, self._cond(self._sigma(x, sigma), labels))[0]
        if x0 is None:
            raise InvalidArgument(
                f"a block model (block_size={self.block_size}) scores x given the clean sequence: pass x0 "
                "(forward(x_t, sigma, x0=x0)); ddm.sample and ddm.eval.likelihood_bound know its blocks"
            )
        self._check_x(x0, "x0")
        if x0.shape != x.shape:
            raise InvalidArgument(f"x0 must have the shape of x {tuple(x.shape)}, got {tuple(x0.shape)}")
        c = self._cond(torch.zeros(B, device=x.device), labels)  # time-independent (checked in __init__)
        if L <= self.block_size:  # one block: no clean past, the ordinary network (and half the work)
            return self._trunk(x, c)[0]
        return self._vectorised(x, x0, c)

    def _vectorised(self, x: torch.Tensor, x0: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """BD3-LM's vectorised input `[x_t, x_0]`, both at positions 0 .. L-1, with the block mask:
        the raw output at the noisy copy, `[B, L, dim]`."""
        L = x.shape[1]
        cos, sin = self.rotary(L)
        mask = training_mask(L, self.block_size, device=x.device)  # (2L, 2L)
        inp = torch.cat([x, x0], dim=1)  # (B, 2L)
        raw, _, _ = self._trunk(inp, c, mask=mask, positions=(cos.repeat(2, 1), sin.repeat(2, 1)))
        return raw[:, :L]  # the noisy copy

    # ---- block diffusion: sampling with a key / value cache (ddm.model.blocks) ---------------------------
    @property
    def window_blocks(self) -> int:
        """Blocks a block model's attention spans, its own included: `seq_len / block_size`."""
        if not self.block_size:
            raise InvalidArgument("window_blocks is defined for block models only (model.block_size > 0)")
        return self.seq_len // self.block_size

    def empty_cache(self, batch_size: int, device: torch.device | str | None = None) -> KVCache:
        """A `KVCache` with nothing committed, for `batch_size` sequences."""
        d = self.config.hidden // self.config.heads
        dev = self.device if device is None else torch.device(device)
        empty = [torch.zeros(batch_size, self.config.heads, 0, d, device=dev) for _ in self.blocks]
        return KVCache(empty, [e.clone() for e in empty], 0)

    def _block_c(self, x: torch.Tensor, label: Any = None) -> torch.Tensor:
        return self._cond(torch.zeros(x.shape[0], device=x.device), self._labels(x, label))

    def block_scores(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        cache: KVCache,
        log_probs: bool = False,
        label: Any = None,
    ) -> torch.Tensor:
        """Log-scores (or, `log_probs=True`, SUBS log-probabilities) of the noisy block `x` `[B, n]` at the
        positions `cache.end ..`, given the cached clean blocks: `[B, n, dim]` (`[B, n, N]`). `label`: as
        in `forward` (the cache must have been committed with the same labels)."""
        if not self.block_size:
            raise InvalidArgument("block_scores needs a block model (model.block_size > 0)")
        self._check_x(x)
        if x.shape[0] != cache.batch_size:
            raise InvalidArgument(f"x has {x.shape[0]} rows, the cache {cache.batch_size}")
        raw, _, _ = self._trunk(x, self._block_c(x, label), start=cache.end, cache=cache)
        return self._parametrise(raw, x, sigma, log_probs)

    def _parametrise(
        self, raw: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor | float, log_probs: bool
    ) -> torch.Tensor:
        if self.config.subs:
            logp = self._subs(raw, x)
            if log_probs:
                return logp
            l = logp - log_expm1(self._sigma(x, sigma))[:, None, None]
            l = torch.cat([l, torch.zeros_like(l[..., :1])], dim=-1)
            return torch.where((x == self.mask_id)[..., None], l, torch.zeros_like(l))
        if log_probs:
            raise InvalidArgument("log_probs needs a masked-diffusion model (model.subs=True)")
        return self._head(raw, x, self._sigma(x, sigma)[:, None])

    def commit_block(self, cache: KVCache, x: torch.Tensor, label: Any = None) -> KVCache:
        """The cache with the clean block `x` `[B, n]` appended at `cache.end`; it keeps the last
        `window_blocks - 1` blocks (the sliding context)."""
        if not self.block_size:
            raise InvalidArgument("commit_block needs a block model (model.block_size > 0)")
        self._check_x(x)
        _, keys, values = self._trunk(x, self._block_c(x, label), start=cache.end, cache=cache)
        keep = (self.window_blocks - 1) * self.block_size
        if cache.length:
            keys = [torch.cat([old, new], 2) for old, new in zip(cache.keys, keys, strict=True)]
            values = [torch.cat([old, new], 2) for old, new in zip(cache.values, values, strict=True)]
        keys = [k[:, :, max(0, k.shape[2] - keep) :] for k in keys]
        values = [v[:, :, max(0, v.shape[2] - keep) :] for v in values]
        return KVCache(keys, values, cache.end + x.shape[1])

    def block_scores_recompute(
        self,
        context: torch.Tensor,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        log_probs: bool = False,
        label: Any = None,
    ) -> torch.Tensor:
        """`block_scores` without a cache: one pass over the clean `context` `[B, T]` (whole blocks from
        position 0) and the noisy block `x` `[B, n]`, with the block mask of `ddm.model.blocks` (banded
        to the window past `seq_len`). The oracle of the cache, and the uncached sampler."""
        if not self.block_size:
            raise InvalidArgument("block_scores_recompute needs a block model (model.block_size > 0)")
        self._check_x(context, "context")
        self._check_x(x)
        T, n = context.shape[1], x.shape[1]
        if T % self.block_size:
            raise InvalidArgument(f"context must hold whole blocks of {self.block_size}, got {T} tokens")
        pos = torch.arange(T + n, device=x.device)
        noisy = pos >= T
        mask = block_mask(pos, noisy, pos, noisy, self.block_size, self.window_blocks)
        raw, _, _ = self._trunk(torch.cat([context, x], 1), self._block_c(x, label), mask=mask)
        return self._parametrise(raw[:, T:], x, sigma, log_probs)
