"""Blockwise pair sums between particles of different atoms (method.md §4–5).

For particle positions ``x`` (atoms × particles × k) this computes, for every pair of atoms (A, B),

    S1_AB = Σ_{i∈A, j∈B} a_i a_j k(u_ij)        (energy numerator)
    S2_AB = Σ_{i∈A, j∈B} b_i b_j g(u_ij)        (atom-distance numerator, g(u) = sqrt(u + ε²))

with ``u_ij = ‖x_i − x_j‖²``, without ever holding the ``(B n) × (B n)`` matrices. The pairs are visited in
square tiles of (row atoms × column atoms); each tile is one Gram product, a few elementwise passes and a
reduction to ``(atoms, atoms)`` sums, and the backward pass recomputes the tile instead of saving it, so
memory is O(tile + B n k). Tiles are kept small enough for the per-core caches: the elementwise passes
then cost a fraction of the Gram products, which are the floor (method.md §5).

The Gram product yields the (softened) squared distances directly: rows ``[−2 x_i, |x_i|² + ε², 1]``
against columns ``[x_j, 1, |x_j|²]`` give ``u_ij + ε²``, and the first ``k + 1`` column entries,
``[x_j, 1]``, are all the two gradient products need.

When rows and columns are the same atoms (one process), ``u`` and both sums are symmetric, so only the
tiles on and above the diagonal are computed, and each serves both orders of its atom pairs: about
two-thirds of the floor's matrix products, forward and backward, instead of four-thirds.
"""

from __future__ import annotations

import math

import torch

KERNELS = ("coulomb", "gaussian")

# Tile-sized temporaries alive at once, per (row particle × column particle) entry of a tile: the Gram
# tile (which becomes g, then Γ) and k, plus a transient inside an operation.
_TEMPORARIES_PER_ENTRY = 3
# Tile side in particles on the CPU. At 512² entries (1 MiB per float32 temporary) a tile's elementwise
# passes run in the per-core cache, several times faster than from memory; smaller tiles cost more
# per-operation overhead and less efficient Gram products, larger ones spill the cache and, in the symmetric
# case, save less (the diagonal tiles are computed whole). On a 2-core Xeon 512 beat 256, 1024 and 2048 at
# n = 16 and 64. Other devices (GPUs; not measured here) take tiles as large as the memory budget allows,
# since there per-operation launch overhead, not cache size, is what small tiles cost.
_CPU_TILE_PARTICLES = 512


