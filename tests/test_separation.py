"""AtomSeparation (method.md §2–5) against the naive reference, plus its edge cases."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import naive_atom_loss

from atomgen import AtomSeparation

VARIANTS = [
    (m, k, g)
    for m in ("signed", "repulsive")
    for k in ("coulomb", "gaussian")
    for g in ("sphere", "euclidean")
]


def _randomised(sep: AtomSeparation, seed: int = 0) -> AtomSeparation:
    """Random role-head weights, so charges and importances differ per particle."""
    torch.manual_seed(seed)
    with torch.no_grad():
        sep.role_head.weight.normal_()
        sep.role_head.bias.normal_()
    return sep


def _assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-6) -> None:
    """Relative to the tensor's largest entry; 1e-12 absolute for gradients that are zero analytically."""
    error = float((actual - expected).abs().max())
    assert error <= tol * float(expected.abs().max()) + 1e-12, error


def _compare(
    sep: AtomSeparation, features: torch.Tensor, mask: torch.Tensor | None, groups: torch.Tensor | None = None
) -> None:
    features = features.clone().requires_grad_(True)
    out = sep(features, mask, groups)
    params = [features] + ([sep.role_head.weight] if sep.config.learn_roles else [])
    # Mixing the per-atom energies in makes their gradients part of the comparison too.
    grads = torch.autograd.grad(out.loss + (out.energy * torch.arange(len(out.energy))).sum(), params)
    loss, parts, energy, distance = naive_atom_loss(sep, features, mask, groups)
    ref_grads = torch.autograd.grad(loss + (energy * torch.arange(len(energy))).sum(), params)
    for actual, expected in zip(
        (out.loss, out.separation, out.neutrality, out.participation, out.spacing),
        (loss, *parts),
        strict=True,
    ):
        _assert_close_relative(actual.detach(), expected.detach())
    _assert_close_relative(out.energy.detach(), energy.detach())
    _assert_close_relative(out.atom_distance.detach(), distance.detach())
    for actual, expected in zip(grads, ref_grads, strict=True):
        _assert_close_relative(actual, expected)


@settings(max_examples=40, deadline=None)
@given(
    variant=st.sampled_from(VARIANTS),
    batch=st.integers(2, 6),
    channels=st.integers(1, 5),
    height=st.integers(1, 4),
    width=st.integers(1, 4),
    budget=st.sampled_from([1e-5, 1e-3, 256.0]),
    masked=st.booleans(),
    learn_roles=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_blockwise_matches_naive_on_feature_maps(
    variant, batch, channels, height, width, budget, masked, learn_roles, seed
):
    mode, kernel, geometry = variant
    sep = AtomSeparation(
        dim=channels,
        mode=mode,
        kernel=kernel,
        geometry=geometry,
        learn_roles=learn_roles,
        memory_budget_mb=budget,
    ).double()
    _randomised(sep, seed)
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, channels, height, width, generator=generator, dtype=torch.float64)
    mask = None
    if masked:
        mask = (torch.rand(batch, height * width, generator=generator) > 0.3).double()
        mask[0] = 0.0  # a fully masked atom is excluded from every mean
    _compare(sep, features, mask)


