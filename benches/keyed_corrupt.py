"""The keyed forward corruption (training loss, `Sampler.add_noise`): Rust against its torch twin, one run.

Both draw the same bits (`tests/test_parity.py`); this prints their times side by side, one thread, and the
load average. Usage: `python benches/keyed_corrupt.py`.
"""

from __future__ import annotations

import os

os.environ.setdefault("DDM_NUM_THREADS", "1")

import torch  # noqa: E402
from ddm import _rng  # noqa: E402
from ddm.graphs import Absorbing, Uniform  # noqa: E402
from ddm.sampling import _native  # noqa: E402
from uniform_precision import median  # noqa: E402 (benches/ is on the path of a script run from it)


def main() -> None:
    torch.set_num_threads(1)
    print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for graph in (Absorbing(50257), Uniform(50257)):
        for b, length in ((32, 128), (64, 1024)):
            x0 = torch.randint(0, 50257, (b, length))
            sigma = torch.full((b,), 1.3, dtype=torch.float64)
            rows = torch.arange(b)

            def in_torch(x0=x0, sigma=sigma, rows=rows, length=length, graph=graph):
                u = _rng.uniforms(3, 0x5EED0103, 9, rows, length)  # (B, L)
                return graph.corrupt(x0, sigma[:, None], u)

            def in_rust(x0=x0, sigma=sigma, graph=graph):
                return _native.corrupt(graph, x0, sigma, 3, 9, 0, stream=0x5EED0103)

            assert torch.equal(in_torch(), in_rust())
            a, r = median(in_torch, 7), median(in_rust, 7)
            name = type(graph).__name__
            print(
                f"{name} [{b}, {length}]: torch {a * 1e3:.2f} ms, rust {r * 1e3:.3f} ms, ratio {a / r:.0f}x"
            )


if __name__ == "__main__":
    main()
