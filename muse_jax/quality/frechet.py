"""Gaussian feature statistics accumulated over batches, and the Fréchet distance between two.

FID (Heusel et al., arXiv 1706.08500) compares the mean and covariance of Inception pool3
features of two image sets. The statistics are accumulated as float64 sums (count, sum of
features, sum of outer products), so batches can arrive in any order, from any number of
devices or processes (`merge`), and a run stopped half-way resumes from the saved sums
(`save`/`load`) with the same result as one uninterrupted pass. The covariance is the unbiased
one (`np.cov`, ddof 1), as pytorch-fid and the TF FID code use.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from etils import epath


@dataclasses.dataclass
class FeatureStats:
    dim: int
    count: int = 0
    total: np.ndarray | None = None  # [dim] float64
    outer: np.ndarray | None = None  # [dim, dim] float64

    def __post_init__(self):
        if self.total is None:
            self.total = np.zeros(self.dim, np.float64)
        if self.outer is None:
            self.outer = np.zeros((self.dim, self.dim), np.float64)

    def add(self, features) -> None:
        f = np.asarray(features, np.float64).reshape(-1, self.dim)
        self.count += f.shape[0]
        self.total += f.sum(axis=0)
        self.outer += f.T @ f

    def merge(self, other: "FeatureStats") -> None:
        self.count += other.count
        self.total += other.total
        self.outer += other.outer

    def mean(self) -> np.ndarray:
        return self.total / self.count

    def cov(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, have {self.count}")
        mu = self.mean()
        return (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)

    def save(self, path) -> None:
        with epath.Path(path).open("wb") as f:
            np.savez(f, count=self.count, total=self.total, outer=self.outer)

    @classmethod
    def load(cls, path) -> "FeatureStats":
        with epath.Path(path).open("rb") as f:
            data = np.load(f)
            return cls(dim=data["total"].shape[0], count=int(data["count"]),
                       total=data["total"].copy(), outer=data["outer"].copy())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

    tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix S1^(1/2) S2 S1^(1/2), which has the same spectrum; unlike
    `scipy.linalg.sqrtm(S1 @ S2)` (pytorch-fid's way) it never goes complex or singular on
    rank-deficient covariances (fewer samples than 2048 dimensions), and tiny negative
    eigenvalues from rounding are clipped to 0.

    With S1 = V W V^T, that spectrum is B^T S2 B's, B = V W^(1/2) over the eigenvalues w > 0
    only (the others add nothing): r x r for a covariance of rank r. Of 12 samples' 2048-d
    covariances: 2.8 s, against 4.9 s with S1^(1/2) formed in full; at full rank 4.9 s against
    5.1 s (one BLAS thread, 2026-12-07).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh(sigma1)
    kept = w > 0
    b = v[:, kept] * np.sqrt(w[kept])
    middle = b.T @ sigma2 @ b
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_root = np.sum(np.sqrt(np.clip(eig, 0, None)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root)


def fid(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mean(), a.cov(), b.mean(), b.cov())
