"""`compile = true`: the training step through torch.compile is the eager run to float32 round-off.

The test compiles with the `aot_eager` backend (TorchDynamo's graph capture and AOTAutograd's joint
forward/backward graph, run with eager kernels): it checks that the traced step is the same computation
in seconds, where Inductor's C++ code generation takes minutes on a CPU. Inductor itself reorders float32
sums (fused kernels), so its agreement is to round-off, measured by benches/compile_step.py.
"""

from __future__ import annotations

import functools

import pytest
import torch
from ddm.training import train
from test_distributed import _config_file, _log, _weights


def test_a_compiled_run_is_the_eager_run(tmp_path, monkeypatch):
    kw = dict(blocks=1, steps=3, save_every=3)
    a = train(_config_file(tmp_path, "eager", **kw))
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    b = train(_config_file(tmp_path, "compiled", **kw, compile=True))
    wa, wb = _weights(a), _weights(b)
    for kind in wa:
        for k in wa[kind]:
            torch.testing.assert_close(wb[kind][k], wa[kind][k], rtol=1e-5, atol=1e-6, msg=f"{kind} {k}")
    la, lb = _log(tmp_path / "eager"), _log(tmp_path / "compiled")
    for s in la:
        assert lb[s]["loss"] == pytest.approx(la[s]["loss"], rel=1e-6)
