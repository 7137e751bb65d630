"""Attribution faithfulness (deletion and insertion curves) and the saliency baselines, on batches built
so that an attribution is, or is not, faithful."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from PIL import Image

import atomgen
import atomgen.eval.attribution
from atomgen.eval import (
    ATTRIBUTION_METHODS,
    attribution_faithfulness,
    attribution_maps,
    compare_attributions,
    particle_attributions,
    save_attribution_grid,
)

ATOMS, INFORMATIVE, SHARED, DIM = 6, 4, 12, 8
FRACTIONS = [0.0, 0.25, 0.5, 0.75, 1.0]


def _batch() -> torch.Tensor:
    """Each atom: 4 particles of its own (flag channel 0 = +3) and 12 copies of a common one (flag −3)."""
    generator = torch.Generator().manual_seed(0)
    features = torch.empty(ATOMS, INFORMATIVE + SHARED, DIM)
    features[:, :INFORMATIVE, 0] = 3.0
    features[:, :INFORMATIVE, 1:] = 2 * torch.randn(ATOMS, INFORMATIVE, DIM - 1, generator=generator)
    features[:, INFORMATIVE:, 0] = -3.0
    common = torch.randn(DIM - 1, generator=generator)
    features[:, INFORMATIVE:, 1:] = common + 0.05 * torch.randn(ATOMS, SHARED, DIM - 1, generator=generator)
    return features[:, torch.randperm(INFORMATIVE + SHARED, generator=generator)]


def _separation(neutron_weight: float) -> atomgen.AtomSeparation:
    """Role head reading the flag: neutron logit = neutron_weight · (normalised channel 0)."""
    separation = atomgen.AtomSeparation(dim=DIM)
    with torch.no_grad():
        separation.role_head.weight.zero_()
        separation.role_head.bias.zero_()
        separation.role_head.weight[2, 0] = neutron_weight
    return separation


def test_faithful_importance_beats_random():
    separation = _separation(-6.0)  # the atom's own particles are important, the common ones neutrons
    result = attribution_faithfulness(separation, _batch(), fractions=FRACTIONS, num_random=2)
    assert result.drop_importance[0] == pytest.approx(0.0, abs=1e-12)
    assert result.drop_importance[-1] == pytest.approx(result.drop_random[-1])  # everything deleted
    assert result.gain > 0.3 and result.auc_importance > result.auc_random
    assert result.gain == pytest.approx(result.auc_importance - result.auc_random)
    # Insertion is scored in the distinct-particle test below. Here it is no better than random: a few
    # common particles among mean particles already restore d̄ (and overshoot it), a mixture off the data.
    assert result.recovery_importance[-1] == pytest.approx(result.drop_importance[-1])
    assert result.method == "importance" and result.reference == "mean particle"


def test_inverted_importance_loses_to_random():
    result = attribution_faithfulness(_separation(6.0), _batch(), fractions=FRACTIONS, num_random=2)
    assert result.gain < 0


def test_feature_maps_with_patches_and_pooling():
    separation = atomgen.AtomSeparation(dim=4, patch_size=2, max_grid=4)
    features = torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    result = attribution_faithfulness(separation, features, fractions=[0.0, 0.5, 1.0], num_random=2)
    assert len(result.drop_importance) == 3 and result.drop_importance[0] == pytest.approx(0.0, abs=1e-12)


def test_errors():
    separation, features = atomgen.AtomSeparation(dim=DIM), torch.randn(3, 5, DIM)
    with pytest.raises(ValueError, match="at least 2 atoms"):
        attribution_faithfulness(separation, torch.randn(1, 5, DIM))
    with pytest.raises(ValueError, match="at least 2 atoms"):
        particle_attributions(separation, torch.randn(1, 5, DIM), "feature_norm")
    with pytest.raises(ValueError, match="fractions"):
        attribution_faithfulness(separation, features, fractions=[0.5, 2.0])
    with pytest.raises(ValueError, match="method must be one of"):
        particle_attributions(separation, features, "saliency")
    with pytest.raises(ValueError, match="method must be one of"):
        compare_attributions(separation, features, methods=["importance", "gradcam"])
    with pytest.raises(ValueError, match="either method or scores"):
        attribution_faithfulness(separation, features, method="random", scores=torch.rand(3, 5))
    with pytest.raises(ValueError, match=r"shape \(B, n\) = \(3, 5\).*got \(3, 4\)"):
        attribution_faithfulness(separation, features, scores=torch.rand(3, 4))
    with pytest.raises(ValueError, match="finite"):
        attribution_faithfulness(separation, features, scores=torch.full((3, 5), math.nan))
    with pytest.raises(ValueError, match="steps"):
        particle_attributions(separation, features, "integrated_gradients", steps=0)
    with pytest.raises(ValueError, match="steps"):
        attribution_faithfulness(separation, features, method="integrated_gradients", steps=0)
    with pytest.raises(ValueError, match="num_random"):
        attribution_faithfulness(separation, features, num_random=0)
    with pytest.raises(ValueError, match="weighting must be one of"):
        compare_attributions(separation, features, weighting="importance")


def test_maps_and_picture(tmp_path):
    separation = atomgen.AtomSeparation(dim=4)
    out = separation(torch.randn(5, 4, 4, 4))
    maps = attribution_maps(out.importance, out.grid, (8, 8))
    assert maps.shape == (5, 1, 8, 8) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    path = save_attribution_grid(torch.rand(5, 1, 8, 8), out.importance, out.grid, tmp_path / "a.png", nrow=5)
    with Image.open(path) as image:
        assert image.size == (10 * 64 + 11 * 2, 64 + 2 * 2)  # image|overlay pairs, enlarged to 64 px


# --- baselines and insertion curves ------------------------------------------------------------------


def _distinct_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Each atom: 7 near copies of one common particle (flag −3) and one particle of its own (flag +3),
    far from the others and of larger norm, at a random position; returns it and that position (B,)."""
    generator = torch.Generator().manual_seed(0)
    n = 8
    features = torch.empty(ATOMS, n, DIM)
    features[..., 0] = -3.0
    features[..., 1:] = torch.randn(DIM - 1, generator=generator) + 0.05 * torch.randn(
        ATOMS, n, DIM - 1, generator=generator
    )
    features[:, 0, 0] = 3.0
    features[:, 0, 1:] = 3 * torch.randn(ATOMS, DIM - 1, generator=generator)
    order = torch.stack([torch.randperm(n, generator=generator) for _ in range(ATOMS)])
    return features.gather(1, order[..., None].expand(-1, -1, DIM)), (order == 0).int().argmax(1)


