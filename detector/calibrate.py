"""Calibration on a held-out split: raw scores -> probabilities, and the decision threshold.

Everything here is fitted on the calibration split (real digits never trained on, plus fakes made
with the training seeds but not trained on) and stored as plain numbers in the detector's
config.json. No constant in the code decides what is synthetic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression


@dataclass(frozen=True)
class Platt:
    """p = sigmoid(a * score + b) (Platt 1999), fitted by logistic regression on one score."""
    a: float
    b: float

    @classmethod
    def fit(cls, scores: np.ndarray, y: np.ndarray) -> "Platt":
        lr = LogisticRegression(C=1e4).fit(np.asarray(scores, np.float64)[:, None], y)
        return cls(float(lr.coef_[0, 0]), float(lr.intercept_[0]))

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return _sigmoid(self.a * np.asarray(scores, np.float64) + self.b)


@dataclass(frozen=True)
class Fusion:
    """Logistic regression on several standardised scores (here: classifier logit, DIRE error)."""
    names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    @classmethod
    def fit(cls, features: dict[str, np.ndarray], y: np.ndarray) -> "Fusion":
        names = tuple(features)
        x = np.stack([np.asarray(features[k], np.float64) for k in names], 1)
        mu, sd = x.mean(0), x.std(0) + 1e-12
        lr = LogisticRegression(C=1.0).fit((x - mu) / sd, y)
        return cls(names, tuple(mu.tolist()), tuple(sd.tolist()), tuple(lr.coef_[0].tolist()), float(lr.intercept_[0]))

    def __call__(self, features: dict[str, np.ndarray]) -> np.ndarray:
        x = np.stack([np.asarray(features[k], np.float64) for k in self.names], 1)
        z = ((x - np.array(self.mean)) / np.array(self.std)) @ np.array(self.coef) + self.intercept
        return _sigmoid(z)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Fusion":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def threshold_at_fpr(p_real: np.ndarray, fpr: float = 0.01) -> float:
    """The smallest t with mean(p_real > t) <= fpr: calling 'synthetic' above t flags at most `fpr`
    of the calibration reals."""
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    return float(np.quantile(np.asarray(p_real, np.float64), 1 - fpr, method="higher"))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))
