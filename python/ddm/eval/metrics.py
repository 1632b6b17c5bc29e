"""Model quality: the exact NLL of the autoregressive baseline, generative perplexity, unigram entropy, and
the fraction of real words in text samples.

Three numbers put a diffusion model in context (SEDD, Lou, Meng, Ermon 2024, sections 5.1-5.2):

- The held-out **likelihood bound** of the diffusion model (`ddm.eval.bound.likelihood_bound`), an upper
  bound on its NLL, next to the **exact NLL** of an autoregressive model (`ddm.model.autoregressive`)
  of the same size, trained on the same data for the same budget, on the same held-out blocks.
- **Generative perplexity**: samples scored by an autoregressive judge trained on the same corpus
  (`gen_perplexity`). Low is not always good: a sampler that collapses onto frequent tokens gets a low
  perplexity, so it is reported with the **unigram entropy** of the samples (`unigram_entropy`) and with
  both numbers for held-out data of the same length, the reference a sampler should approach.
- For text, the **real-word fraction** (`real_word_fraction`): how many of the words of the samples are
  words of the training text. It is what a reader sees first ("letter soup" or words), and like the
  perplexity it has a reference: the same number for held-out windows of the same length.
- Both at several numbers of sampling steps, for both predictors (`ddm.eval.report`, `ddm report`).

Categoricals in ddm's samplers are drawn exactly in float64; the reference code's float32 Gumbel-max
draws truncate the tails and lower both numbers (Zheng et al. 2024, arXiv 2409.02908; docs/math.md section 5).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ddm._stats import plugin_entropy
from ddm.data import blocks
from ddm.eval.bound import text_blocks
from ddm.model.autoregressive import ARModel, _check_tokens, sequence_nll

__all__ = ["NLL", "exact_nll", "gen_perplexity", "real_word_fraction", "unigram_entropy", "words"]

# a word: letters, with inner apostrophes ("o'er", "'tis" is "tis"); case-folded by `words`
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


@dataclass
class NLL:
    """The exact negative log-likelihood of an autoregressive model on held-out blocks.

    The keys match `ddm.eval.bound.Bound` where they mean the same thing, so `ddm eval --json` prints the
    same fields for both kinds of checkpoint.

    Attributes:
        nats_per_token: `-log p(x) / L`, averaged over blocks (exact: no bound, no Monte Carlo).
        bits_per_token: the same in bits.
        perplexity: `exp(nats_per_token)`.
        stderr: standard error of `nats_per_token` over blocks (NaN for one block).
        stderr_bits: the same in bits.
        tokens: tokens scored (`sequences * seq_len`).
        sequences: number of blocks.
        seq_len: tokens per block.
        unit: what a token is (`"char"`, `"byte"`, `"token"`, ...).
        exact: always True (a `Bound` is an upper bound).
    """

    nats_per_token: float
    bits_per_token: float
    perplexity: float
    stderr: float
    stderr_bits: float
    tokens: int
    sequences: int
    seq_len: int
    unit: str
    exact: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; adds `bits_per_<unit>` when the unit is not "token" (as `Bound.to_dict`)."""
        d = asdict(self)
        if self.unit != "token":
            d[f"bits_per_{self.unit}"] = self.bits_per_token
        return d

    def __str__(self) -> str:
        return (
            f"{self.bits_per_token:.4f} +- {self.stderr_bits:.4f} bits/{self.unit} exact NLL "
            f"({self.nats_per_token:.4f} nats/{self.unit}, perplexity {self.perplexity:.3f}; "
            f"{self.sequences} blocks of {self.seq_len})"
        )


def _as_blocks(model: ARModel, data: Any, seq_len: int | None) -> torch.Tensor:
    if isinstance(data, str):
        return text_blocks(model, data, seq_len)
    x = torch.as_tensor(np.asarray(data) if not torch.is_tensor(data) else data)
    if x.dtype.is_floating_point or x.dtype == torch.bool:
        raise TypeError(f"data must hold integer token ids, got dtype {x.dtype}")
    if x.dim() == 1:
        return blocks(x.long(), seq_len if seq_len is not None else model.seq_len)
    if x.dim() != 2:
        raise ValueError(f"data must be [M, L] blocks or a 1-D stream, got shape {tuple(x.shape)}")
    return x.long()


