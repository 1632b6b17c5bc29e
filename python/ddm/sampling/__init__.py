"""Sampling: the SEDD reverse process (docs/math.md section 5).

- `sample(model, steps, ...)`: generate sequences, with conditioning (prefix, suffix, infill), caching for
  time-independent absorbing models, and the step in Rust (CPU) or torch (any device).
- `Sampler`: the same steps as a diffusers-style scheduler (`set_timesteps`, `step`, `add_noise`) for
  users who write their own loop.
"""

from __future__ import annotations

from ddm.sampling.sample import SampleStats, sample
from ddm.sampling.sampler import Sampler, SamplerOutput

__all__ = ["sample", "SampleStats", "Sampler", "SamplerOutput"]
