"""Throughput of `ddm serve`: 1 client at a time vs C concurrent clients, on localhost, side by side.

    PYTHONPATH=python python benches/serve_throughput.py [--checkpoint PATH] [--requests 16] [--clients 8]

Without `--checkpoint`, an untrained model of the demo's shape (`ddm.demo.DEMO_CONFIG`: tiny, 128 wide,
128 tokens, time-independent masked objective, a character vocabulary): the cost of a forward does not
depend on the weights. Each request asks for `--max-tokens` tokens in `--steps` analytic steps with its own
seed. Prints total tokens/s and p50/p99 latency per request for each mode, the in-process `ddm.sample` time
of the same work (the server's overhead), process CPU seconds (the machine may be shared), the cost
of one forward of 1 and of C rows (`batching_ceiling`: the most batching can gain), the batching
(forwards, rows per
forward) and /proc/loadavg.
"""

from __future__ import annotations

import argparse
import json
import socket
import string
import threading
import time

import httpx
import torch
import uvicorn
from ddm.graphs import Absorbing
from ddm.io import load
from ddm.model import ModelConfig, ScoreModel
from ddm.sampling import sample
from ddm.schedules import LogLinear
from ddm.serve import Scheduler
from ddm.serve.app import create_app
from ddm.tokenizers import CharTokenizer


def demo_shaped() -> ScoreModel:
    torch.manual_seed(0)
    tok = CharTokenizer(string.ascii_letters + string.digits + " .,;:!?'-\n")
    cfg = ModelConfig.from_size(
        "tiny", hidden=128, seq_len=128, time_conditioning=False, subs=True, dropout=0.0
    )
    return ScoreModel(cfg, Absorbing(tok.vocab_size), LogLinear(), tokenizer=tok).eval()


def serve(model, port: int) -> tuple[uvicorn.Server, object]:
    app = create_app(model, model_name="bench", scheduler=Scheduler(model, max_active=32))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, app


def run_clients(url: str, bodies: list[dict], clients: int) -> tuple[float, list[float]]:
    """Send `bodies` from `clients` threads (each takes the next body when done); wall time, latencies."""
    todo = list(enumerate(bodies))
    lock = threading.Lock()
    latencies: list[float] = []

    def worker() -> None:
        with httpx.Client(timeout=600) as c:
            while True:
                with lock:
                    if not todo:
                        return
                    _, body = todo.pop(0)
                t = time.perf_counter()
                r = c.post(f"{url}/v1/completions", json=body)
                r.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, latencies


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return round(kb / 1024, 1)


def soak(url: str, args: argparse.Namespace) -> dict:
    """`--clients` clients send requests for `--soak-s` seconds, each checking its text against the one
    the same seed gave before; nothing may be lost, fail or differ. RSS at the start and the end."""
    start_rss, stop = rss_mb(), time.monotonic() + args.soak_s
    counts = {"ok": 0, "failed": 0, "differed": 0}
    lock = threading.Lock()
    seen: dict[int, str] = {}

    def worker(k: int) -> None:
        i = k
        with httpx.Client(timeout=600) as c:
            while time.monotonic() < stop:
                body = dict(max_tokens=args.max_tokens, steps=args.steps, seed=i % 64)
                try:
                    text = c.post(f"{url}/v1/completions", json=body).json()["choices"][0]["text"]
                except Exception:
                    with lock:
                        counts["failed"] += 1
                    continue
                with lock:
                    counts["ok"] += 1
                    counts["differed"] += int(seen.setdefault(i % 64, text) != text)
                i += args.clients

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return dict(
        soak_s=args.soak_s, clients=args.clients, **counts, rss_start_mb=start_rss, rss_end_mb=rss_mb()
    )


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--soak-s", type=float, default=0, help="then a soak of this many seconds")
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load(args.checkpoint) if args.checkpoint else demo_shaped()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server, app = serve(model, port)
    url = f"http://127.0.0.1:{port}"
    bodies = [dict(max_tokens=args.max_tokens, steps=args.steps, seed=i) for i in range(args.requests)]
    run_clients(url, bodies[:2], 1)  # warm up
    t, cpu = time.perf_counter(), time.process_time()
    for b in bodies:
        sample(model, b["steps"], seq_len=b["max_tokens"], seed=b["seed"])
    in_process, in_process_cpu = time.perf_counter() - t, time.process_time() - cpu
    x = torch.full((args.clients, args.max_tokens), model.graph.dim - 1)
    with torch.no_grad():  # the cost of one forward of 1 row and of `clients` rows (the ceiling of batching)
        cost = []
        for rows in (1, args.clients):
            t = time.process_time()
            for _ in range(10):
                model(x[:rows], torch.ones(rows))
            cost.append((time.process_time() - t) / 10)
    sched = app.state.scheduler
    results = {}
    for clients in (1, args.clients):
        f0, r0, cpu = sched.forwards, sched.rows, time.process_time()
        wall, lat = run_clients(url, bodies, clients)
        cpu = time.process_time() - cpu
        results[clients] = dict(
            clients=clients, requests=len(bodies), wall_s=round(wall, 3),
            tokens_per_s=round(len(bodies) * args.max_tokens / wall, 1), cpu_s=round(cpu, 3),
            tokens_per_cpu_s=round(len(bodies) * args.max_tokens / cpu, 1),
            p50_s=round(pct(lat, 0.5), 3), p99_s=round(pct(lat, 0.99), 3),
            forwards=sched.forwards - f0,
            rows_per_forward=round((sched.rows - r0) / max(1, sched.forwards - f0), 2),
        )  # fmt: skip
        print(json.dumps(results[clients]), flush=True)
    with open("/proc/loadavg") as f:
        load_avg = f.read().strip()
    summary = dict(
        model=args.checkpoint or "untrained demo-shaped (tiny, hidden 128, seq_len 128)",
        max_tokens=args.max_tokens, steps=args.steps, torch_threads=args.threads,
        in_process_s=round(in_process, 3), in_process_cpu_s=round(in_process_cpu, 3),
        forward_cpu_s_1_row=round(cost[0], 5), forward_cpu_s_c_rows=round(cost[1], 5),
        batching_ceiling=round(args.clients * cost[0] / cost[1], 2),
        speedup=round(results[args.clients]["tokens_per_s"] / results[1]["tokens_per_s"], 2),
        cpu_speedup=round(results[args.clients]["tokens_per_cpu_s"] / results[1]["tokens_per_cpu_s"], 2),
        overhead_1_client=round(results[1]["wall_s"] / in_process - 1, 3), loadavg=load_avg,
        runs=list(results.values()),
    )  # fmt: skip
    if args.soak_s:
        summary["soak"] = soak(url, args)
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
    server.should_exit = True


if __name__ == "__main__":
    main()
