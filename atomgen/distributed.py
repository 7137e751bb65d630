"""Atom separation across processes (method.md §6).

Each process keeps its own atoms as rows and sees every process's atoms as columns: positions, charges
and importances are all-gathered *with* gradient, so the per-process losses sum to the loss of the
concatenated batch and each process receives the full gradient for its own atoms.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
import torch.distributed as dist

_local = threading.local()


def is_active() -> bool:
    """Whether atoms are gathered across processes: a process group of several, outside :func:`local`."""
    if getattr(_local, "depth", 0):
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Treat this process's atoms as the whole batch, process group or not.

    Sampling-time guidance separates the samples of one sampling call: under a process group (several
    GPUs sampling disjoint batches), gathering would couple other processes' batches, or wait forever for
    processes that never reach the same call.
    """
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's ``tensor`` along dim 0, differentiably (equal sizes per process)."""
    if not is_active():
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def gather_constant(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's ``tensor`` along dim 0, without gradient (labels, group indices)."""
    if not is_active():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def row_offset(local_size: int) -> int:
    """Index of this process's first atom in the gathered batch."""
    return dist.get_rank() * local_size if is_active() else 0


def total(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of a (count-like, gradient-free) tensor over processes."""
    if not is_active():
        return tensor
    tensor = tensor.detach().clone()
    dist.all_reduce(tensor)
    return tensor
