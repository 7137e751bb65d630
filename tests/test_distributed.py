"""method.md §6: two CPU processes (gloo) give the single-process loss and gradients of the whole batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from atomgen import AtomSeparation, distributed

WORLD = 2
OPTIONS = [
    {"mode": "signed", "kernel": "coulomb", "geometry": "sphere"},
    {"mode": "repulsive", "kernel": "gaussian", "geometry": "euclidean"},
]
GROUPS = torch.tensor([0, 1, 1, 0, 2, 1])  # groups span both processes' atoms


def _module(options: dict) -> AtomSeparation:
    torch.manual_seed(0)
    sep = AtomSeparation(dim=3, memory_budget_mb=1e-4, **options).double()
    with torch.no_grad():
        sep.role_head.weight.normal_()
    return sep


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(6, 3, 2, 3, generator=generator, dtype=torch.float64)
    mask = (torch.rand(6, 6, generator=generator) > 0.2).double()
    return features, mask


def _worker(rank: int, init_file: str, out_dir: str, options: dict, grouped: bool) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        sep = _module(options)
        features, mask = _batch()
        local = slice(rank * 3, rank * 3 + 3)
        x = features[local].clone().requires_grad_(True)
        out = sep(x, mask[local], GROUPS[local] if grouped else None)
        out.loss.backward()
        torch.save(
            {
                "loss": out.loss.detach(),
                "grad": x.grad,
                "head": sep.role_head.weight.grad,
                "energy": out.energy,
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("grouped", [False, True], ids=["one-group", "groups"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(o.values()))
def test_two_processes_match_one(tmp_path, options, grouped):
    args = (str(tmp_path / "init"), str(tmp_path), options, grouped)
    mp.spawn(_worker, args=args, nprocs=WORLD, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    sep = _module(options)
    features, mask = _batch()
    x = features.clone().requires_grad_(True)
    out = sep(x, mask, GROUPS if grouped else None)
    out.loss.backward()

    torch.testing.assert_close(sum(p["loss"] for p in parts), out.loss.detach(), rtol=1e-10, atol=0)
    torch.testing.assert_close(torch.cat([p["grad"] for p in parts]), x.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        sum(p["head"] for p in parts), sep.role_head.weight.grad, rtol=1e-9, atol=1e-12
    )
    torch.testing.assert_close(
        torch.cat([p["energy"] for p in parts]), out.energy.detach(), rtol=1e-10, atol=0
    )


def _local_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        features, mask = _batch()
        local = slice(rank * 3, rank * 3 + 3)
        with distributed.local():  # as sampling-time guidance computes it: no gather, no wait
            out = _module(OPTIONS[1])(features[local], mask[local])
        torch.save({"energy": out.energy, "loss": out.loss.detach()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_local_keeps_each_process_to_its_own_atoms(tmp_path):
    mp.spawn(_local_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    features, mask = _batch()
    for rank in range(WORLD):
        part = torch.load(tmp_path / f"rank{rank}.pt")
        alone = _module(OPTIONS[1])(features[rank * 3 : rank * 3 + 3], mask[rank * 3 : rank * 3 + 3])
        torch.testing.assert_close(part["energy"], alone.energy.detach(), rtol=1e-12, atol=0)
        torch.testing.assert_close(part["loss"], alone.loss.detach(), rtol=1e-12, atol=0)
