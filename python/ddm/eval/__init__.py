"""Evaluation: the likelihood bound on held-out blocks (`ddm.eval.bound`), the exact NLL of the
autoregressive baseline, generative perplexity and unigram entropy (`ddm.eval.metrics`), and the
`ddm report` tables and plots (`ddm.eval.report`).
"""

from __future__ import annotations

from ddm.eval.bound import Bound, heldout_blocks, likelihood_bound, reconstruction_nll, text_blocks
from ddm.eval.metrics import NLL, exact_nll, gen_perplexity, unigram_entropy

__all__ = [
    "NLL",
    "Bound",
    "exact_nll",
    "gen_perplexity",
    "heldout_blocks",
    "likelihood_bound",
    "reconstruction_nll",
    "text_blocks",
    "unigram_entropy",
]
