"""What the report says: KID only on features the kernel fits, an honest spread, the diversity caveat."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atomgen.eval import kid, kid_scale, open_source, run_eval
from atomgen.eval.report import DIVERSITY_CAVEAT


def test_rescaled_kid_does_not_depend_on_the_feature_scale():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 16)) * 30 + 5, rng.normal(size=(50, 16)) * 30 + 6
    a = kid(x, y, num_subsets=5, subset_size=40, rescale=True)
    b = kid(1000 * x, 1000 * y, num_subsets=5, subset_size=40, rescale=True)
    assert a.mean == pytest.approx(b.mean, rel=1e-9) and b.scale == pytest.approx(1000 * a.scale)
    assert kid_scale(np.full((3, 4), 2.0)) == pytest.approx(2.0)


def test_kid_on_classifier_features_is_rescaled_and_one_subset_says_so(tmp_path):
    digits = open_source("digits").images
    real, fake = digits[:300], digits[300:600]
    report = run_eval(real, fake, ["kid"], "digits", tmp_path, device="cpu", progress=False)
    result = report["metrics"]["kid"]
    # Unnormalised 64-d classifier features put the cubic kernel at |KID| in the hundreds (632 here, 13,735
    # for noise); rescaled, two halves of one dataset are near 0 and noise far from it.
    assert abs(result["mean"]) < 0.2 and result["scale"] != 1.0
    assert "divided by s" in result["features"]
    assert result["std"] is None and result["num_subsets"] == 1  # 300 of 300: one subset, no ± 0
    markdown = (tmp_path / "report.md").read_text()
    assert "one subset: all 300" in markdown and "± 0.000000" not in markdown
    same = run_eval(real, real, ["kid"], "digits", device="cpu", progress=False)["metrics"]["kid"]
    noise = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    far = run_eval(real, noise, ["kid"], "digits", device="cpu", progress=False)["metrics"]["kid"]
    assert abs(same["mean"]) < 0.2 and far["mean"] > 10 * abs(result["mean"])


def test_kid_on_inception_features_is_not_rescaled():
    from atomgen.eval import InceptionFeatures

    extractor = InceptionFeatures(
        torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()), "test"
    )
    images = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    report = run_eval(images[:6], images[6:], ["kid"], extractor, device="cpu", progress=False)
    assert report["metrics"]["kid"]["scale"] == 1.0
    assert "standard Inception" in report["metrics"]["kid"]["features"]


def test_diversity_columns_carry_the_caveat(tmp_path):
    digits = open_source("digits").images[:40]
    noise = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    report = run_eval(digits, noise, ["prdc", "vendi"], "digits", tmp_path, device="cpu", progress=False)
    assert report["caveats"] == [DIVERSITY_CAVEAT]
    markdown = (tmp_path / "report.md").read_text()
    assert "comparable precision" in markdown and "pure noise is not diverse" in markdown
    plain = run_eval(digits, noise, ["fid"], "digits", device="cpu", progress=False)
    assert "caveats" not in plain