def _per_sequence_nll(judge: ARModel, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`[M]` float64 NLL of each block in nats (eval mode, no gradients)."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = _check_tokens(x, judge.vocab_size, "samples")
    if x.shape[1] > judge.seq_len:
        raise ValueError(f"blocks of {x.shape[1]} tokens are longer than the judge's seq_len {judge.seq_len}")
    was_training = judge.training
    judge.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size].to(judge.device)  # (b, L)
                out.append(sequence_nll(judge, xb).double().cpu())  # (b,)
    finally:
        if was_training:
            judge.train()
    return torch.cat(out)  # (M,)


def exact_nll(
    model: ARModel,
    data: torch.Tensor | np.ndarray | str,
    *,
    batch_size: int = 64,
    seq_len: int | None = None,
    max_sequences: int | None = None,
) -> NLL:
    """The exact NLL per token of an autoregressive model on blocks (the AR twin of `likelihood_bound`).

    Every token of a block is scored, the first one by the model's learned distribution after BOS (see
    `ddm.model.autoregressive`), so the number is directly comparable with the diffusion bound on the same
    blocks.

    Args:
        model: an `ARModel`.
        data: `[M, L]` token blocks, a 1-D token stream (cut into blocks of `seq_len`), or text (encoded
            with `model.tokenizer`).
        batch_size: blocks per network call.
        seq_len: block length for a stream or text (default: the model's).
        max_sequences: use at most this many blocks (the first ones).

    Returns:
        An `NLL`.
    """
    if getattr(model, "objective", None) != "autoregressive":
        raise TypeError(f"model must be an autoregressive ARModel, got {type(model).__name__}")
    x = _as_blocks(model, data, seq_len)
    if max_sequences is not None:
        x = x[:max_sequences]
    if x.numel() == 0:
        raise ValueError("no data to evaluate")
    M, L = x.shape
    per_seq = _per_sequence_nll(model, x, batch_size) / L  # (M,) nats per token
    nats = float(per_seq.mean())
    stderr = float(per_seq.std(unbiased=True) / math.sqrt(M)) if M > 1 else math.nan
    tokenizer = getattr(model, "tokenizer", None)
    ln2 = math.log(2)
    return NLL(
        nats_per_token=nats,
        bits_per_token=nats / ln2,
        perplexity=math.exp(nats),
        stderr=stderr,
        stderr_bits=stderr / ln2,
        tokens=M * L,
        sequences=M,
        seq_len=L,
        unit=getattr(tokenizer, "unit", "token") if tokenizer is not None else "token",
    )


def gen_perplexity(samples: torch.Tensor, judge: ARModel, *, batch_size: int = 64) -> float:
    """Generative perplexity: the judge's perplexity of the samples, `exp(mean NLL per token)`.

    The mean is over all tokens of all samples (every sample has the same length, so this is also the
    exponential of the mean per-sample NLL per token). SEDD's evaluation averages the per-sample
    perplexities instead, which is larger by Jensen's inequality; the token-level mean is the standard
    definition of perplexity and does not let a few bad samples dominate. Every token counts, the first
    one scored by the judge's unconditional distribution after BOS.

    Args:
        samples: int64 `[B, L]` token ids in the judge's vocabulary (absorbing samples must be fully
            denoised: a MASK id is out of range), `L <= judge.seq_len`.
        judge: an `ARModel` trained on the corpus the samples should imitate.
        batch_size: samples per network call.

    Returns:
        The perplexity, a float >= 1.
    """
    if getattr(judge, "objective", None) != "autoregressive":
        raise TypeError(f"judge must be an autoregressive ARModel, got {type(judge).__name__}")
    nll = _per_sequence_nll(judge, samples, batch_size)  # (B,) nats
    return math.exp(float(nll.sum()) / samples.numel())


