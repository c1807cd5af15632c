"""Two-process (gloo) check: VICReg's v and c on the gathered batch, with gradients (METHOD.md §3)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mast.distributed import all_reduce_mean, gather_with_grad, get_rank, get_world_size, is_distributed
from mast.loss import (LossConfig, invariance_weights, mismatch_factor, objective, variance_covariance,
                       weighted_invariance)

WORLD, N_LOCAL, D, K = 2, 5, 12, 3
CFG = LossConfig()


def full_inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(WORLD * N_LOCAL, D, generator=g) * 0.6
    z2 = z1 + 0.3 * torch.randn(WORLD * N_LOCAL, D, generator=g)
    u = torch.rand(WORLD * N_LOCAL, K, generator=g)
    masks = torch.rand(K, D, generator=g)
    return z1, z2, u, masks


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        z1, z2, u, masks = full_inputs()
        mine = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        z1, z2 = z1[mine].clone().requires_grad_(), z2[mine].clone().requires_grad_()
        result = {"rank": get_rank(), "world": get_world_size(), "distributed": is_distributed(),
                  "gathered": gather_with_grad(z1).detach(), "mean": all_reduce_mean(torch.tensor([float(rank)]))}
        out = objective(z1, z2, CFG, u=u[mine], masks=masks)
        out["loss"].backward()
        result.update({k: out[k] for k in ("loss", "inv", "var", "cov", "unc")})
        result.update(grad_z1=z1.grad.clone(), grad_z2=z2.grad.clone())
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gather_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    z1, z2, u, masks = full_inputs()
    z1.requires_grad_()
    z2.requires_grad_()
    var, cov = variance_covariance(z1, z2)  # single process, concatenated batch
    (CFG.var_coeff * var + CFG.cov_coeff * cov).backward()
    for r, res in enumerate(results):
        mine = slice(r * N_LOCAL, (r + 1) * N_LOCAL)
        assert res["rank"] == r and res["world"] == WORLD and res["distributed"]
        assert torch.equal(res["gathered"], z1.detach()) and res["mean"].item() == 0.5
        torch.testing.assert_close(res["var"], var.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(res["cov"], cov.detach(), rtol=1e-6, atol=1e-7)
        # invariance (and w) on each process's own batch, as VICReg
        q = mismatch_factor(u[mine], masks)
        local_inv = weighted_invariance(z1[mine].detach(), z2[mine].detach(), invariance_weights(q))
        torch.testing.assert_close(res["inv"], local_inv)
        # gradients: FullGatherLayer sums every rank's (identical) v/c gradient, so a rank's samples get
        # WORLD x the single-process v/c gradient (DDP's averaging divides by WORLD) plus their own L_inv's.
        zl1 = z1[mine].detach().clone().requires_grad_()
        zl2 = z2[mine].detach().clone().requires_grad_()
        (CFG.inv_coeff * weighted_invariance(zl1, zl2, invariance_weights(q))).backward()
        for got, inv_grad, ref in [(res["grad_z1"], zl1.grad, z1.grad[mine]), (res["grad_z2"], zl2.grad, z2.grad[mine])]:
            torch.testing.assert_close(got - inv_grad, WORLD * ref, rtol=1e-5, atol=1e-7)
