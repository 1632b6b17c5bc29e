"""How the model is spread over the processes of a run: a whole replica per process (DDP, or one process)
or sharded per transformer block with torch's FSDP2 (`torch.distributed.fsdp.fully_shard`).

The Trainer asks a `Parallelism` (`make_parallelism`) for everything that depends on the choice: the
model it trains (`prepare`, before the optimizer and the EMA are built on its parameters), the network the
objective calls (`wrap`), whether a micro-batch reduces its gradients (`sync`), the copy the evaluation
runs (`eval_copy`) and the other ranks' part in it (`join_evaluation`), and the checkpoint's tensors
(`checkpoint_views`, `load`).

`Sharded` (config `parallel = "fsdp"`): every transformer block is one FSDP unit and the root holds the
embeddings and the output layer, so a rank keeps `1 / W` of every parameter, gradient, Adam moment and EMA
tensor (DTensors sharded on dim 0), and all-gathers one block's weights at a time in the forward and the
backward. The mixed-precision policy computes in bf16 where the model's own autocast would
(`bf16_autocast_on`: CUDA, or a CPU with native bf16 and `cpu_bf16`), and all-reduces (reduce-scatters)
gradients and keeps the master weights in float32. The reduce-scatter averages over the ranks like DDP's
all-reduce, so the loss scaling `W / B` of `ddm.training.distributed` gives the gradient of the global
mean loss here too; the keyed data and noise are untouched, so a step's batch does not depend on the
world size or the parallelism. AdamW and Muon (`torch.optim.Muon`, whose Newton-Schulz products DTensor
computes on the global matrices) run on the sharded parameters as they are.

A plain checkpoint of a sharded run holds the full tensors (every rank takes part in gathering them; rank
0 writes), so it resumes at any world size, with DDP, FSDP or one process, and is what sampling reads.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

from ddm.errors import InvalidArgument
from ddm.model import EMA
from ddm.model.transformer import bf16_autocast_on
from ddm.training.distributed import DistEnv

__all__ = ["Parallelism", "Replicated", "Sharded", "full_tensors", "make_parallelism", "mixed_precision"]


# methods of a transformer block the model calls instead of `forward` (ddm.model.transformer.DiTBlock)
BLOCK_METHODS = ("forward_kv",)


def full_tensors(tree: Any) -> Any:
    """`tree` (nested dicts and lists) with every DTensor gathered into a plain CPU tensor.

    Collective: every rank calls it with the same structure, in the same order."""
    if isinstance(tree, DTensor):
        return tree.full_tensor().detach().cpu()
    if isinstance(tree, dict):
        return {k: full_tensors(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(full_tensors(v) for v in tree)
    return tree


def _shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` placed as `like` is: sharded the same way if `like` is a DTensor, else on its device."""
    if isinstance(like, DTensor):
        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)
    return full.to(like.device)


class _Frozen:
    """A state dict already gathered, behind the `state_dict()` (and EMA `num_updates`) that
    `ddm.io.checkpoint.save` reads."""

    def __init__(self, sd: dict[str, Any], num_updates: int = 0) -> None:
        self._sd, self.num_updates = sd, num_updates

    def state_dict(self) -> dict[str, Any]:
        return self._sd


