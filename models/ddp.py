"""Multi-process training with DistributedDataParallel, started by torchrun.

`torchrun --nproc-per-node N -m models.train --config faces.toml` sets RANK, WORLD_SIZE, LOCAL_RANK
and MASTER_ADDR/PORT; `setup` reads them and joins the process group (NCCL on CUDA, gloo on the CPU).
One process with none of them set is the ordinary single-device case and touches nothing here.

Batch norm: on CUDA the networks' BatchNorm layers become SyncBatchNorm, so every process
normalises with the statistics of the whole global batch, as one device would. PyTorch implements
SyncBatchNorm for GPUs only, so on the CPU (gloo: tests and small experiments) each process uses its
own shard's statistics and DDP copies rank 0's running averages to the others at every forward.
"""

import inspect
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as td
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when setup() created the process group (and must destroy it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(use_cuda: bool) -> Dist:
    """Join the process group torchrun describes in the environment; a no-op for one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if td.is_initialized():
        return Dist(td.get_rank(), td.get_world_size(), local_rank)
    if use_cuda:
        torch.cuda.set_device(local_rank)
    td.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    return Dist(rank, world_size, local_rank, owns_group=True)


def teardown(dist: Dist) -> None:
    if dist.owns_group and td.is_initialized():
        td.destroy_process_group()


def wrap(
    module: nn.Module, device: torch.device, dist: Dist, sync_batchnorm: bool, compile: bool
) -> nn.Module:
    """The module as the training loop calls it: SyncBatchNorm, then torch.compile, then DDP (as asked).

    `module` itself keeps its parameters and state-dict keys (SyncBatchNorm converts its children in
    place), so checkpoints are saved from it and load into a plain network.
    """
    cuda = device.type == "cuda"
    sync = dist.enabled and sync_batchnorm and cuda
    if sync:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if compile and cuda:
        module = torch.compile(module)
    if not dist.enabled:
        return module
    ids = [device.index] if cuda else None
    if not sync:  # DDP's default: rank 0's buffers (batch-norm running averages) are copied at each forward
        return DistributedDataParallel(module, device_ids=ids)
    # Synchronised statistics are equal everywhere already: no need to copy the buffers too.
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters  # torch >= 2.14
    no_copy = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
    return DistributedDataParallel(module, device_ids=ids, **no_copy)


def no_sync(module: nn.Module) -> Any:
    """Skip the gradient all-reduce of the backward that follows (for gradients summed or discarded)."""
    return module.no_sync() if isinstance(module, DistributedDataParallel) else nullcontext()


def any_rank(flag: bool, device: torch.device, dist: Dist) -> bool:
    """True on every process when `flag` is True on any: stops and warnings are decided together."""
    if not dist.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return bool(t.item())


def mean(values: torch.Tensor, dist: Dist) -> torch.Tensor:
    """The average of `values` over processes (logged losses describe the whole global batch)."""
    if dist.enabled:
        values = values.clone()
        td.all_reduce(values)
        values /= dist.world_size
    return values


def broadcast(obj: Any, dist: Dist) -> Any:
    """Rank 0's `obj` on every process (a decision rank 0 made, such as which checkpoint to load)."""
    if not dist.enabled:
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, dist: Dist) -> list[Any]:
    """`obj` from every process, in rank order (for per-process RNG states in checkpoints)."""
    if not dist.enabled:
        return [obj]
    out: list[Any] = [None] * dist.world_size
    td.all_gather_object(out, obj)
    return out


def barrier(dist: Dist) -> None:
    if dist.enabled:
        td.barrier()
