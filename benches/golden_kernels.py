"""Bit-identity hashes of every Rust kernel behind `ddm.sampling._native`, on fixed inputs.

Each kernel (`reverse_step` of every kind, `proposal_step` with several transforms, `propose`, `corrupt`)
runs on both graphs, for vocabulary sizes that are and are not a multiple of the SIMD width, with noise
levels from 0 (stay) to 12 (the uniform step's exact f64 path) and rows that hold -inf entries, very large
log-scores or a maximum far beyond the first block. The sha256 of each output's bytes is recorded, so a
refactor of the kernels can be checked to change no output bit.

Usage (from the repository root, with the extension built):
    PYTHONPATH=python python benches/golden_kernels.py            # write benches/results/golden_kernels.json
    PYTHONPATH=python python benches/golden_kernels.py --check    # compare against it, exit 1 on a change
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from ddm.graphs import Absorbing, Uniform
from ddm.sampling import _native

RESULT = Path(__file__).parent / "results" / "golden_kernels.json"
VOCABS = (7, 61, 200, 1003)  # 7 and 61 and 1003 are not multiples of 8 or 16; 1003 spans 16 blocks
LEVELS = (0.0, 1e-3, 0.05, 0.3, 1.5, 12.0)  # one per sequence: B = 6
LEN = 40
SEED, STEP, STREAM = 11, 5, 0x5EED0003
PROPOSALS = {
    "t1": (1.0, None, None),
    "t0.7": (0.7, None, None),
    "t1.6": (1.6, None, None),
    "k5": (1.0, 5, None),
    "p0.9": (1.0, None, 0.9),
    "t0.8k10p0.8": (0.8, 10, 0.8),
}


def digest(*arrays: torch.Tensor) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(a.contiguous().numpy().tobytes())
    return h.hexdigest()


def inputs(graph, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens `[B, L]`, log-scores `[B, L, dim]` and levels `[B]`, fixed by the graph and `n`."""
    rng = np.random.default_rng(1000 * n + graph.absorbing)
    dim, batch = graph.dim, len(LEVELS)
    x = rng.integers(0, n, (batch, LEN), dtype=np.int64)
    if graph.absorbing:
        x[rng.random((batch, LEN)) < 0.6] = n  # MASK
    ls = (rng.normal(size=(batch, LEN, dim)) * 2.0 - 3.0).astype(np.float32)  # (B, L, dim)
    ls[:, 1, : max(1, dim // 3)] = -np.inf  # -inf entries (probability 0)
    ls[:, 2, 1::2] = -np.inf
    ls[:, 3, :] += 650.0  # beyond the f64 shift threshold of the uniform step
    ls[:, 4, :] -= 300.0
    ls[:, 4, dim - 2] = 10.0  # a maximum far beyond the first block
    ls[:, 5, :] = -1.0  # flat: ties in top-k / top-p
    ls[:, 6, :] *= 0.01  # scores near 1: the high-noise Tweedie regime
    return torch.from_numpy(x), torch.from_numpy(ls), torch.tensor(LEVELS, dtype=torch.float64)


def hashes() -> dict[str, str]:
    out: dict[str, str] = {}
    for n in VOCABS:
        for graph in (Absorbing(n), Uniform(n)):
            x, ls, lv = inputs(graph, n)
            g = f"{type(graph).__name__.lower()}{n}"
            for kind in _native.KINDS:
                out[f"reverse_step/{kind}/{g}"] = digest(
                    _native.reverse_step(kind, graph, x, ls, lv, SEED, STEP)
                )
                for name, (t, k, p) in PROPOSALS.items():
                    prop = SimpleNamespace(temperature=t, top_k=k, top_p=p)
                    r = _native.proposal_step(kind, graph, x, ls, lv, SEED, STEP, prop, seq_offset=3)
                    out[f"proposal_step/{kind}/{name}/{g}"] = digest(r)
            if graph.absorbing:
                for name, (t, k, p) in PROPOSALS.items():
                    prop = SimpleNamespace(temperature=t, top_k=k, top_p=p)
                    out[f"propose/{name}/{g}"] = digest(*_native.propose(graph, x, ls, SEED, STEP, prop, 2))
            xc = x.clamp(max=n - 1)  # clean data
            out[f"corrupt/{g}"] = digest(_native.corrupt(graph, xc, lv, SEED, STEP, 1, stream=STREAM))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare against the stored hashes")
    args = ap.parse_args()
    got = hashes()
    if not args.check:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(got)} hashes to {RESULT}")
        return 0
    want = json.loads(RESULT.read_text())
    bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    for k in bad:
        print(f"MISMATCH {k}: stored {want.get(k)}, now {got.get(k)}")
    print(f"{len(want) - len(bad)}/{len(want)} hashes match")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
