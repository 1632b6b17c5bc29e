"""Muon on a Shard(0) DTensor against the plain matrix, 2 processes: global, not per-shard, orthogonalisation.

    OMP_NUM_THREADS=1 python -m torch.distributed.run --nproc_per_node 2 benches/fsdp_muon_probe.py

Prints the largest difference from the plain update, the same for per-shard Muon, and the update size.
"""

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

dist.init_process_group("gloo")
mesh = init_device_mesh("cpu", (2,))
torch.manual_seed(0)
W = torch.randn(8, 6)
G = torch.randn(8, 6)
p1 = torch.nn.Parameter(W.clone())
p1.grad = G.clone()
p2 = torch.nn.Parameter(distribute_tensor(W.clone(), mesh, [Shard(0)]))
p2.grad = distribute_tensor(G.clone(), mesh, [Shard(0)])
for p in (p1, p2):
    torch.optim.Muon([p], lr=0.1, adjust_lr_fn="match_rms_adamw").step()
halves = []
for h in (slice(0, 4), slice(4, 8)):
    q = torch.nn.Parameter(W[h].clone())
    q.grad = G[h].clone()
    torch.optim.Muon([q], lr=0.1, adjust_lr_fn="match_rms_adamw").step()
    halves.append(q.detach())
print("per-shard diff", float((torch.cat(halves) - p1.detach()).abs().max()))
d = (p2.full_tensor() - p1.detach()).abs().max()
print(dist.get_rank(), "max diff", float(d), "update size", float((p1.detach() - W).abs().max()))
dist.destroy_process_group()
