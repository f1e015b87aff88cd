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
            fpr: float = 0.01, p_fake: dict[str, np.ndarray] | None = None) -> "EditRouter":
        """stats: {edit: (statistics of the calibration reals, of the calibration fakes)}; p_real: {edit: the
        reals' calibrated probabilities, (N,), or (N, edits) when each route scores its images its own way
        (detector.experts): column i is the probability route i would give}; single: the edit-blind threshold,
        the fallback of a thin route. With p_fake (the fakes' probabilities, laid out like p_real), the thresholds
        are then raised until the reals of *every* edit are flagged at most `fpr` (`_hold_per_edit`): a file
        misrouted to a route whose judge was not made for its edit (a lightly blurred real judged as clean) must
        not push its edit over."""
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
        def per_route(p):  # (N, edits): one column per route, a 1-D probability repeated in each
            return np.concatenate([np.broadcast_to(np.asarray(p[k]).reshape(len(p[k]), -1), (len(p[k]), len(edits)))
                                   for k in edits])

        pr = per_route(p_real)
        route = router.route(np.concatenate([stats[k][0] for k in edits]))
        thr = [max(threshold_at_fpr(pr[route == i, i], fpr), 0.5) if (route == i).sum() >= cls.MIN_REALS else single
               for i in range(len(edits))]
        if p_fake is not None:
            pf = per_route(p_fake)
            route_f = router.route(np.concatenate([stats[k][1] for k in edits]))
            edit_r = np.concatenate([np.full(len(p_real[k]), i) for i, k in enumerate(edits)])
            rows_r, rows_f = np.arange(len(pr)), np.arange(len(pf))
            thr = _hold_per_edit(np.array(thr), route, pr[rows_r, route], edit_r, route_f, pf[rows_f, route_f], fpr)
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


def _hold_per_edit(thr: np.ndarray, route_r: np.ndarray, p_r: np.ndarray, edit_r: np.ndarray, route_f: np.ndarray,
                   p_f: np.ndarray, fpr: float) -> np.ndarray:
    """Per-route thresholds raised, greedily, until each edit's reals are flagged at most `fpr`: while an edit is
    over, of its flagged reals the one whose route loses the fewest calibration fakes when its threshold rises to
    that real's probability sets that route's new threshold. Each step clears at least one false positive."""
    thr = thr.astype(np.float64).copy()
    n_edit = np.bincount(edit_r)
    while True:
        flagged = p_r > thr[route_r]
        over = np.bincount(edit_r[flagged], minlength=len(n_edit)) - fpr * n_edit
        worst = int(over.argmax())
        if over[worst] <= 0:
            return thr
        cands = np.flatnonzero(flagged & (edit_r == worst))
        cost = [((route_f == route_r[j]) & (p_f > thr[route_r[j]]) & (p_f <= p_r[j])).sum() for j in cands]
        j = cands[int(np.argmin(cost))]
        thr[route_r[j]] = p_r[j]


def threshold_at_fpr(p_real: np.ndarray, fpr: float = 0.01) -> float:
    """The smallest t with mean(p_real > t) <= fpr: calling 'synthetic' above t flags at most `fpr`
    of the calibration reals."""
    if not 0 < fpr < 1:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    return float(np.quantile(np.asarray(p_real, np.float64), 1 - fpr, method="higher"))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))