def atoms_per_block(
    num_cols: int, particles: int, element_size: int, memory_budget_mb: float, device_type: str = "cpu"
) -> int:
    """Atoms per side of a square (row atoms × column atoms) tile (at least one).

    As many as keep the tile's temporaries within the memory budget, on the CPU at most about
    ``_CPU_TILE_PARTICLES`` particles, and never more than the ``num_cols`` column atoms there are.
    """
    side = math.isqrt(int(memory_budget_mb * 2**20) // (element_size * _TEMPORARIES_PER_ENTRY))
    if device_type == "cpu":
        side = min(side, _CPU_TILE_PARTICLES)
    return max(1, min(side // max(particles, 1), num_cols))


class PairSums(torch.autograd.Function):
    """``(S1, S2) = PairSums.apply(x_rows, a_rows, b_rows, x_cols, a_cols, b_cols, …)``.

    Shapes: ``x_* (atoms, n, k)``, ``a_*``/``b_* (atoms, n)``; outputs ``(row atoms, col atoms)``.
    Rows and columns are separate inputs so that a process can take its local atoms as rows against
    the all-gathered batch as columns (method.md §6); autograd adds the two gradients when they are
    the same tensor. Passing the very same tensors as rows and columns selects the symmetric path.
    """

    @staticmethod
    def forward(ctx, x_rows, a_rows, b_rows, x_cols, a_cols, b_cols, kernel, epsilon, sigma, block):
        symmetric = x_rows is x_cols and a_rows is a_cols and b_rows is b_cols
        rows, (cols, n, _) = x_rows.shape[0], x_cols.shape
        rows_aug, cols_aug = _augment_rows(x_rows, _shift(kernel, epsilon)), _augment_cols(x_cols)
        s1 = x_rows.new_empty(rows, cols)
        s2 = x_rows.new_empty(rows, cols)
        for r, c in _tiles(rows, cols, block, symmetric):
            tile = rows_aug[r.start * n : r.stop * n] @ cols_aug[c.start * n : c.stop * n].T
            k, g = _kernel_and_distance(tile, kernel, epsilon, sigma)
            s1[r, c] = _reduce(k, a_rows[r], a_cols[c])
            s2[r, c] = _reduce(g, b_rows[r], b_cols[c])
            if symmetric and c != r:  # S_BA = S_AB: the tile below the diagonal is the transpose
                s1[c, r] = s1[r, c].T
                s2[c, r] = s2[r, c].T
        # The backward pass needs the augmented positions again; they also hold x (see _augment_cols).
        rows_plain = None if symmetric else _augment_cols(x_rows)
        ctx.save_for_backward(rows_aug, cols_aug, rows_plain, a_rows, b_rows, a_cols, b_cols)
        ctx.options = (kernel, epsilon, sigma, block, symmetric)
        return s1, s2

    @staticmethod
    def backward(ctx, grad_s1, grad_s2):
        rows_aug, cols_aug, rows_plain, a_rows, b_rows, a_cols, b_cols = ctx.saved_tensors
        kernel, epsilon, sigma, block, symmetric = ctx.options
        need = ctx.needs_input_grad
        need_x, need_weights = need[0] or need[3], any(need[i] for i in (1, 2, 4, 5))
        (rows, n), cols, dim = a_rows.shape, a_cols.shape[0], cols_aug.shape[1] - 2
        if symmetric:
            # One tile above the diagonal stands for both orders of its atom pairs, (A, B) and (B, A):
            # with u, k and g symmetric, their upstream gradients simply add.
            grad_s1, grad_s2 = grad_s1 + grad_s1.T, grad_s2 + grad_s2.T
        grad_s1, grad_s2 = grad_s1.contiguous(), grad_s2.contiguous()
        # [x_j, 1] of every particle: dL/dx_i = 2 Σ_j Γ_ij (x_i − x_j) = x_i d_i[k] − d_i[:k] with
        # d_i = Σ_j 2Γ_ij [x_j, 1], whether particle i is a row or a column of the tile.
        cols_plain = cols_aug[:, : dim + 1]
        rows_plain = cols_plain if symmetric else rows_plain[:, : dim + 1]
        # One accumulator per tensor: in the symmetric case rows and columns are the same particles.
        d_rows = d_cols = None
        if need_x:
            d_rows = torch.zeros_like(rows_plain)
            d_cols = d_rows if symmetric else torch.zeros_like(cols_plain)
        ga_rows, gb_rows = torch.zeros_like(a_rows), torch.zeros_like(b_rows)
        ga_cols, gb_cols = (
            (ga_rows, gb_rows) if symmetric else (torch.zeros_like(a_cols), torch.zeros_like(b_cols))
        )
        for r, c in _tiles(rows, cols, block, symmetric):
            # In the symmetric case a diagonal tile already holds both orders of each of its pairs, so
            # its row side alone gives every particle's gradient; other tiles feed both sides.
            column_side = not symmetric or c != r
            pr, pc = slice(r.start * n, r.stop * n), slice(c.start * n, c.stop * n)
            atoms = r.stop - r.start
            g1, g2 = grad_s1[r, c], grad_s2[r, c]
            a_r, b_r = a_rows[r], b_rows[r]
            # Upstream weight of each particle pair, as (row atom, 1, column particle) factors:
            # dL/dk_ij = a_i · W1[A(i), j] with W1[A, j] = grad_S1[A, B(j)] a_j; likewise W2 for g.
            w1 = (g1[:, :, None] * a_cols[c]).view(atoms, 1, -1)
            w2 = (g2[:, :, None] * b_cols[c]).view(atoms, 1, -1)
            tile = (rows_aug[pr] @ cols_aug[pc].T).view(atoms, n, -1)
            # k and g, g in the Gram tile's buffer, which later becomes Γ's (Coulomb) or k's does
            # (Gaussian): two tile-sized temporaries, which stay in cache.
            k, g = _kernel_and_distance(tile, kernel, epsilon, sigma)
            if need_weights:
                # dS/da_i = Σ_j W[A(i), j] k_ij (rows); Σ_i a_i grad_S[A(i), B(j)] k_ij (columns).
                # (As row vector × transposed tile: several times faster than tile × column vector.)
                ga_rows[r] += torch.bmm(w1, k.transpose(1, 2)).view(atoms, n)
                gb_rows[r] += torch.bmm(w2, g.transpose(1, 2)).view(atoms, n)
                if column_side:
                    ga_cols[c] += _reduce_columns(k, a_r, g1)
                    gb_cols[c] += _reduce_columns(g, b_r, g2)
            if need_x:
                # 2Γ_ij = 2 dL/du_ij = a_i W1 · 2k'(u) + b_i W2 · 2g'(u), with 2g' = 1/g and
                # 2k' = −k³ (Coulomb, where also 1/g = k) or −k/σ² (Gaussian).
                if kernel == "coulomb":
                    gamma = torch.mul(k, k, out=g).mul_(-w1).mul_(a_r[:, :, None])  # −a_i W1 k²
                    gamma.addcmul_(b_r[:, :, None], w2).mul_(k)  # (… + b_i W2) · k
                else:
                    gamma = k.mul_(-w1 / sigma**2).mul_(a_r[:, :, None])  # −a_i W1 k / σ²
                    gamma.addcmul_(g.reciprocal_().mul_(w2), b_r[:, :, None])  # + b_i W2 / g
                gamma = gamma.view(atoms * n, -1)
                d_rows[pr].addmm_(gamma, cols_plain[pc])
                if column_side:
                    d_cols[pc].addmm_(gamma.T, rows_plain[pr])
        gx_rows = gx_cols = None
        if need_x:
            gx_rows = _positions_grad(d_rows, rows_plain).view(rows, n, dim)
            gx_cols = gx_rows if symmetric else _positions_grad(d_cols, cols_plain).view(cols, n, dim)
        if not need_weights:
            ga_rows = gb_rows = ga_cols = gb_cols = None
        if symmetric:  # the rows and columns are one tensor: its whole gradient goes out once
            return gx_rows, ga_rows, gb_rows, None, None, None, None, None, None, None
        return gx_rows, ga_rows, gb_rows, gx_cols, ga_cols, gb_cols, None, None, None, None


def _tiles(rows: int, cols: int, block: int, symmetric: bool):
    """``(row atoms, column atoms)`` slices of the tiles; only those on and above the diagonal if symmetric."""
    for r0 in range(0, rows, block):
        for c0 in range(r0 if symmetric else 0, cols, block):
            yield slice(r0, min(r0 + block, rows)), slice(c0, min(c0 + block, cols))


def _augment_rows(x: torch.Tensor, shift: float) -> torch.Tensor:
    """``[−2 x_i, |x_i|² + shift, 1]``: against :func:`_augment_cols`, one Gram product gives
    ``‖x_i − x_j‖² + shift`` (no separate pass to form the squared distances)."""
    flat = x.flatten(0, 1)
    sq = flat.square().sum(-1, keepdim=True)
    return torch.cat([-2.0 * flat, sq + shift, torch.ones_like(sq)], dim=1)


def _augment_cols(x: torch.Tensor) -> torch.Tensor:
    """``[x_j, 1, |x_j|²]``, the column side of :func:`_augment_rows`; its first ``k + 1`` columns are the
    ``[x_j, 1]`` that the gradient products need."""
    flat = x.flatten(0, 1)
    sq = flat.square().sum(-1, keepdim=True)
    return torch.cat([flat, torch.ones_like(sq), sq], dim=1)


def _positions_grad(d: torch.Tensor, plain: torch.Tensor) -> torch.Tensor:
    """``x_i d_i[k] − d_i[:k]`` from the accumulated ``d_i = Σ_j 2Γ_ij [x_j, 1]`` and ``plain = [x, 1]``."""
    k = d.shape[1] - 1
    return torch.addcmul(d[:, :k], plain[:, :k], d[:, k:], value=-1.0).neg_()


def _shift(kernel: str, epsilon: float) -> float:
    """What the Gram tiles hold beyond ``u``: ``v = u + ε²`` for Coulomb (its kernel and ``g`` both act on
    it), ``u`` for the Gaussian (``exp(−u/2σ²)``, then ``g = sqrt(u + ε²)``)."""
    return epsilon**2 if kernel == "coulomb" else 0.0


def _kernel_and_distance(
    tile: torch.Tensor, kernel: str, epsilon: float, sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` and ``g = sqrt(u + ε²)`` of a Gram tile (see :func:`_shift`); ``g`` overwrites the tile."""
    if kernel == "coulomb":
        k = torch.rsqrt(tile)
        return k, tile.mul_(k)  # sqrt(v) = v · v^(-1/2): a multiply is cheaper than a second root
    k = torch.mul(tile, -0.5 / sigma**2).exp_()
    return k, tile.add_(epsilon**2).sqrt_()


def _reduce(values: torch.Tensor, w_rows: torch.Tensor, w_cols: torch.Tensor) -> torch.Tensor:
    """``Σ_{i∈A, j∈B} w_i w_j values_ij`` for a tile: ``(ra·n, cb·n) → (ra, cb)``.

    The row weights go first, as a batched matrix-vector product (one read of the tile); the column
    weights then act on a tensor ``n`` times smaller.
    """
    atoms, n = w_rows.shape
    per_col = torch.bmm(w_rows[:, None, :], values.view(atoms, n, -1))  # (ra, 1, cb·n)
    return (per_col.view(atoms, -1, n) * w_cols).sum(-1)


def _reduce_columns(values: torch.Tensor, w_rows: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``Σ_i w_i grad[A(i), B(j)] values_ij`` for each column particle j of a tile: ``(cb, n)``."""
    atoms, n = w_rows.shape
    per_col = torch.bmm(w_rows[:, None, :], values.view(atoms, n, -1))  # (ra, 1, cb·n)
    return (per_col.view(atoms, -1, n) * grad[:, :, None]).sum(0)


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
    block = atoms_per_block(cols, n, x_cols.element_size(), memory_budget_mb, x_cols.device.type)
    return PairSums.apply(x_rows, a_rows, b_rows, x_cols, a_cols, b_cols, kernel, epsilon, sigma, block)


__all__ = ["KERNELS", "atoms_per_block", "pair_sums"]
