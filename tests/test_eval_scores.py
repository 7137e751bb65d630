"""Scores on random features: closed forms, and agreement with references (clean-fid, naive PRDC/Vendi)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atomgen.eval import FeatureSet, FeatureStatistics, Statistics, fid, frechet_distance, kid, prdc, vendi


def _random_covariance(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, 2 * d))
    return a @ a.T / (2 * d)


# --- Fréchet distance -----------------------------------------------------------------------------------


def test_fid_equal_covariances_is_squared_mean_difference():
    rng = np.random.default_rng(0)
    sigma = _random_covariance(rng, 32)
    mu1, mu2 = rng.normal(size=32), rng.normal(size=32)
    expected = float(((mu1 - mu2) ** 2).sum())
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_fid_of_features_shifted_by_a_constant():
    x = np.random.default_rng(1).normal(size=(200, 8))
    assert fid(x, x + 0.5) == pytest.approx(8 * 0.25, rel=1e-9)


def test_fid_diagonal_closed_form():
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0.1, 3, size=16), rng.uniform(0.1, 3, size=16)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_fid_agrees_with_clean_fid():
    from cleanfid.fid import frechet_distance as clean_frechet_distance

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(300, 24)), rng.normal(size=(300, 24)) * 1.3 + 0.2
    ours = fid(x, y)
    reference = clean_frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert ours == pytest.approx(reference, rel=1e-8)


@pytest.mark.parametrize("samples", [200, 10])  # positive definite (Cholesky route), singular (eigh route)
def test_trace_sqrt_product_routes_agree(samples):
    from atomgen.eval.scores import trace_sqrt_product

    rng = np.random.default_rng(13)
    x, y = rng.normal(size=(samples, 32)), rng.normal(size=(samples, 32)) * 2
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    expected = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    assert trace_sqrt_product(s1, s2, method="eigh") == pytest.approx(expected, rel=1e-7)
    assert trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-7)
    if samples < 32:
        with pytest.raises(np.linalg.LinAlgError):
            trace_sqrt_product(s1, s2, method="cholesky")


def test_fid_singular_covariance_is_finite_and_warns(caplog):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(10, 64)), rng.normal(size=(10, 64))
    value = fid(x, y)
    assert np.isfinite(value) and value > 0
    assert "singular" in caplog.text


def test_fid_identical_sets_is_zero():
    x = np.random.default_rng(5).normal(size=(100, 12))
    assert fid(x, x) == pytest.approx(0.0, abs=1e-9)


def test_fid_too_few_samples_is_an_error():
    with pytest.raises(ValueError, match="at least 2"):
        fid(np.zeros((1, 4)), np.ones((5, 4)))


def test_fid_accepts_statistics_and_feature_sets():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(60, 4))
    stats = Statistics(x.mean(0), np.cov(x, rowvar=False), 50)
    feature_set = FeatureSet(y.astype(np.float32), "test", "identity")
    assert fid(stats, feature_set) == pytest.approx(fid(x, y.astype(np.float32)), rel=1e-9)


# --- streamed statistics --------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=6),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_streamed_statistics_equal_one_pass(sizes, seed):
    x = np.random.default_rng(seed).normal(loc=100.0, size=(sum(sizes) + 2, 5))  # far from 0: cancellation
    stats = FeatureStatistics()
    for batch in np.split(x, np.cumsum([2, *sizes])[:-1]):
        stats.update(batch)
    result = stats.compute()
    assert result.count == len(x)
    np.testing.assert_allclose(result.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(result.cov, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)


def test_statistics_errors():
    stats = FeatureStatistics()
    stats.update(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        stats.compute()
    with pytest.raises(ValueError, match="width changed"):
        stats.update(np.zeros((2, 4)))
    with pytest.raises(FloatingPointError):
        stats.update(np.full((2, 3), np.nan))


def test_statistics_save_load(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 3))
    stats = FeatureStatistics()
    stats.update(x)
    stats.compute().save(tmp_path / "s.npz")
    loaded = Statistics.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(loaded.cov, np.cov(x, rowvar=False))
    assert loaded.count == 20


# --- KID ------------------------------------------------------------------------------------------------


def _naive_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d, m = x.shape[1], len(x)

    def k(a, b):
        return (a @ b / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_full_subset_equals_naive_and_clean_fid():
    from cleanfid.fid import kernel_distance

    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(30, 6)), rng.normal(size=(30, 6)) + 0.3
    ours = kid(x, y, num_subsets=3, subset_size=30)  # subsets of all samples: a permutation
    assert ours.mean == pytest.approx(_naive_mmd2(x, y), rel=1e-10)
    assert ours.std is None and ours.num_subsets == 1  # one subset: no spread to report, not ± 0
    assert ours.mean == pytest.approx(kernel_distance(x, y, num_subsets=1, max_subset_size=30), rel=1e-10)


def test_kid_same_distribution_near_zero_and_seeded():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    a = kid(x, y, num_subsets=10, subset_size=100, seed=1)
    assert abs(a.mean) < 0.05 and a.subset_size == 100
    assert a == kid(x, y, num_subsets=10, subset_size=100, seed=1)


def test_kid_too_few():
    with pytest.raises(ValueError, match="at least 2"):
        kid(np.zeros((1, 3)), np.zeros((4, 3)))


# --- PRDC -----------------------------------------------------------------------------------------------


def _naive_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float, float, float]:
    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    real_radius = np.sort(dist(real, real), axis=1)[:, k]
    fake_radius = np.sort(dist(fake, fake), axis=1)[:, k]
    d = dist(real, fake)
    precision = (d < real_radius[:, None]).any(0).mean()
    recall = (d < fake_radius[None, :]).any(1).mean()
    density = (d < real_radius[:, None]).sum(0).mean() / k
    coverage = (d.min(1) < real_radius).mean()
    return precision, recall, density, coverage


@pytest.mark.parametrize("memory_mb", [256.0, 0.001])  # one block, and one row per block
def test_prdc_equals_naive(memory_mb):
    rng = np.random.default_rng(9)
    real, fake = rng.normal(size=(60, 5)), rng.normal(size=(45, 5)) * 1.4 + 0.3
    result = prdc(real, fake, k=5, memory_mb=memory_mb)
    expected = _naive_prdc(real, fake, 5)
    assert (result.precision, result.recall, result.density, result.coverage) == pytest.approx(expected)


def test_prdc_agrees_with_prdc_package():
    reference = pytest.importorskip("prdc")
    rng = np.random.default_rng(10)
    real, fake = rng.normal(size=(80, 6)), rng.normal(size=(70, 6)) + 0.5
    expected = reference.compute_prdc(real_features=real, fake_features=fake, nearest_k=5)
    result = prdc(real, fake, k=5).to_dict()
    for key in ("precision", "recall", "density", "coverage"):
        assert result[key] == pytest.approx(expected[key])


def test_prdc_of_a_set_against_itself():
    x = np.random.default_rng(11).normal(size=(50, 4))
    result = prdc(x, x, k=5)
    assert (result.precision, result.recall, result.density, result.coverage) == pytest.approx((1, 1, 1, 1))


def test_prdc_too_few_is_an_error():
    with pytest.raises(ValueError, match=r"prdc \(k=5\) fake needs at least 6"):
        prdc(np.zeros((10, 2)), np.zeros((5, 2)), k=5)


# --- Vendi ----------------------------------------------------------------------------------------------


def _naive_vendi(x: np.ndarray, q: float = 1.0) -> float:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(x @ x.T / len(x))
    lam = lam[lam > 1e-15]
    if q == 1:
        return float(np.exp(-(lam * np.log(lam)).sum()))
    if np.isinf(q):
        return float(1 / lam.max())
    return float(np.exp(np.log((lam**q).sum()) / (1 - q)))


def test_vendi_identical_is_one_and_orthogonal_is_n():
    assert vendi(np.tile([[1.0, 2.0, 3.0]], (40, 1))) == pytest.approx(1.0)
    assert vendi(np.eye(7)) == pytest.approx(7.0)
    assert vendi(np.eye(7)[:, :] * 3.0) == pytest.approx(7.0)  # cosine: scale-free
    assert vendi(np.eye(12)[:5]) == pytest.approx(5.0)  # d > N: primal form


@pytest.mark.parametrize("shape", [(200, 8), (8, 30)])  # d < N (dual form) and d > N
@pytest.mark.parametrize("q", [1.0, 0.5, 2.0, float("inf")])
def test_vendi_equals_naive(shape, q):
    x = np.random.default_rng(12).normal(size=shape) + 0.5
    assert vendi(x, q=q) == pytest.approx(_naive_vendi(x, q), rel=1e-9)


def test_vendi_zero_vector_is_an_error():
    with pytest.raises(ValueError, match="zero"):
        vendi(np.zeros((3, 2)))


def test_per_class_scores_score_each_class_against_its_own_images():
    from atomgen.eval import per_class_scores

    rng = np.random.default_rng(3)
    real = np.concatenate([rng.normal(size=(60, 4)), rng.normal(size=(60, 4)) + 50.0])
    real_labels = np.repeat([0, 1], 60)
    # class 0 asked for and drawn from class 0's data; class 1 asked for but drawn from class 0's too: a
    # pooled score would call every sample precise, per class half of them are off their class
    fake = np.concatenate([real[:30] + 0.01, real[30:60] + 0.01])
    labels = np.repeat([0, 1], 30)
    scores = per_class_scores(real, real_labels, fake, labels)
    by_hand = [prdc(real[real_labels == c], fake[labels == c], k=5) for c in (0, 1)]
    assert scores["precision"] == pytest.approx(0.5) == np.mean([s.precision for s in by_hand])
    assert scores["coverage"] == pytest.approx(np.mean([s.coverage for s in by_hand]))
    assert scores["fid"] == pytest.approx(np.mean([fid(real[:60], fake[:30]), fid(real[60:], fake[30:])]))
    assert set(per_class_scores(real, real_labels, fake, labels, distribution=False)) == {
        "precision",
        "recall",
        "density",
        "coverage",
    }
    with pytest.raises(ValueError, match=r"classes \[7\]"):
        per_class_scores(real, real_labels, fake, np.repeat([0, 7], 30))
