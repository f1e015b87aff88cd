"""Calibration on a held-out split: raw scores -> probabilities, and the decision threshold.

Everything here is fitted on the calibration split (real digits never trained on, plus fakes made
with the training seeds but not trained on) and stored as plain numbers in the detector's
config.json. No constant in the code decides what is synthetic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

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


@dataclass(frozen=True)
class EditRouter:
    """An edit-aware threshold. One threshold for every upload must sit above the reals of the harshest
    benign edit (blurred and resized digits score like fakes), so clean fakes pay for it. The router
    guesses which benign edit an image went through, from its stroke statistics (detector.stats: the
    level histogram, core flatness, shape), by multinomial logistic regression; each guessed edit has its
    own 1 %-FPR threshold, set on the calibration reals routed there (all edits pooled), so the reals'
    false-positive rate holds per route whatever the guess. A threshold never goes below 0.5 (Platt's
    even odds) nor, for a route with too few calibration reals, below the single threshold."""
    edits: tuple[str, ...]  # the edit each route was fitted on
    mean: tuple[float, ...]
    std: tuple[float, ...]
    coef: tuple[tuple[float, ...], ...]  # (routes, statistics)
    intercept: tuple[float, ...]
    thresholds: tuple[float, ...]  # per route

    MIN_REALS = 100  # calibration reals a route needs for its own 1 %-FPR threshold

    @classmethod
    def fit(cls, stats: dict[str, tuple[np.ndarray, np.ndarray]], p_real: dict[str, np.ndarray], single: float,
            fpr: float = 0.01) -> "EditRouter":
        """stats: {edit: (statistics of the calibration reals, of the calibration fakes)}; p_real: {edit: the
        reals' calibrated probabilities}; single: the edit-blind threshold, the fallback of a thin route."""
        edits = tuple(stats)
        x = np.concatenate([np.concatenate(stats[k]) for k in edits]).astype(np.float64)
        y = np.concatenate([np.full(len(stats[k][0]) + len(stats[k][1]), i) for i, k in enumerate(edits)])
        mu, sd = x.mean(0), x.std(0) + 1e-6
        coef, icpt = np.zeros((len(edits), x.shape[1])), np.zeros(len(edits))
        if len(edits) > 1:
            lr = LogisticRegression(C=1.0, max_iter=3000).fit((x - mu) / sd, y)
            rows = lr.classes_ if len(edits) > 2 else lr.classes_[1:]  # binary: one row, class 1 against 0
            coef[rows], icpt[rows] = lr.coef_, lr.intercept_
        router = cls(edits, tuple(mu.tolist()), tuple(sd.tolist()), tuple(map(tuple, coef.tolist())), tuple(icpt.tolist()),
                     (single,) * len(edits))
        pr = np.concatenate([p_real[k] for k in edits])
        route = router.route(np.concatenate([stats[k][0] for k in edits]))
        thr = [max(threshold_at_fpr(pr[route == i], fpr), 0.5) if (route == i).sum() >= cls.MIN_REALS else single
               for i in range(len(edits))]
        return replace(router, thresholds=tuple(float(t) for t in thr))

    @property
    def by_edit(self) -> dict[str, float]:
        """{edit: its route's threshold}, for reports."""
        return dict(zip(self.edits, self.thresholds))

    def route(self, stats: np.ndarray) -> np.ndarray:
        """(N,) index of the guessed edit for (N, statistics)."""
        z = ((np.asarray(stats, np.float64) - np.array(self.mean)) / np.array(self.std)) @ np.array(self.coef).T
        return (z + np.array(self.intercept)).argmax(1)

    def threshold(self, stats: np.ndarray) -> np.ndarray:
        """(N,) decision threshold for each image."""
        return np.array(self.thresholds)[self.route(stats)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, n_stats: int | None = None) -> "EditRouter":
        """The router stored in a config; ValueError when its parts disagree in size with each other or, given
        n_stats, with the statistics it will be fed (a hand-edited or mismatched config)."""
        r = cls(**{k: tuple(tuple(row) for row in v) if k == "coef" else tuple(v) for k, v in d.items()})
        width = len(r.mean) if n_stats is None else n_stats
        if not (len(r.edits) == len(r.coef) == len(r.intercept) == len(r.thresholds) > 0
                and len(r.mean) == len(r.std) == width and all(len(row) == width for row in r.coef)):
            raise ValueError(f"the edit router's sizes do not match ({len(r.edits)} edits, {width} statistics expected)")
        return r


def threshold_at_fpr(p_real: np.ndarray, fpr: float = 0.01) -> float:
    """The smallest t with mean(p_real > t) <= fpr: calling 'synthetic' above t flags at most `fpr`
    of the calibration reals."""
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    return float(np.quantile(np.asarray(p_real, np.float64), 1 - fpr, method="higher"))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))