@settings(max_examples=15, deadline=None)
@given(
    variant=st.sampled_from(VARIANTS),
    batch=st.integers(2, 5),
    tokens=st.integers(1, 6),
    dim=st.integers(2, 8),
    seed=st.integers(0, 2**16),
)
def test_blockwise_matches_naive_on_tokens_with_projection(variant, batch, tokens, dim, seed):
    mode, kernel, geometry = variant
    sep = AtomSeparation(
        dim=dim, mode=mode, kernel=kernel, geometry=geometry, proj_dim=max(1, dim // 2), memory_budget_mb=1e-4
    ).double()
    _randomised(sep, seed)
    features = torch.randn(
        batch, tokens, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    _compare(sep, features, None)


def test_patches_and_pooling_set_the_particle_grid():
    sep = AtomSeparation(dim=3, patch_size=2, max_grid=4)
    out = sep(torch.randn(2, 3, 16, 16))  # pooled to 4×4, then 2×2 patches of width 3·4
    assert out.grid == (2, 2)
    assert out.importance.shape == (2, 4)
    assert sep.role_head.in_features == 12
    particles, _, _ = sep.tokenize(torch.arange(2 * 3 * 4 * 4.0).view(2, 3, 4, 4))
    # particle 0 is the top-left 2×2 patch of every channel
    assert torch.equal(particles[0, 0], torch.tensor([0.0, 1, 4, 5, 16, 17, 20, 21, 32, 33, 36, 37]))
    assert AtomSeparation(dim=3, max_grid=None)(torch.randn(2, 3, 16, 16)).grid == (16, 16)


def test_long_token_sequences_are_pooled_like_feature_maps():
    """More than max_grid² tokens: a square number is an image's patches, pooled in 2-D; any other
    number is pooled along the sequence. A mask keeps every token."""
    tokens = torch.arange(2 * 100 * 8, dtype=torch.float32).view(2, 100, 8)  # 10 × 10 patches
    separation = AtomSeparation(dim=8)
    particles, _, grid = separation.tokenize(tokens)
    assert grid == (64,)
    grid_2d = tokens.transpose(1, 2).reshape(2, 8, 10, 10)
    torch.testing.assert_close(particles, F.adaptive_avg_pool2d(grid_2d, 8).flatten(2).transpose(1, 2))
    assert separation.tokenize(tokens[:, :70])[2] == (64,)
    assert separation.tokenize(tokens, mask=torch.ones(2, 100))[2] == (100,)
    assert AtomSeparation(dim=8, max_grid=None).tokenize(tokens)[2] == (100,)


def test_vectors_are_one_particle_each():
    out = AtomSeparation(dim=5)(torch.randn(3, 5))
    assert out.grid == (1,)
    assert out.roles.shape == (3, 1, 3)
    assert out.atom_distance.shape == (3, 3)


def test_roles_start_near_uniform_and_define_charge_and_importance():
    sep = AtomSeparation(dim=16)
    out = sep(torch.randn(4, 16, 3, 3))
    assert torch.allclose(out.roles, torch.full_like(out.roles, 1 / 3), atol=0.02)
    assert torch.allclose(out.charge, out.roles[..., 1] - out.roles[..., 0])
    assert torch.allclose(out.importance, 1 - out.roles[..., 2])
    assert out.charge.abs().max() > 0  # symmetry broken: q ≡ 0 would stall the signed energy


def test_fixed_roles_make_every_particle_a_proton():
    sep = AtomSeparation(dim=4, learn_roles=False)
    out = sep(torch.randn(3, 4, 2, 2))
    assert torch.equal(out.charge, torch.ones(3, 4))
    assert torch.equal(out.importance, torch.ones(3, 4))
    assert float(out.neutrality) == 0.0
    assert not any(p.requires_grad for p in sep.parameters())


def test_loss_trains_the_role_head():
    sep = AtomSeparation(dim=4)
    sep(torch.randn(4, 4, 3, 3)).loss.backward()
    assert sep.role_head.weight.grad is not None and sep.role_head.weight.grad.abs().sum() > 0


def test_projection_is_a_fixed_seeded_buffer():
    a, b = AtomSeparation(dim=16, proj_dim=4, proj_seed=3), AtomSeparation(dim=16, proj_dim=4, proj_seed=3)
    assert torch.equal(a.projection, b.projection)
    assert "projection" in dict(a.named_buffers())
    assert "projection" not in dict(a.named_parameters())
    assert not torch.equal(a.projection, AtomSeparation(dim=16, proj_dim=4, proj_seed=4).projection)


def test_single_atom_gives_zero_loss_and_one_warning(caplog):
    sep = AtomSeparation(dim=4)
    features = torch.randn(1, 4, 2, 2, requires_grad=True)
    with caplog.at_level(logging.WARNING, logger="atomgen.separation"):
        out = sep(features)
        sep(features)
    assert float(out.separation) == 0.0
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(features.grad).all()
    assert sum("nothing to separate" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize(("mode", "kernel", "geometry"), VARIANTS)
def test_identical_samples_have_finite_values_and_gradients(mode, kernel, geometry):
    sep = AtomSeparation(dim=4, mode=mode, kernel=kernel, geometry=geometry)
    features = torch.randn(1, 4, 2, 2).repeat(3, 1, 1, 1).requires_grad_(True)
    out = sep(features)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(out.energy).all()
    assert torch.isfinite(features.grad).all()
    assert torch.isfinite(sep.role_head.weight.grad).all()


def test_fully_masked_atom_is_excluded():
    sep = _randomised(AtomSeparation(dim=4).double())
    features = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    mask = torch.ones(3, 4, dtype=torch.float64)
    mask[2] = 0
    full = sep(features, mask)
    two = sep(features[:2])
    assert torch.allclose(full.separation, two.separation)
    assert torch.allclose(full.energy[:2], two.energy)


@pytest.mark.parametrize(("mode", "kernel", "geometry"), VARIANTS)
def test_groups_match_the_naive_reference_blockwise(mode, kernel, geometry):
    """Only pairs within a group count; exact against the reference, with tiles of one atom."""
    sep = AtomSeparation(dim=3, mode=mode, kernel=kernel, geometry=geometry, memory_budget_mb=1e-4)
    sep = _randomised(sep.double())
    features = torch.randn(7, 3, 2, 2, dtype=torch.float64)
    mask = (torch.rand(7, 4) > 0.2).double()
    _compare(sep, features, mask, torch.tensor([2, 0, 2, 1, 0, 2, 5]))


def test_each_group_is_separated_as_if_it_were_alone():
    sep = _randomised(AtomSeparation(dim=4).double())
    features = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    groups = torch.tensor([1, 0, 1, 0, 0, 1])
    out = sep(features, groups=groups)
    (grad,) = torch.autograd.grad(out.energy.sum(), features)
    for group in (0, 1):
        members = (groups == group).nonzero().flatten()
        alone = features.detach()[members].requires_grad_(True)
        part = sep(alone)
        (part_grad,) = torch.autograd.grad(part.energy.sum(), alone)
        torch.testing.assert_close(out.energy[members], part.energy, rtol=1e-12, atol=0)
        torch.testing.assert_close(grad[members], part_grad, rtol=1e-10, atol=1e-14)


def test_an_atom_alone_in_its_group_has_no_energy():
    out = AtomSeparation(dim=4)(torch.randn(3, 4, 2, 2), groups=torch.tensor([0, 0, 7]))
    energy = out.energy.detach()
    assert float(energy[2]) == 0.0 and float(energy[0]) > 0.0


def test_bad_groups_are_refused():
    sep = AtomSeparation(dim=4)
    with pytest.raises(ValueError, match=r"groups must have shape \(B,\) = \(3,\), got \(2,\)"):
        sep(torch.randn(3, 4, 2, 2), groups=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="groups must be an integer tensor"):
        sep(torch.randn(3, 4, 2, 2), groups=torch.tensor([0.0, 1.0, 1.0]))


def test_half_precision_input_is_computed_in_float32():
    out = AtomSeparation(dim=4)(torch.randn(3, 4, 2, 2).to(torch.bfloat16))
    assert out.loss.dtype == torch.float32


def test_repelling_lowers_energy_when_samples_spread():
    """Sanity of direction: with fixed roles, spread-out samples have lower Coulomb energy."""
    sep = AtomSeparation(dim=8, learn_roles=False, mode="repulsive")
    base = torch.randn(1, 8, 2, 2)
    close = base + 0.01 * torch.randn(6, 8, 2, 2)
    spread = torch.randn(6, 8, 2, 2)
    assert sep(close).separation > sep(spread).separation


def test_bad_inputs_name_what_was_wrong():
    sep = AtomSeparation(dim=8)
    with pytest.raises(ValueError, match=r"dim=8\) received features of width 4"):
        sep(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="shape"):
        sep(torch.randn(2, 8, 3, 3, 1))
    with pytest.raises(FloatingPointError, match="non-finite"):
        sep(torch.full((2, 8, 3, 3), float("nan")))
    with pytest.raises(ValueError, match="mask must have shape"):
        sep(torch.randn(2, 8, 3, 3), torch.ones(2, 5))
    with pytest.raises(ValueError, match="patch_size=2 must divide"):
        AtomSeparation(dim=8, patch_size=2)(torch.randn(2, 8, 3, 3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "attractive"}, "mode must be one of"),
        ({"kernel": "laplace"}, "kernel must be one of"),
        ({"geometry": "torus"}, "geometry must be one of"),
        ({"epsilon": 0.0}, "epsilon must be > 0"),
        ({"proj_dim": 8}, "proj_dim must lie in"),
        ({"max_grid": 0}, "max_grid must be"),
        ({"commitment_weight": -1.0}, "commitment_weight must be ≥ 0"),
        ({"role_input": "position"}, "role_input must be one of"),
    ],
)
def test_bad_options_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AtomSeparation(dim=8, **kwargs)


def test_save_and_load_round_trip(tmp_path):
    sep = _randomised(AtomSeparation(dim=6, proj_dim=3, mode="repulsive", kernel="gaussian", patch_size=1))
    sep.save_pretrained(tmp_path / "sep")
    loaded = AtomSeparation.from_pretrained(tmp_path / "sep")
    assert loaded.config.mode == "repulsive" and loaded.config.proj_dim == 3
    features = torch.randn(3, 6, 2, 2)
    assert torch.equal(sep(features).loss, loaded(features).loss)


def test_commitment_is_the_normalised_role_entropy():
    features = torch.randn(4, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    plain, committed = AtomSeparation(dim=8), AtomSeparation(dim=8, commitment_weight=0.5)
    committed.load_state_dict(plain.state_dict())  # the same head
    out, out_committed = plain(features), committed(features)
    assert out.commitment.item() == pytest.approx(1.0, abs=1e-4)  # roles start (almost) uniform
    torch.testing.assert_close(out_committed.loss, out.loss + 0.5 * out.commitment)
    with torch.no_grad():  # a head that makes every particle a proton: one pure role, no entropy
        committed.role_head.bias.copy_(torch.tensor([-30.0, 30.0, -30.0]))
    assert committed(features).commitment.item() == pytest.approx(0.0, abs=1e-6)
    assert AtomSeparation(dim=8, learn_roles=False)(features).commitment.item() == 0.0


def test_commitment_makes_the_head_choose_the_distinct_particles():
    """Every atom's particles alike but one: committed roles make the others neutrons, and the distinct
    particle carries the atom's importance."""
    torch.manual_seed(0)
    features = torch.randn(1, 1, 8) + 0.05 * torch.randn(8, 16, 8)
    features[:, 0] = 3 * torch.randn(8, 8)
    separation = AtomSeparation(dim=8, commitment_weight=0.5)
    optimizer = torch.optim.Adam(separation.parameters(), lr=0.05)
    for _ in range(300):
        out = separation(features)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    importance = out.importance.detach()
    assert out.commitment.item() < 0.05
    assert importance[:, 1:].max() < 0.05 and importance[:, 0].mean() > 0.8


def test_deviation_roles_see_only_what_differs_from_the_batch():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(5, 8, 3, 3, generator=generator)
    plain = _randomised(AtomSeparation(dim=8))
    deviation = AtomSeparation(dim=8, role_input="deviation")
    deviation.load_state_dict(plain.state_dict())  # the same head, another input
    # A pattern shared by every sample at each position (say, where the digit usually is) moves the
    # roles the plain head gives, and leaves those of the deviation head as they were.
    shared = features + 5 * torch.randn(1, 8, 3, 3, generator=generator)
    torch.testing.assert_close(deviation(shared).roles, deviation(features).roles)
    assert not torch.allclose(plain(shared).roles, plain(features).roles, atol=1e-3)
    # Masked particles do not enter the batch's mean.
    tokens, mask = torch.randn(4, 6, 8, generator=generator), torch.ones(4, 6)
    mask[0, 2] = 0
    changed = tokens.clone()
    changed[0, 2] += 100.0
    torch.testing.assert_close(
        deviation(changed, mask=mask).roles[1:], deviation(tokens, mask=mask).roles[1:]
    )
