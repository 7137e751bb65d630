"""Attribution faithfulness (deletion curves) on a batch built so that importance is, or is not, faithful."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import atomgen
from atomgen.eval import attribution_faithfulness, attribution_maps, save_attribution_grid

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


def test_inverted_importance_loses_to_random():
    result = attribution_faithfulness(_separation(6.0), _batch(), fractions=FRACTIONS, num_random=2)
    assert result.gain < 0


def test_feature_maps_with_patches_and_pooling():
    separation = atomgen.AtomSeparation(dim=4, patch_size=2, max_grid=4)
    features = torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    result = attribution_faithfulness(separation, features, fractions=[0.0, 0.5, 1.0], num_random=2)
    assert len(result.drop_importance) == 3 and result.drop_importance[0] == pytest.approx(0.0, abs=1e-12)


def test_errors():
    with pytest.raises(ValueError, match="at least 2 atoms"):
        attribution_faithfulness(atomgen.AtomSeparation(dim=DIM), torch.randn(1, 5, DIM))
    with pytest.raises(ValueError, match="fractions"):
        attribution_faithfulness(
            atomgen.AtomSeparation(dim=DIM), torch.randn(3, 5, DIM), fractions=[0.5, 2.0]
        )


def test_maps_and_picture(tmp_path):
    separation = atomgen.AtomSeparation(dim=4)
    out = separation(torch.randn(5, 4, 4, 4))
    maps = attribution_maps(out.importance, out.grid, (8, 8))
    assert maps.shape == (5, 1, 8, 8) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    path = save_attribution_grid(torch.rand(5, 1, 8, 8), out.importance, out.grid, tmp_path / "a.png", nrow=5)
    with Image.open(path) as image:
        assert image.size == (10 * 64 + 11 * 2, 64 + 2 * 2)  # image|overlay pairs, enlarged to 64 px
