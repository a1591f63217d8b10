"""Feature statistics over batches and the Fréchet distance against pytorch-fid's NumPy/SciPy."""
import numpy as np
import pytest

from muse_jax.quality import frechet
from torch_refs import import_torchvision


def _features(seed, n, dim, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    return (rng.standard_normal((n, dim)) @ mix + shift).astype(np.float32)


def test_stats_over_batches_and_devices_equal_one_pass(tmp_path):
    x = _features(0, 300, 16)
    one, parts = frechet.FeatureStats(16), [frechet.FeatureStats(16) for _ in range(3)]
    one.add(x)
    for i, part in enumerate(parts):  # e.g. three processes, each several batches
        for batch in np.array_split(x[i::3], 4):
            part.add(batch)
    parts[0].save(tmp_path / "p0.npz")  # and one of them resumed from disk
    merged = frechet.FeatureStats.load(tmp_path / "p0.npz")
    merged.merge(parts[1])
    merged.merge(parts[2])
    assert merged.count == 300
    np.testing.assert_allclose(merged.mean(), x.astype(np.float64).mean(0), atol=1e-12)
    np.testing.assert_allclose(merged.cov(), np.cov(x.astype(np.float64), rowvar=False), atol=1e-12)
    np.testing.assert_allclose(one.cov(), merged.cov(), atol=1e-12)


@pytest.mark.parametrize("n", [400, 40])  # full-rank covariances, and rank-deficient ones
def test_frechet_distance_matches_pytorch_fid(n):
    import_torchvision()
    from pytorch_fid.fid_score import calculate_frechet_distance

    dim = 64
    a, b = _features(1, n, dim), _features(2, n, dim, shift=0.3)
    stats = []
    for x in (a, b):
        s = frechet.FeatureStats(dim)
        s.add(x)
        stats.append(s)
    ours = frechet.fid(*stats)
    theirs = calculate_frechet_distance(stats[0].mean(), stats[0].cov(), stats[1].mean(),
                                        stats[1].cov())
    print(f"FID n={n}: ours {ours:.10f}, pytorch-fid {theirs:.10f}")
    assert ours > 1.0
    assert abs(ours - theirs) < 1e-4 * max(1.0, abs(theirs))
    assert frechet.fid(stats[0], stats[0]) == pytest.approx(0.0, abs=1e-5)  # sqrt of ~1e-13 eigenvalues
