"""Evaluation: the likelihood bound on held-out chunks and the bound on a continuation given its context
(`ddm.eval.bound`), the exact NLL of the autoregressive baseline, generative perplexity, unigram entropy
and the real-word fraction (`ddm.eval.metrics`), and the `ddm report` tables and plots
(`ddm.eval.report`). `ddm.eval.harness`, the lm-evaluation-harness model, needs lm_eval and is not
imported here.
"""

from __future__ import annotations

from ddm.eval.bound import (
    Bound,
    SequenceBounds,
    conditional_bound,
    heldout_blocks,
    heldout_chunks,
    likelihood_bound,
    reconstruction_nll,
    text_blocks,
    text_chunks,
)
from ddm.eval.metrics import NLL, exact_nll, gen_perplexity, real_word_fraction, unigram_entropy

__all__ = [
    "NLL",
    "Bound",
    "SequenceBounds",
    "conditional_bound",
    "exact_nll",
    "gen_perplexity",
    "heldout_blocks",
    "heldout_chunks",
    "likelihood_bound",
    "real_word_fraction",
    "reconstruction_nll",
    "text_blocks",
    "text_chunks",
    "unigram_entropy",
]
