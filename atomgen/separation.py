"""Atom separation, after atom modeling (Tuan, Chiu & Wang, arXiv 2210.03728): method.md §2–6.

Every sample of a batch is an atom, each of its sub-components (a position of a feature map, a token) a
particle with a learned role (electron, proton, neutron), and a softened Coulomb energy between the
particles of *different* atoms is minimised, pushing samples apart in latent space. This is atomgen's own
formulation, not an exact reproduction of the paper.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from . import distributed
from .energy import KERNELS, pair_sums

logger = logging.getLogger(__name__)

GEOMETRIES = ("sphere", "euclidean")
MODES = ("signed", "repulsive")
ROLE_INPUTS = ("particle", "deviation")


@dataclass
class AtomOutput:
    """What one call of :class:`AtomSeparation` returns (shapes for a batch of B atoms of n particles).

    Attributes:
        loss: ``L_atom = L_sep + μ_n C_n + μ_p C_p + μ_s C_s + μ_c C_c`` (scalar; under data parallelism this
            process's share, so that the shares sum to the loss of the whole batch).
        separation: ``L_sep``, the mean interatomic energy over pairs of different atoms.
        neutrality, participation, spacing: the soft constraints ``C_n``, ``C_p``, ``C_s`` (unweighted).
        commitment: ``C_c``, the mean entropy of the particles' roles over ``log 3`` (unweighted; 0
            without learned roles): 1 for the uniform mix, 0 when every particle is purely an
            electron, a proton or a neutron.
        energy: per-atom energy ``e_A = mean_{B≠A} E_AB``, shape ``(B,)``.
        importance: ``s = 1 − r^neutron``, the per-particle attribution, ``(B, n)``.
        charge: ``q = r^proton − r^electron``, ``(B, n)``.
        roles: role probabilities (electron, proton, neutron), ``(B, n, 3)``.
        atom_distance: importance-weighted mean particle distance ``d̄_AB``, ``(B, B_all)``.
        grid: the particle grid, ``(H', W')`` for feature maps and ``(n,)`` for tokens.
    """

    loss: torch.Tensor
    separation: torch.Tensor
    neutrality: torch.Tensor
    participation: torch.Tensor
    spacing: torch.Tensor
    commitment: torch.Tensor
    energy: torch.Tensor
    importance: torch.Tensor
    charge: torch.Tensor
    roles: torch.Tensor
    atom_distance: torch.Tensor
    grid: tuple[int, ...]


class AtomSeparation(ModelMixin, ConfigMixin):
    r"""Separation loss between the samples of a batch, from site activations (method.md §2–5).

    Args:
        dim: feature width at the site — channels ``C`` of a ``(B, C, H, W)`` map, or ``d`` of
            ``(B, n, d)`` tokens and ``(B, d)`` vectors.
        patch_size: side ``p`` of the non-overlapping patches that become particles (feature maps only).
        max_grid: feature maps larger than ``max_grid × max_grid`` are average-pooled down to it, and
            token sequences longer than ``max_grid²`` (without a mask) to ``max_grid²`` tokens;
            ``None`` keeps every position.
        proj_dim: width ``k < d·p²`` of a fixed, seeded Gaussian random projection; ``None`` for none.
        proj_seed: seed of that projection.
        geometry: ``"sphere"`` (unit-normalised particles) or ``"euclidean"`` (divided by the batch's
            mean norm, without gradient).
        kernel: ``"gaussian"`` (``exp(−u/2σ²)``) or ``"coulomb"`` (Plummer-softened, ``(u + ε²)^-½``).
        mode: ``"repulsive"`` (pair weight ``s_i s_j``) or ``"signed"`` (``q_i q_j``). The defaults
            (Gaussian, repulsive) won the digits sweep (``bench/sweep.py``; results/README.md): in the
            signed mode the neutrality constraint pulls every charge to 0, where the energy vanishes, and
            the model trains like the baseline.
        epsilon: softening ``ε`` of the Coulomb kernel and of the atom distance.
        sigma: width ``σ`` of the Gaussian kernel.
        temperature: softmax temperature ``τ`` of the role head.
        learn_roles: if ``False`` every particle is a proton (``q = s = 1``): no parameters are used.
        role_input: what the role head reads: ``"particle"`` (default, method.md §3) or ``"deviation"``,
            the particle minus the mean of the batch's particles at the same index (this process's
            atoms, masked). Reading the particle, the head can learn a fixed set of positions, the same
            for every sample (it did on mnist5k with ``commitment_weight`` 0.05); reading the deviation
            it sees only what this sample has there that the others do not.
        neutrality_weight, participation_weight, spacing_weight: ``μ_n``, ``μ_p``, ``μ_s``.
        commitment_weight: ``μ_c`` of the commitment term ``C_c`` (the mean normalised entropy of the
            roles), which asks every particle to take one role rather than a mix. 0 (default) leaves
            it out: the role head then sits near the uniform mix, the participation constraint holds
            every importance at about ``κ``, and the importances tie gradient × activation as an
            attribution (bench/attribution.py; results/README.md). Keep it on the scale of the
            separation term (about 0.01 at the start of training): on mnist5k 0.05 committed the roles,
            but to a fixed half of the positions, the same for every sample; 1.0 outweighed the
            participation constraint and turned every particle into a neutron within a few hundred
            steps, a state the saturated softmax does not leave. In the signed mode nothing favours
            neutrons, so committed roles make every particle charged (``s ≡ 1``): no ranking at all.
        min_participation: ``κ``, the least mean importance an atom should keep.
        min_distance: ``δ``, the least atom distance the spacing constraint asks for.
        memory_budget_mb: memory for one block of the pair computation (method.md §5).

    Example:
        >>> import torch, atomgen
        >>> sep = atomgen.AtomSeparation(dim=8)
        >>> out = sep(torch.randn(4, 8, 6, 6))
        >>> out.loss.shape, out.importance.shape, out.grid
        (torch.Size([]), torch.Size([4, 36]), (6, 6))
    """

    @register_to_config
    def __init__(
        self,
        dim: int,
        patch_size: int = 1,
        max_grid: int | None = 8,
        proj_dim: int | None = None,
        proj_seed: int = 0,
        geometry: str = "sphere",
        kernel: str = "gaussian",
        mode: str = "repulsive",
        epsilon: float = 0.1,
        sigma: float = 0.5,
        temperature: float = 1.0,
        learn_roles: bool = True,
        role_input: str = "particle",
        neutrality_weight: float = 1.0,
        participation_weight: float = 1.0,
        spacing_weight: float = 1.0,
        commitment_weight: float = 0.0,
        min_participation: float = 0.5,
        min_distance: float = 0.5,
        memory_budget_mb: float = 256.0,
    ):
        super().__init__()
        _check_choice("geometry", geometry, GEOMETRIES)
        _check_choice("kernel", kernel, KERNELS)
        _check_choice("mode", mode, MODES)
        _check_choice("role_input", role_input, ROLE_INPUTS)
        for name, value in (("dim", dim), ("patch_size", patch_size)):
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if max_grid is not None and max_grid < 1:
            raise ValueError(f"max_grid must be a positive integer or None, got {max_grid}")
        for name, value in (("epsilon", epsilon), ("sigma", sigma), ("temperature", temperature)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if commitment_weight < 0:
            raise ValueError(f"commitment_weight must be ≥ 0, got {commitment_weight}")
        particle_dim = dim * patch_size**2
        if proj_dim is not None and not 0 < proj_dim < particle_dim:
            raise ValueError(
                f"proj_dim must lie in [1, {particle_dim - 1}] (below the particle width dim·patch_size²"
                f" = {particle_dim}), or be None for no projection; got {proj_dim}"
            )
        # §3: LayerNorm without affine, then linear d → 3. Zero bias and tiny weights: roles start
        # (almost) uniform; exactly uniform would leave q ≡ 0, a stationary point of the signed energy.
        self.role_norm = nn.LayerNorm(particle_dim, elementwise_affine=False)
        self.role_head = nn.Linear(particle_dim, 3)
        nn.init.normal_(self.role_head.weight, std=1e-2 / particle_dim**0.5)
        nn.init.zeros_(self.role_head.bias)
        self.role_head.requires_grad_(learn_roles)
        if proj_dim is not None:  # §2.3: fixed, not learned, or the loss could be met by the projection
            seeded = torch.Generator().manual_seed(proj_seed)
            projection = torch.randn(particle_dim, proj_dim, generator=seeded) / proj_dim**0.5
            self.register_buffer("projection", projection)
        else:
            self.projection = None
        self._warned_single_atom = False

    def tokenize(
        self, features: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """Activations → particles ``(B, n, d·p²)``, mask ``(B, n)`` and particle grid (method.md §2.1–2)."""
        cfg = self.config
        if features.ndim == 4:
            batch, channels, height, width = features.shape
            self._check_width(channels, features)
            if cfg.max_grid is not None and (height > cfg.max_grid or width > cfg.max_grid):
                height, width = min(height, cfg.max_grid), min(width, cfg.max_grid)
                features = F.adaptive_avg_pool2d(features, (height, width))
            p = cfg.patch_size
            if height % p or width % p:
                raise ValueError(
                    f"patch_size={p} must divide the (pooled) feature map {height}×{width}; choose a "
                    f"divisor or change max_grid"
                )
            grid = (height // p, width // p)
            # (B, C, H, W) → (B, H/p · W/p, C·p²): each non-overlapping patch is one particle.
            particles = F.unfold(features, kernel_size=p, stride=p).transpose(1, 2)
        elif features.ndim == 3:
            self._check_width(features.shape[-1], features)
            # a mask addresses the tokens one by one, so masked sequences keep every token
            particles = _pool_tokens(features, cfg.max_grid if mask is None else None)
            grid = (particles.shape[1],)
        elif features.ndim == 2:
            self._check_width(features.shape[-1], features)
            particles, grid = features[:, None, :], (1,)
        else:
            raise ValueError(
                f"features must have shape (B, C, H, W), (B, n, d) or (B, d); got {tuple(features.shape)}"
            )
        batch, n = particles.shape[:2]
        if mask is None:
            mask = particles.new_ones(batch, n)
        else:
            mask = mask.reshape(batch, -1) if mask.ndim == 1 and n == 1 else mask
            if tuple(mask.shape) != (batch, n):
                raise ValueError(f"mask must have shape (B, n) = {(batch, n)}, got {tuple(mask.shape)}")
            mask = mask.to(particles.dtype)
        return particles, mask, grid

    def forward(
        self, features: torch.Tensor, mask: torch.Tensor | None = None, groups: torch.Tensor | None = None
    ) -> AtomOutput:
        """Separation loss of a batch of site activations; see :class:`AtomOutput`.

        Args:
            features: ``(B, C, H, W)``, ``(B, n, d)`` or ``(B, d)`` activations.
            mask: optional ``(B, n)`` particle mask (1 keeps a particle, 0 drops it).
            groups: optional ``(B,)`` integer group of each atom (a class label, a prompt's index): only
                atoms of the same group interact (method.md §4). ``None``: the batch is one group. An
                atom alone in its group has no pairs and energy 0.
        """
        # Notation (method.md §1 and §4), code name → symbol; "_all" marks the atoms of every process
        # (the all-gather of §6), shape (B_all, ...), against this process's B atoms:
        #   particles → h (B, n, d·p²)             positions → x (B, n, k)
        #   mask → m (B, n)                         roles → r = (r^e, r^p, r^n) (B, n, 3)
        #   charge → q = r^p − r^e (B, n)           importance → s = 1 − r^n (B, n)
        #   weight → w, the pair-weight factor: q ("signed", w_ij = q_i q_j) or s ("repulsive", s_i s_j)
        #   masked_weight → m·w, masked_importance → m·s (B, n)
        #   count → Σ_i m_i, mass → Σ_i m_i s_i (B,)
        #   energy_sum → Σ_ij m m w k(u), distance_sum → Σ_ij m m s s sqrt(u + ε²) (B, B_all)
        #   pair_energy → E_AB, atom_distance → d̄_AB (B, B_all); pairs → [A ≠ B, both non-empty]
        #   separation → L_sep, energy → e_A = mean_{B≠A} E_AB (B,)
        #   neutrality → C_n, participation → C_p, spacing → C_s, commitment → C_c
        #   cfg.neutrality_weight, cfg.participation_weight, cfg.spacing_weight, cfg.commitment_weight
        #     → μ_n, μ_p, μ_s, μ_c
        #   cfg.min_participation → κ, cfg.min_distance → δ, cfg.epsilon → ε, cfg.sigma → σ
        #   loss → L_atom = L_sep + μ_n C_n + μ_p C_p + μ_s C_s + μ_c C_c
        cfg = self.config
        # The sum is a cheap first check; only a non-finite sum (overflow included) needs the full one.
        if not torch.isfinite(features.sum()) and not torch.isfinite(features).all():
            raise FloatingPointError(
                "AtomSeparation received non-finite activations (NaN or inf); check the model's "
                "activations and learning rate"
            )
        # The energy needs float32 at least: half precision loses the small distances it acts on.
        dtype = torch.promote_types(features.dtype, torch.float32)
        particles, mask, grid = self.tokenize(features.to(dtype), mask)
        roles = self._roles(particles, mask)
        r_electron, r_proton, r_neutron = roles.unbind(-1)
        charge = r_proton - r_electron
        importance = 1.0 - r_neutron
        positions = self._positions(particles, mask)

        weight = charge if cfg.mode == "signed" else importance
        masked_weight, masked_importance = mask * weight, mask * importance
        # Everything the pair sums need from the other atoms, gathered across processes with gradient.
        positions_all = distributed.gather(positions)
        masked_weight_all = distributed.gather(masked_weight)
        masked_importance_all = distributed.gather(masked_importance)
        mask_all = distributed.gather(mask)
        batch, batch_all = positions.shape[0], positions_all.shape[0]
        offset = distributed.row_offset(batch)
        energy_sum, distance_sum = pair_sums(
            positions,
            masked_weight,
            masked_importance,
            positions_all,
            masked_weight_all,
            masked_importance_all,
            kernel=cfg.kernel,
            epsilon=cfg.epsilon,
            sigma=cfg.sigma,
            memory_budget_mb=cfg.memory_budget_mb,
        )
        # §4: E_AB = Σ m m w k / Σ m m, and d̄_AB = Σ m m s s g / Σ m m s s, over pairs A ≠ B.
        count, count_all = mask.sum(1), mask_all.sum(1)
        mass, mass_all = masked_importance.sum(1), masked_importance_all.sum(1)
        pair_energy = energy_sum / (count[:, None] * count_all[None, :]).clamp_min(1e-12)
        atom_distance = distance_sum / (mass[:, None] * mass_all[None, :]).clamp_min(1e-12)
        valid = (count > 0)[:, None] & (count_all > 0)[None, :]
        if groups is not None:  # pairs within a group only; the blockwise sums stay exact (§5)
            groups = _check_groups(groups, batch).to(valid.device)
            valid &= groups[:, None] == distributed.gather_constant(groups)[None, :]
        rows = torch.arange(batch, device=valid.device)
        valid[rows, rows + offset] = False  # an atom does not repel itself
        pairs = valid.to(dtype)
        num_pairs = distributed.total(pairs.sum())
        if batch_all < 2 and not self._warned_single_atom:
            logger.warning("AtomSeparation got a batch of one atom: nothing to separate, the loss is 0")
            self._warned_single_atom = True
        separation = (pair_energy * pairs).sum() / num_pairs.clamp_min(1)
        energy = (pair_energy * pairs).sum(1) / pairs.sum(1).clamp_min(1)
        spacing = (F.relu(cfg.min_distance - atom_distance).square() * pairs).sum() / num_pairs.clamp_min(1)

        atoms = (count > 0).to(dtype)
        num_atoms = distributed.total(atoms.sum()).clamp_min(1)
        fraction = (mass / count.clamp_min(1e-12)) * atoms  # Σ m s / Σ m, per atom
        participation = (F.relu(cfg.min_participation - fraction).square() * atoms).sum() / num_atoms
        if cfg.mode == "signed" and cfg.learn_roles:
            net_charge = (mask * charge).sum(1) / count.clamp_min(1e-12)
            neutrality = (net_charge.square() * atoms).sum() / num_atoms
        else:  # with fixed roles (or no charges) neutrality is a constant
            neutrality = separation.new_zeros(())
        if cfg.learn_roles:  # mean H(r_i) / log 3 over the particles of every process
            entropy = -(roles * roles.clamp_min(1e-12).log()).sum(-1) / math.log(3.0)
            commitment = (entropy * mask).sum() / distributed.total(mask.sum()).clamp_min(1)
        else:
            commitment = separation.new_zeros(())
        loss = (
            separation
            + cfg.neutrality_weight * neutrality
            + cfg.participation_weight * participation
            + cfg.spacing_weight * spacing
            + cfg.commitment_weight * commitment
        )
        return AtomOutput(
            loss=loss,
            separation=separation,
            neutrality=neutrality,
            participation=participation,
            spacing=spacing,
            commitment=commitment,
            energy=energy,
            importance=importance,
            charge=charge,
            roles=roles,
            atom_distance=atom_distance,
            grid=grid,
        )

    def _roles(self, particles: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Role probabilities ``softmax(g(h) / τ)`` (method.md §3); all protons without learned roles."""
        if not self.config.learn_roles:
            proton = particles.new_tensor([0.0, 1.0, 0.0])
            return proton.expand(*particles.shape[:2], 3)
        if self.config.role_input == "deviation":  # the batch's mean particle at each index, masked
            weights = mask[..., None]
            mean = (particles * weights).sum(0, keepdim=True) / weights.sum(0, keepdim=True).clamp_min(1)
            particles = particles - mean
        logits = self.role_head(self.role_norm(particles).to(self.role_head.weight.dtype))
        return torch.softmax(logits.to(particles.dtype) / self.config.temperature, dim=-1)

    def _positions(self, particles: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Particle positions for the distances: projection, then geometry (method.md §2.3–4)."""
        z = particles if self.projection is None else particles @ self.projection.to(particles.dtype)
        norms = z.norm(dim=-1)
        if self.config.geometry == "sphere":
            return z / norms.clamp_min(1e-12)[..., None]
        # Euclidean: divide by ρ, the batch's mean particle norm, without gradient (scale cannot cheat).
        with torch.no_grad():
            norm_sum, count = distributed.total(torch.stack([(norms * mask).sum(), mask.sum()])).unbind()
            mean_norm = norm_sum / count.clamp_min(1)
            rho = torch.where(count > 0, mean_norm, 1.0).clamp_min(1e-12)  # all masked: any scale
        return z / rho

    def _check_width(self, width: int, features: torch.Tensor) -> None:
        if width != self.config.dim:
            raise ValueError(
                f"AtomSeparation(dim={self.config.dim}) received features of width {width} "
                f"(shape {tuple(features.shape)}); build it with dim={width}"
            )


def _check_groups(groups: torch.Tensor, batch: int) -> torch.Tensor:
    if not isinstance(groups, torch.Tensor) or groups.dtype.is_floating_point or groups.is_complex():
        raise TypeError(f"groups must be an integer tensor of shape (B,), got {groups!r}")
    if tuple(groups.shape) != (batch,):
        raise ValueError(f"groups must have shape (B,) = ({batch},), got {tuple(groups.shape)}")
    return groups


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _pool_tokens(tokens: torch.Tensor, max_grid: int | None) -> torch.Tensor:
    """``(B, n, d)`` tokens average-pooled to at most ``max_grid²``, as feature maps are pooled to
    ``max_grid × max_grid``: a square number of tokens is taken as an image's patches in raster order
    (transformer denoisers) and pooled in 2-D; any other number is pooled along the sequence."""
    batch, n, width = tokens.shape
    if max_grid is None or n <= max_grid**2:
        return tokens
    side = math.isqrt(n)
    if side * side == n:
        grid = tokens.transpose(1, 2).reshape(batch, width, side, side)
        return F.adaptive_avg_pool2d(grid, (max_grid, max_grid)).flatten(2).transpose(1, 2)
    return F.adaptive_avg_pool1d(tokens.transpose(1, 2), max_grid**2).transpose(1, 2)