@torch.no_grad()
def _intact_and_masked(separation: atomgen.AtomSeparation, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``d̄_A`` of a token batch and of the same batch with every token replaced by its atom's mean."""

    def mean_distance(batch: torch.Tensor) -> torch.Tensor:
        distance = separation(batch).atom_distance.double()
        return (distance.sum(1) - distance.diagonal()) / (len(batch) - 1)

    masked = tokens.mean(1, keepdim=True).expand_as(tokens)
    return mean_distance(tokens), mean_distance(masked)


def test_baselines_give_finite_scores_per_particle():
    separation = atomgen.AtomSeparation(dim=4, patch_size=2, max_grid=4)
    maps = torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(1))  # pooled 4×4, patches: n = 4
    tokens = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(3, 5)
    mask[0, -2:] = 0  # padding scores 0
    for method in ATTRIBUTION_METHODS:
        scores = particle_attributions(separation, maps, method, steps=4)
        assert scores.shape == (3, 4) and torch.isfinite(scores).all(), method
        scores = particle_attributions(atomgen.AtomSeparation(dim=4), tokens, method, mask=mask, steps=4)
        assert scores.shape == (3, 5) and torch.isfinite(scores).all(), method
        assert torch.equal(scores[0, -2:], torch.zeros(2)), method


def test_the_distinct_particle_ranks_first_and_beats_random():
    features, distinct = _distinct_batch()
    fractions = [0.0, 0.125, 0.25, 0.5, 1.0]
    # Near-uniform roles (an untrained head) for the baselines; the flag-reading head for the importances.
    # Under that saturated head gradient × activation misses the particle (masking it flips its role, a
    # step the first-order term does not see); integrated gradients follows the path and finds it.
    cases = [
        (atomgen.AtomSeparation(dim=DIM), ("feature_norm", "gradient_x_activation", "integrated_gradients")),
        (_separation(-6.0), ("importance", "integrated_gradients")),
    ]
    for separation, methods in cases:
        for method in methods:
            scores = particle_attributions(separation, features, method, steps=16)
            assert torch.equal(scores.argmax(1), distinct), method
        results = compare_attributions(
            separation, features, methods=methods, fractions=fractions, num_random=2, steps=16
        )
        for method, result in results.items():
            assert result.gain > 0.1 and result.insertion_gain > 0.1, method
            assert result.auc_random == results[methods[0]].auc_random  # the same random orders


