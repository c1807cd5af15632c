"""Process-group helpers and the gradient-keeping all-gather VICReg uses for v(·) and c(·) (METHOD.md §3)."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a default process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class FullGatherLayer(torch.autograd.Function):
    """all_gather whose backward all-reduces the incoming gradients and returns this rank's slice.

    Same as official VICReg's ``FullGatherLayer``: every rank computes the same loss on the gathered
    batch, so the gradient a rank's samples receive is the sum over ranks (DDP then averages by the
    world size, which gives back the gradient of the single loss).
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> tuple[Tensor, ...]:
        output = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(output, x.contiguous())
        return tuple(output)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> Tensor:
        all_gradients = torch.stack(grads)
        dist.all_reduce(all_gradients)
        return all_gradients[dist.get_rank()]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` [n, ...] from all processes along dim 0, keeping gradients; identity when single-process."""
    if not is_distributed():
        return x
    return torch.cat(FullGatherLayer.apply(x), dim=0)


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over processes (no gradient); identity when single-process."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()
