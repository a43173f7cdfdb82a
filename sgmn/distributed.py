"""Distributed helpers: rank/world queries and an all-gather that keeps gradients.

Batch-wide losses (graph interaction, hard-example mining, contrastive and triplet terms) must
see the *global* batch. ``all_gather_with_grad`` concatenates every rank's tensor in rank order
and routes gradients back to the rank that produced each slice. Its backward sums the incoming
gradient over ranks and keeps the local slice (one reduce-scatter): every rank computes the same global loss,
so the local slice receives ``world_size * dL/dx``, and DDP's gradient averaging divides that by
``world_size`` again. The result equals single-process training on the concatenated batch.
"""

from __future__ import annotations

import datetime
import os
from typing import Optional

import torch
import torch.distributed as dist

_CONTROL_GROUP = None  # a gloo group for small CPU-side agreements (see control_all_gather)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.batch = x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Sum over ranks, keeping only this rank's slice: a reduce-scatter moves 1/world of the
        # data an all-reduce of the whole gathered gradient would.
        out = grad.new_empty((ctx.batch, *grad.shape[1:]))
        dist.reduce_scatter_tensor(out, grad.contiguous(), op=dist.ReduceOp.SUM)
        return out


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) over ranks along dim 0, keeping gradients."""
    if not is_distributed() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed() or world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def all_gather_object(obj) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def local_rank() -> int:
    """Index of this process on its machine (torchrun's LOCAL_RANK), 0 without a launcher."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def setup_distributed(timeout_s: Optional[float] = None) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment).

    Backend: nccl when CUDA is available, else gloo (CPU). ``timeout_s`` bounds how long a
    collective may wait for a rank (the NCCL watchdog aborts the job after it); None keeps
    torch's default. Returns True when this process is part of a multi-process group. Calling it
    twice, or without a launcher, is harmless.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    kwargs = {"timeout": datetime.timedelta(seconds=timeout_s)} if timeout_s else {}
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="nccl", device_id=torch.device("cuda", local_rank()), **kwargs)
    else:
        dist.init_process_group(backend="gloo", **kwargs)
    return True


def control_group():
    """A gloo group over all ranks for small CPU-side agreements (batch sizes, skip counts):
    with NCCL a collective needs CUDA tensors, and reading their result would wait for the GPU."""
    global _CONTROL_GROUP
    if dist.get_backend() == "gloo":
        return None  # the default group is gloo already
    if _CONTROL_GROUP is None:
        _CONTROL_GROUP = dist.new_group(backend="gloo")
    return _CONTROL_GROUP


def control_all_gather(values: list[int]) -> list[list[int]]:
    """Every rank's list of ints (same length on every rank), transposed: ``[[v0 of rank 0, v0 of
    rank 1, ...], [v1 of rank 0, ...], ...]``. CPU only: never waits for the GPU."""
    if not is_distributed():
        return [[v] for v in values]
    local = torch.tensor(values, dtype=torch.long)
    out = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(out, local, group=control_group())
    return torch.stack(out, dim=1).tolist()


def sum_of_shards(local: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of ``local`` (each rank's share of one global loss), as a loss.

    Its value is the global sum on every rank; its gradient is ``world_size`` times the local
    share's. A head whose rows are sharded over ranks thus composes with the replicated terms:
    :func:`all_gather_with_grad` sums the ranks' gradients and DDP divides by ``world_size``, so
    every parameter gets exactly the gradient of the global loss (as with one process)."""
    if not is_distributed() or world_size() == 1:
        return local
    total = local.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    w = world_size()
    return local * w + (total - local.detach() * w)


def shard_rows(n: int) -> slice:
    """This rank's rows of a global batch of ``n`` rows that were all-gathered in rank order."""
    w = world_size()
    per = n // w
    return slice(rank() * per, (rank() + 1) * per)


def cleanup_distributed() -> None:
    global _CONTROL_GROUP
    if is_distributed():
        dist.destroy_process_group()
    _CONTROL_GROUP = None


def barrier() -> None:
    if is_distributed():
        dist.barrier()
