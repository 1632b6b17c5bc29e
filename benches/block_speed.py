"""Block sampling tokens/s with and without the key/value cache, one torch thread (issue 15).

Reads the block models `benches/block_compare.py` trained (`--run-dir`, default /tmp/blockcmp), warms up,
then samples 8 rows of `max_len = 4 x block` and 256 tokens (8 steps per block) with `kv_cache=True`
and `False`, and prints tokens/s, the speed-up, whether the samples are identical and the load average.

Usage: `python benches/block_speed.py [--run-dir /tmp/blockcmp]`
"""

from __future__ import annotations

import argparse
import json
import time

import ddm
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", default="/tmp/blockcmp")
    args = ap.parse_args()
    torch.set_num_threads(1)  # small calls: threads only add contention on a shared machine
    for name in ("block4", "block16"):
        model = ddm.load(f"{args.run_dir}/{name}")
        bs = model.block_size
        for kv in (True, False):  # warm-up
            ddm.sample(model, 2, batch_size=1, max_len=2 * bs, seed=0, kv_cache=kv)
        for max_len in sorted({4 * bs, 256}):
            wall, out = {}, {}
            for kv in (True, False):
                t0 = time.perf_counter()
                out[kv] = ddm.sample(model, 8, batch_size=8, max_len=max_len, seed=1, kv_cache=kv)
                wall[kv] = time.perf_counter() - t0
            rec = {"run": name, "max_len": max_len, "tok_s_cache": 8 * max_len / wall[True],
                   "tok_s_no_cache": 8 * max_len / wall[False], "speedup": wall[False] / wall[True],
                   "identical": bool(torch.equal(out[True], out[False])),
                   "load": open("/proc/loadavg").read().split()[0]}  # fmt: skip
            print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