def test_curves_end_at_the_intact_and_the_masked_distance():
    separation, tokens = atomgen.AtomSeparation(dim=DIM), _batch()
    intact, masked = _intact_and_masked(separation, tokens)
    total_drop = float(((intact - masked) / intact).mean())
    for method in ("feature_norm", "random"):
        result = attribution_faithfulness(
            separation, tokens, method=method, fractions=FRACTIONS, num_random=1
        )
        # nothing deleted: no drop; all deleted: the fully masked batch
        assert result.drop_importance[0] == pytest.approx(0.0, abs=1e-12)
        assert result.drop_importance[-1] == pytest.approx(total_drop, rel=1e-6)
        # nothing inserted: the fully masked batch; all inserted: the intact batch, recovering the whole drop
        assert result.recovery_importance[0] == pytest.approx(0.0, abs=1e-12)
        assert result.recovery_importance[-1] == pytest.approx(total_drop, rel=1e-6)
        assert result.recovery_random[-1] == pytest.approx(total_drop, rel=1e-6)


def test_integrated_gradients_are_complete():
    separation = atomgen.AtomSeparation(dim=DIM).double()
    with torch.no_grad():  # roles far from uniform, so the importances shape the gradient too
        separation.role_head.weight.normal_(generator=torch.Generator().manual_seed(3))
    tokens = torch.randn(4, 6, DIM, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    intact, masked = _intact_and_masked(separation, tokens)
    scores = particle_attributions(separation, tokens, "integrated_gradients", steps=32)
    # Σ over the batch = D(intact) − D(masked), D = Σ_A d̄_A, up to the midpoint rule's O(1/steps²)
    assert float(scores.sum()) == pytest.approx(float((intact - masked).sum()), rel=1e-2)
    # Fewer steps, the same quantity, less accurately: the error is the quadrature's, not a missing term.
    coarse = particle_attributions(separation, tokens, "integrated_gradients", steps=2)
    assert abs(float(coarse.sum() - (intact - masked).sum())) > abs(
        float(scores.sum() - (intact - masked).sum())
    )


def test_scores_argument_matches_the_method():
    separation, features = _separation(-6.0), _batch()
    scores = particle_attributions(separation, features, "feature_norm")
    given = attribution_faithfulness(separation, features, scores=scores, fractions=FRACTIONS, num_random=2)
    named = attribution_faithfulness(
        separation, features, method="feature_norm", fractions=FRACTIONS, num_random=2
    )
    assert given.method == "scores" and named.method == "feature_norm"
    assert (
        given.drop_importance == named.drop_importance
        and given.recovery_importance == named.recovery_importance
    )
    default = attribution_faithfulness(separation, features, fractions=FRACTIONS, num_random=2)
    importance = separation(features).importance
    by_output = attribution_faithfulness(
        separation, features, scores=importance, fractions=FRACTIONS, num_random=2
    )
    assert default.drop_importance == pytest.approx(by_output.drop_importance)


def test_uniform_weighting_measures_a_distance_the_role_head_cannot_shape():
    features = _batch()
    committed, untrained = _separation(-6.0), atomgen.AtomSeparation(dim=DIM)
    scores = particle_attributions(committed, features, "importance")
    curves = {
        (name, weighting): attribution_faithfulness(
            separation, features, scores=scores, fractions=FRACTIONS, num_random=2, weighting=weighting
        )
        for name, separation in (("committed", committed), ("untrained", untrained))
        for weighting in ("learned", "uniform")
    }
    # The same ranking: under the learned weighting the curves depend on the head, under uniform they do not.
    uniform = curves["committed", "uniform"]
    assert uniform.weighting == "uniform" and curves["committed", "learned"].weighting == "learned"
    assert uniform.drop_importance == pytest.approx(curves["untrained", "uniform"].drop_importance)
    assert curves["committed", "learned"].drop_importance != pytest.approx(uniform.drop_importance)
    # and what it measures is the d̄ of the module with every particle a proton (s ≡ 1)
    protons = atomgen.AtomSeparation(dim=DIM, learn_roles=False)
    intact, masked = _intact_and_masked(protons, features)
    assert uniform.drop_importance[-1] == pytest.approx(float(((intact - masked) / intact).mean()), rel=1e-6)
    # the atom's own particles set it apart in the features too, so ranking them first beats random
    assert uniform.gain > 0.1
    # the gradient methods attribute the distance measured: under uniform weighting the head is irrelevant
    for method in ("gradient_x_activation", "integrated_gradients"):
        assert torch.allclose(
            particle_attributions(committed, features, method, steps=4, weighting="uniform"),
            particle_attributions(untrained, features, method, steps=4, weighting="uniform"),
        )


def test_docstring_examples():
    result = doctest.testmod(atomgen.eval.attribution, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
