"""Blockwise pair sums between particles of different atoms (method.md §4–5).

For particle positions ``x`` (atoms × particles × k) this computes, for every pair of atoms (A, B),

    S1_AB = Σ_{i∈A, j∈B} a_i a_j k(u_ij)        (energy numerator)
    S2_AB = Σ_{i∈A, j∈B} b_i b_j g(u_ij)        (atom-distance numerator, g(u) = sqrt(u + ε²))

with ``u_ij = ‖x_i − x_j‖²``, without ever holding the ``(B n) × (B n)`` matrices: rows are taken a block of
atoms at a time, each block's Gram product is reduced to ``(atoms in block, B)`` at once, and the backward
pass recomputes the block instead of saving it, so memory is O(block · B n + B n k).
"""

from __future__ import annotations

import torch

KERNELS = ("coulomb", "gaussian")

# Per (row particle × column particle) entry, forward and backward hold about this many temporaries.
_TEMPORARIES_PER_ENTRY = 6


def kernel_value_and_slope(
    u: torch.Tensor, kernel: str, epsilon: float, sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``k(u)`` and ``k'(u)`` for the softened kernels of method.md §4."""
    if kernel == "coulomb":  # Plummer-softened Coulomb: (u + ε²)^(-1/2)
        inv_root = torch.rsqrt(u + epsilon**2)
        return inv_root, -0.5 * inv_root**3
    value = torch.exp(u / (-2.0 * sigma**2))  # Gaussian: exp(-u / 2σ²)
    return value, value / (-2.0 * sigma**2)


def kernel_value(u: torch.Tensor, kernel: str, epsilon: float, sigma: float) -> torch.Tensor:
    if kernel == "coulomb":
        return torch.rsqrt(u + epsilon**2)
    return torch.exp(u / (-2.0 * sigma**2))


def atoms_per_block(num_cols: int, particles: int, element_size: int, memory_budget_mb: float) -> int:
    """How many row atoms fit one block under the memory budget (at least one)."""
    per_atom = particles * num_cols * element_size * _TEMPORARIES_PER_ENTRY
    return max(1, int(memory_budget_mb * 2**20) // max(per_atom, 1))


class PairSums(torch.autograd.Function):
    """``(S1, S2) = PairSums.apply(x_rows, a_rows, b_rows, x_cols, a_cols, b_cols, …)``.

    Shapes: ``x_* (atoms, n, k)``, ``a_*``/``b_* (atoms, n)``; outputs ``(row atoms, col atoms)``.
    Rows and columns are separate inputs so that a process can take its local atoms as rows against
    the all-gathered batch as columns (method.md §6); autograd adds the two gradients when they are
    the same tensor.
    """

    @staticmethod
    def forward(ctx, x_rows, a_rows, b_rows, x_cols, a_cols, b_cols, kernel, epsilon, sigma, block):
        ctx.save_for_backward(x_rows, a_rows, b_rows, x_cols, a_cols, b_cols)
        ctx.options = (kernel, epsilon, sigma, block)
        rows, cols = x_rows.shape[0], x_cols.shape[0]
        s1 = x_rows.new_empty(rows, cols)
        s2 = x_rows.new_empty(rows, cols)
        cols_flat, cols_sq = x_cols.flatten(0, 1), x_cols.square().sum(-1).flatten()
        for start in range(0, rows, block):
            stop = min(start + block, rows)
            u = _squared_distances(x_rows[start:stop], cols_flat, cols_sq)  # (blk, n, C·n)
            k = kernel_value(u, kernel, epsilon, sigma)
            g = torch.sqrt(u + epsilon**2)
            s1[start:stop] = _reduce(k, a_rows[start:stop], a_cols)
            s2[start:stop] = _reduce(g, b_rows[start:stop], b_cols)
        return s1, s2

    @staticmethod
    def backward(ctx, grad_s1, grad_s2):
        x_rows, a_rows, b_rows, x_cols, a_cols, b_cols = ctx.saved_tensors
        kernel, epsilon, sigma, block = ctx.options
        grad_s1, grad_s2 = grad_s1.contiguous(), grad_s2.contiguous()
        cols, n = x_cols.shape[:2]
        cols_flat, cols_sq = x_cols.flatten(0, 1), x_cols.square().sum(-1).flatten()
        gx_rows, gx_cols = torch.zeros_like(x_rows), torch.zeros_like(x_cols).flatten(0, 1)
        ga_rows, gb_rows = torch.zeros_like(a_rows), torch.zeros_like(b_rows)
        ga_cols, gb_cols = torch.zeros_like(a_cols), torch.zeros_like(b_cols)
        for start in range(0, x_rows.shape[0], block):
            stop = min(start + block, x_rows.shape[0])
            x_blk, a_blk, b_blk = x_rows[start:stop], a_rows[start:stop], b_rows[start:stop]
            u = _squared_distances(x_blk, cols_flat, cols_sq).view(stop - start, n, cols, n)
            k, dk = kernel_value_and_slope(u, kernel, epsilon, sigma)
            g = torch.sqrt(u + epsilon**2)
            # Upstream weight of each particle pair: the gradient of its atom pair, times the col weight.
            w1 = grad_s1[start:stop, None, :, None] * a_cols  # (blk, 1, C, n)
            w2 = grad_s2[start:stop, None, :, None] * b_cols
            # dS1/da_i = Σ_j w1_ij k_ij; the column weights by symmetry.
            ga_rows[start:stop] = (k * w1).sum((2, 3))
            gb_rows[start:stop] = (g * w2).sum((2, 3))
            row_a, row_b = a_blk[:, :, None, None], b_blk[:, :, None, None]
            ga_cols += (k * (row_a * grad_s1[start:stop, None, :, None])).sum((0, 1))
            gb_cols += (g * (row_b * grad_s2[start:stop, None, :, None])).sum((0, 1))
            # Γ_ij = dL/du_ij; g'(u) = 1 / (2 g).
            gamma = dk * (w1 * row_a) + (w2 * row_b) * (0.5 / g)
            gamma = gamma.view(stop - start, n, cols * n)
            # u_ij = |x_i|² + |x_j|² − 2 x_i·x_j
            gx_rows[start:stop] = 2.0 * (gamma.sum(-1, keepdim=True) * x_blk - gamma @ cols_flat)
            gamma_flat = gamma.flatten(0, 1)
            gx_cols += 2.0 * (gamma_flat.sum(0)[:, None] * cols_flat - gamma_flat.T @ x_blk.flatten(0, 1))
        gx_cols = gx_cols.view_as(x_cols)
        return gx_rows, ga_rows, gb_rows, gx_cols, ga_cols, gb_cols, None, None, None, None


def _squared_distances(x_blk: torch.Tensor, cols_flat: torch.Tensor, cols_sq: torch.Tensor) -> torch.Tensor:
    """``‖x_i − x_j‖²`` for a block of row atoms against every column particle: ``(blk, n, C·n)``."""
    gram = x_blk @ cols_flat.T
    return (x_blk.square().sum(-1, keepdim=True) + cols_sq) - 2.0 * gram


def _reduce(values: torch.Tensor, w_rows: torch.Tensor, w_cols: torch.Tensor) -> torch.Tensor:
    """``Σ_{i∈A, j∈B} w_i w_j values_ij`` for a block: ``(blk, n, C·n) → (blk, C)``."""
    blk, n = w_rows.shape
    per_row = torch.einsum("bicm,cm->bic", values.view(blk, n, *w_cols.shape), w_cols)
    return torch.einsum("bic,bi->bc", per_row, w_rows)


def pair_sums(
    x_rows: torch.Tensor,
    a_rows: torch.Tensor,
    b_rows: torch.Tensor,
    x_cols: torch.Tensor,
    a_cols: torch.Tensor,
    b_cols: torch.Tensor,
    *,
    kernel: str,
    epsilon: float,
    sigma: float,
    memory_budget_mb: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Energy and atom-distance numerators of method.md §4, computed blockwise (§5)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    cols, n = x_cols.shape[:2]
    block = atoms_per_block(cols * n, n, x_cols.element_size(), memory_budget_mb)
    return PairSums.apply(x_rows, a_rows, b_rows, x_cols, a_cols, b_cols, kernel, epsilon, sigma, block)


__all__ = ["KERNELS", "atoms_per_block", "kernel_value", "kernel_value_and_slope", "pair_sums"]