def unigram_entropy(samples: torch.Tensor, *, pooled: bool = False) -> float:
    """Unigram entropy of samples, in nats.

    With `pooled=False` (default, as in the literature, e.g. Zheng et al. 2024): for each sample b the
    entropy of its empirical token frequencies, `H_b = -sum_v (n_bv / L) ln(n_bv / L)` with `n_bv` the
    count of token v in sample b, averaged over samples. It lies in `[0, ln min(L, V)]` and depends on L,
    so compare it only with samples (or data blocks) of the same length. With `pooled=True`: the entropy
    of the token frequencies over all `B * L` tokens together.

    Args:
        samples: int64 `[B, L]` non-negative token ids.
        pooled: pool all tokens instead of averaging per-sample entropies.

    Returns:
        The entropy in nats.
    """
    if not torch.is_tensor(samples):
        raise TypeError(f"samples must be a LongTensor [B, L], got {type(samples).__name__}")
    if samples.dtype.is_floating_point or samples.dtype == torch.bool:
        raise TypeError(f"samples must hold integer token ids, got dtype {samples.dtype}")
    if samples.dim() != 2 or samples.numel() == 0:
        raise ValueError(f"samples must have shape [B, L] with B, L >= 1, got {tuple(samples.shape)}")
    x = samples.long().cpu()
    if int(x.min()) < 0:
        raise ValueError(f"samples hold a negative token id ({int(x.min())})")
    rows = x.reshape(1, -1) if pooled else x  # (R, n)
    V = int(x.max()) + 1
    counts = torch.zeros(rows.shape[0], V, dtype=torch.float64)  # (R, V)
    counts.scatter_add_(1, rows, torch.ones_like(rows, dtype=torch.float64))
    return float(plugin_entropy(counts).mean())  # mean over rows of (R,)


def _word_spans(text: str) -> list[tuple[int, int, str]]:
    """`(start, end, case-folded word)` of each word of `text` (see `words`)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return [(m.start(), m.end(), m.group().casefold()) for m in _WORD.finditer(text)]


def words(text: str) -> list[str]:
    """The words of `text`, case-folded, in order: maximal runs of letters with inner apostrophes
    (`"O'er the hill, 'tis"` gives `["o'er", "the", "hill", "tis"]`). Digits, underscores and all other
    characters separate words."""
    return [w for _, _, w in _word_spans(text)]


def real_word_fraction(
    samples: Sequence[str], vocabulary: str | Iterable[str], *, drop_edges: bool = True
) -> float:
    """The fraction of the words of text samples that are words of `vocabulary`, pooled over all samples.

    A sample is a window of a longer text (a model trained on random crops starts and ends its samples
    mid-word), so with `drop_edges=True` the first and the last word of each sample are not counted when
    they touch its ends. Score held-out windows of the same length the same way for the reference: a
    sample of real text scores about that, letter soup near 0.

    Args:
        samples: decoded sample texts.
        vocabulary: a text (its `words` are the vocabulary) or an iterable of words (case-folded here).
        drop_edges: skip a word that touches the start or the end of its sample.

    Returns:
        The fraction in `[0, 1]`.

    Raises:
        ValueError: no sample, or no word to count in any of them, or an empty vocabulary.
    """
    if isinstance(samples, str):
        raise TypeError("samples must be a sequence of str (one per sample), got a single str")
    known = set(words(vocabulary)) if isinstance(vocabulary, str) else {str(w).casefold() for w in vocabulary}
    if not known:
        raise ValueError("the vocabulary holds no word")
    samples = list(samples)
    if not samples:
        raise ValueError("no samples")
    hits = total = 0
    for text in samples:
        if not isinstance(text, str):
            raise TypeError(f"samples must hold str, got {type(text).__name__}")
        found = _word_spans(text)
        if drop_edges:
            found = [f for f in found if f[0] > 0 and f[1] < len(text)]
        hits += sum(w in known for _, _, w in found)
        total += len(found)
    if total == 0:
        raise ValueError("the samples hold no word to count")
    return hits / total
