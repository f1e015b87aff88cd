"""Sample-quality metrics on feature vectors: FID, unbiased KID, precision/recall (k-NN manifolds),
a memorization ratio test, and the PSNR between image batches. Pure functions of arrays; the feature network is generator.classifier.
"""

from __future__ import annotations

import numpy as np
import torch

def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of the PSNR (dB) between two (B, ...) batches in [-1, 1] (peak: the [0, 1] range)."""
    mse = ((a - b) / 2).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


MEMORIZATION_RATIO = 1 / 3  # Carlini et al. 2023: nearest neighbour 3x closer than the next one


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a and b (Heusel et al. 2017).

    Tr sqrt(S1 S2) is computed as the sum of sqrt-eigenvalues of the symmetric PSD matrix
    S1^1/2 S2 S1^1/2, which is stable when ReLU features make the covariances singular."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    r1 = _sqrt_psd(s1)
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 50, subset_size: int = 500, seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018); mean and std over subsets."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        # unbiased: drop the diagonals of the within-set kernels
        vals.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                    - 2 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals))


def _kth_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkaanniemi et al. 2019: precision = share of fakes inside the real k-NN manifold; recall
    = share of reals inside the fake manifold."""
    r, f = torch.as_tensor(np.asarray(real), dtype=torch.float64), torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    rr, rf = _kth_radius(r, k), _kth_radius(f, k)
    precision = (torch.cdist(f, r) <= rr[None]).any(1).double().mean().item()
    recall = (torch.cdist(r, f) <= rf[None]).any(1).double().mean().item()
    return precision, recall


def memorization(samples: torch.Tensor, train: torch.Tensor, ratio: float = MEMORIZATION_RATIO
                 ) -> dict[str, np.ndarray | float]:
    """Ratio test in pixel space: a sample is flagged when d(nearest train) < ratio * d(second nearest).

    Returns the per-sample ratio, nearest index, the flag and the flagged fraction."""
    s = samples.reshape(len(samples), -1).double()
    t = train.reshape(len(train), -1).double()
    d = torch.cdist(s, t)
    top2 = d.topk(2, dim=1, largest=False)
    r = (top2.values[:, 0] / top2.values[:, 1].clamp(min=1e-12)).numpy()
    flagged = r < ratio
    return {"ratio": r, "nearest": top2.indices[:, 0].numpy(), "flagged": flagged,
            "fraction": float(flagged.mean()), "threshold": ratio}
