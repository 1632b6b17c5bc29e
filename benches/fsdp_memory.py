"""Peak resident memory per rank, FSDP against DDP, for the `small` model (SEDD-small's shape) with AdamW.

    PYTHONPATH=python python -m torch.distributed.run --nproc_per_node 2 benches/fsdp_memory.py ddp
    PYTHONPATH=python python -m torch.distributed.run --nproc_per_node 2 benches/fsdp_memory.py fsdp

Each rank trains 2 steps (AdamW state exists after the first) at seq_len 32, batch 2, on the character
corpus, then prints its peak RSS (`ru_maxrss`) as one JSON line. FSDP saves a sharded checkpoint (nothing
gathered); DDP a plain one (rank 0 writes). Expected per rank, float32, P parameters: DDP ~ 20 P bytes
(weights, gradients, two Adam moments, EMA) + the evaluation copy (4 P) + torch itself; FSDP ~ 20 P / W
+ one unsharded block in flight + the evaluation copy (4 P, rank 0)
+ torch itself.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
from pathlib import Path

import torch
from ddm.training import train
from ddm.training.config import TrainConfig


def main() -> None:
    parallel = sys.argv[1]
    torch.set_num_threads(1)
    base = Path(os.environ.get("BENCH_DIR", tempfile.gettempdir())) / f"fsdp_memory_{parallel}"
    cfg = TrainConfig(
        run_dir=str(base),
        model="small",
        seq_len=32,
        batch_size=2,
        steps=2,
        warmup_steps=1,
        eval_every=0,
        eval_sequences=1,
        eval_num_t=1,
        save_every=2,
        plot=False,
        progress=False,
        dropout=0.0,
        parallel=parallel,
        checkpoint_format="sharded" if parallel == "fsdp" else "plain",
        dist_timeout=1200.0,
    )
    train(cfg)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"parallel": parallel, "rank": int(os.environ.get("RANK", 0)), "peak_rss_mb": round(rss_mb)}
        )
    )


if __name__ == "__main__":
    main()
