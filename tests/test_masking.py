"""The masking step: exact 2-means against scikit-learn, quantile against torch, degenerate cases."""

import warnings

import numpy as np
import pytest

from maskst.errors import InputError
from maskst.masking import (
    DegenerateMaskWarning,
    condition_embeds,
    content_mask,
    content_product,
    two_means_split,
)


def _sse(values: np.ndarray, upper: np.ndarray) -> float:
    sse = 0.0
    for part in (values[upper], values[~upper]):
        if part.size:
            sse += float(np.sum((part - part.mean()) ** 2))
    return sse


def _vector_cases(seed: int = 0, count: int = 300):
    """Random, heavy-tailed and content-concentrated vectors of several lengths."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        d = [1024, 768, 257, 33][i % 4]
        kind = i % 3
        if kind == 0:
            e_i, e_c = rng.standard_normal(d), rng.standard_normal(d)
        elif kind == 1:
            e_i, e_c = rng.standard_t(2, d), rng.laplace(size=d)
        else:  # a few elements carry the content, as in the paper's motivation
            e_i = rng.standard_normal(d)
            e_c = 0.05 * rng.standard_normal(d)
            hot = rng.choice(d, size=max(2, d // 20), replace=False)
            e_c[hot] += 3.0 * np.sign(e_i[hot])
        yield e_i, e_c


def test_exact_two_means_never_worse_than_sklearn_and_equal_when_sklearn_is_optimal():
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    agree = optimal = 0
    for seed, (e_i, e_c) in enumerate(_vector_cases()):
        p = content_product(e_i, e_c)
        ours = content_mask(e_i, e_c, mode="kmeans")
        km = sklearn_cluster.KMeans(n_clusters=2, n_init=10, random_state=seed).fit(p.reshape(-1, 1))
        upper_label = int(np.argmax(km.cluster_centers_.ravel()))
        theirs = km.labels_ == upper_label
        ours_sse, theirs_sse = _sse(p, ours), _sse(p, theirs)
        # Both SSEs are float64 sums of ~1e3 squares of values ~1e-3: 1e-12 relative is exact.
        assert ours_sse <= theirs_sse * (1 + 1e-12) + 1e-18
        if theirs_sse <= ours_sse * (1 + 1e-12):
            optimal += 1
            agree += int(np.array_equal(ours, theirs))
    assert optimal > 100  # the comparison below is not vacuous
    assert agree == optimal


def test_two_means_sse_matches_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(50):
        v = np.round(rng.standard_normal(40), 1)  # many ties
        threshold, sse = two_means_split(v)
        s = np.sort(v)
        best = min(_sse(s, np.arange(40) >= k) for k in range(1, 40) if s[k - 1] < s[k])
        assert sse == pytest.approx(best, rel=1e-12, abs=1e-15)
        assert _sse(v, v >= threshold) == pytest.approx(best, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("theta", [0.0, 0.3, 0.7, 0.95, 1.0])
def test_quantile_mask_matches_torch_quantile(theta):
    torch = pytest.importorskip("torch")
    for e_i, e_c in list(_vector_cases(seed=2, count=40)):
        p = content_product(e_i, e_c)
        expected = (torch.from_numpy(p) > torch.quantile(torch.from_numpy(p), theta)).numpy()
        np.testing.assert_array_equal(content_mask(e_i, e_c, mode="quantile", theta=theta), expected)


def test_batch_equals_rows_and_content_broadcasts():
    rng = np.random.default_rng(3)
    e_i, e_c = rng.standard_normal((5, 64)), rng.standard_normal((1, 64))
    batch = content_mask(e_i, e_c)
    for n in range(5):
        np.testing.assert_array_equal(batch[n], content_mask(e_i[n], e_c[0]))


@pytest.mark.parametrize("mode", ["kmeans", "quantile"])
def test_degenerate_inputs_mask_nothing_and_warn(mode):
    rng = np.random.default_rng(4)
    e_i = rng.standard_normal(32)
    for image, content in [(np.zeros(32), e_i), (e_i, np.zeros(32)), (np.ones(32), np.ones(32))]:
        with pytest.warns(DegenerateMaskWarning):
            mask = content_mask(image, content, mode=mode)
        assert not mask.any()
        e_hat, _ = condition_embeds(image, content, method="maskst", mode=mode)
        assert np.all(np.isfinite(e_hat))


def test_non_finite_and_bad_options_raise_clear_errors():
    good = np.ones(8)
    bad = good.copy()
    bad[3] = np.nan
    with pytest.raises(InputError, match="image_embeds contains NaN"):
        content_mask(bad, good)
    with pytest.raises(InputError, match="mask mode='median'"):
        content_mask(good, good, mode="median")
    with pytest.raises(InputError, match="theta=1.5"):
        content_mask(good, good, mode="quantile", theta=1.5)
    with pytest.raises(InputError, match="8 elements but content_embeds has 4"):
        content_mask(good, np.ones(4))
    with pytest.raises(InputError, match="method='maskst2'"):
        condition_embeds(good, good, method="maskst2")


def test_methods():
    rng = np.random.default_rng(5)
    e_i, e_c = rng.standard_normal((2, 16)), rng.standard_normal((2, 16))
    plain, mask = condition_embeds(e_i, e_c, method="ip-adapter")
    np.testing.assert_allclose(plain, e_i.astype(np.float32))
    assert not mask.any()
    inst, _ = condition_embeds(e_i, e_c, method="instantstyle", content_scale=0.5)
    np.testing.assert_allclose(inst, (e_i - 0.5 * e_c).astype(np.float32), rtol=1e-6)
    masked, mask = condition_embeds(e_i, e_c, method="maskst")
    assert mask.any() and not mask.all()
    np.testing.assert_array_equal(masked[mask], 0.0)
    np.testing.assert_allclose(masked[~mask], e_i[~mask].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        condition_embeds(e_i, None, method="ip-adapter")  # content not needed, no warning
