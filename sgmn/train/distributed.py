"""Distributed helpers: rank/world queries and an all-gather that keeps gradients.

Batch-wide losses (graph interaction, hard-example mining, contrastive and triplet terms) must
see the *global* batch. ``all_gather_with_grad`` concatenates every rank's tensor in rank order
and routes gradients back to the rank that produced each slice. Its backward all-reduces (sums)
the incoming gradient before taking the local slice: every rank computes the same global loss,
so the local slice receives ``world_size * dL/dx``, and DDP's gradient averaging divides that by
``world_size`` again. The result equals single-process training on the concatenated batch.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


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
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.batch
        return grad[start : start + ctx.batch]


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


def setup_distributed() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment).

    Backend: nccl when CUDA is available, else gloo (CPU). Returns True when this process is
    part of a multi-process group. Calling it twice, or without a launcher, is harmless.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")
    return True


def cleanup_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()