class Parallelism:
    """The interface (and the replicated behaviour: see `Replicated`)."""

    name = "ddp"
    sharded = False  # whether the EMA must be gathered (collectively) for rank 0's evaluation

    def __init__(self, env: DistEnv, device: torch.device) -> None:
        self.env, self.device = env, device

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to train, from the freshly built one (before the optimizer and EMA see it)."""
        return model

    def make_ema(self, model: torch.nn.Module, decay: float) -> EMA:
        """The EMA of the prepared model's parameters."""
        return EMA(model, decay)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The network the objective calls: DDP over several processes (gradients averaged in backward)."""
        if not self.env.enabled:
            return model
        return DistributedDataParallel(
            model, device_ids=[self.device] if self.device.type == "cuda" else None
        )

    def sync(self, net: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """The context of a micro-batch's backward: gradients are reduced only at the last one."""
        return net.no_sync() if self.env.enabled and not last else contextlib.nullcontext()

    def eval_copy(self, model: torch.nn.Module, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        """An unsharded model that `EMA.copy_to` fills for evaluation."""
        return copy.deepcopy(model)

    def join_evaluation(self, ema: EMA) -> None:
        """A rank other than 0, when rank 0 evaluates: its part in `EMA.copy_to` (nothing to do here)."""

    def checkpoint_views(self, model: Any, ema: Any, optimizer: Any) -> tuple[Any, Any, Any]:
        """What `ddm.io.checkpoint.save` reads on rank 0 (called on every rank: it may gather)."""
        return model, ema, optimizer

    def load(self, model: torch.nn.Module, ema: EMA, optimizer: Any, state: dict[str, Any]) -> None:
        """Restores full (plain) tensors of a checkpoint into the model, the EMA and the optimizer."""
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"], state["ema_num_updates"])
        optimizer.load_state_dict(state["optimizer"])


class Replicated(Parallelism):
    """DDP over several processes, or one process: every rank holds the whole model (the default)."""


class ShardedEMA(EMA):
    """An EMA whose shadow tensors are sharded like the parameters; `copy_to` an unsharded model gathers
    them (collective)."""

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, v in self.shadow.items():  # in this order: the other ranks' join_evaluation gathers too
            p = params[name]
            p.copy_(v if isinstance(p, DTensor) else v.full_tensor())

    def load_state_dict(self, tensors: dict[str, torch.Tensor], num_updates: int) -> None:
        placed = {k: _shard_like(v, self.shadow[k]) if k in self.shadow else v for k, v in tensors.items()}
        super().load_state_dict(placed, num_updates)


class Sharded(Parallelism):
    """FSDP2: parameters, gradients, optimizer state and EMA sharded over the ranks, one unit per block."""

    name = "fsdp"
    sharded = True

    def __init__(self, env: DistEnv, device: torch.device, policy: MixedPrecisionPolicy) -> None:
        super().__init__(env, device)
        self.policy = policy

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, torch.nn.ModuleList):
            raise InvalidArgument(f"parallel 'fsdp': {type(model).__name__} has no `blocks` to shard")
        mesh = init_device_mesh(self.device.type, (self.env.world_size,))
        # forward_kv returns the keys and values as views of one projection; the trunk never writes
        # into them in place (the case FSDP warns of), as the exact-gradient tests check
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=self.policy)
            for method in BLOCK_METHODS:  # the trunk calls these, not forward: they gather the shards too
                if hasattr(block, method):
                    register_fsdp_forward_method(block, method)
        fully_shard(model, mesh=mesh, mp_policy=self.policy)
        return model

    def make_ema(self, model: torch.nn.Module, decay: float) -> EMA:
        return ShardedEMA(model, decay)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # fully_shard's hooks gather, reshard and reduce-scatter

    def sync(self, net: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
        net.set_requires_gradient_sync(last)  # type: ignore[operator]
        return contextlib.nullcontext()

    def eval_copy(self, model: torch.nn.Module, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):  # a fresh model's init must not move the run's RNG
            return build()

    def join_evaluation(self, ema: EMA) -> None:
        for v in ema.shadow.values():  # the gathers of rank 0's ShardedEMA.copy_to, in its order
            v.full_tensor()

    def checkpoint_views(self, model: Any, ema: Any, optimizer: Any) -> tuple[Any, Any, Any]:
        return (
            _Frozen(full_tensors(model.state_dict())),
            _Frozen(full_tensors(ema.state_dict()), ema.num_updates),
            _Frozen(full_tensors(optimizer.state_dict())),
        )

    def load(self, model: torch.nn.Module, ema: EMA, optimizer: Any, state: dict[str, Any]) -> None:
        own = model.state_dict()
        unknown, missing = sorted(set(state["model"]) - set(own)), sorted(set(own) - set(state["model"]))
        if unknown or missing:
            raise InvalidArgument(
                f"checkpoint weights do not fit the model: missing {missing[:5]}, unknown {unknown[:5]}"
            )
        with torch.no_grad():
            for name, p in own.items():
                p.copy_(_shard_like(state["model"][name], p))
        ema.load_state_dict(state["ema"], state["ema_num_updates"])
        optimizer.load_state_dict(state["optimizer"])
        for opt in getattr(optimizer, "_parts", (optimizer,)):  # MuonAdamW holds two
            for p, st in opt.state.items():
                for k, v in st.items():
                    if isinstance(p, DTensor) and torch.is_tensor(v) and v.shape == p.shape:
                        st[k] = _shard_like(v, p)


def mixed_precision(cfg: Any, device: torch.device) -> MixedPrecisionPolicy:
    """bf16 compute where the model's autocast would use it, float32 reductions and master weights."""
    bf16 = bf16_autocast_on(device.type, cfg.bf16, cfg.cpu_bf16)
    return MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if bf16 else torch.float32,
        reduce_dtype=torch.float32,
        output_dtype=torch.float32,
    )


def make_parallelism(cfg: Any, env: DistEnv, device: torch.device) -> Parallelism:
    """The `Parallelism` of a run's config (`parallel`), for this process."""
    if cfg.parallel != "fsdp":
        return Replicated(env, device)
    if env.backend is None:
        raise InvalidArgument(
            "parallel 'fsdp' needs a process group: start the run with ddm.training.train or `ddm train` "
            "(which set one up, also for one process), or under torchrun"
        )
    return Sharded(env, device, mixed_precision(cfg, device))
