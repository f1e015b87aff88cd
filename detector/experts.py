"""The edit expert: for a file the edit router thinks was JPEG'd, blurred, resized or noised, a judge trained on
edited files.

The network is trained on clean and edited files together, and its decision leans on the clean cue (the
252-254 plateau of real strokes, detector.stats), which the edits smear. Measured leave-one-family-out
(BENCHMARKS.md, "The edit expert"), a gradient-boosted tree ensemble on the stroke statistics, trained only on
files under one edit, ranks an unseen family's edited files far better than the network does, and better
than an MLP or a logistic regression on the same statistics. So the router's edit routes get such an
ensemble, fitted on the *training* split under those edits; Platt scaling on the calibration split turns its
logit into the probability the routes' thresholds are set on. Clean files stay with the network.

The ensemble is trained with scikit-learn's HistGradientBoostingClassifier and stored as plain arrays
(safetensors), evaluated here by walking the trees: nothing is unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm_guard.generator.checkpoint import load_tensors, save_tensors
from ddpm_guard.detector.calibrate import Platt
from ddpm_guard.detector.stats import STROKE_LEVEL

EXPERTS_FILE = "experts.safetensors"
N_EXTRA = 64 + 20  # features beyond the stroke statistics: 8x8 DCT magnitudes, radial spectrum
TREES = 300  # boosting iterations at most (early stopping on a 10 % validation split ends most runs sooner)
LEARNING_RATE = 0.1


def stroke_levels(fitted: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) 8-bit levels of the stroke image: channels averaged, levels at or below
    detector.stats.STROKE_LEVEL set to 0 (the detector's background floor). What the expert's image views read."""
    v = ((fitted.float().mean(1, keepdim=True) + 1) * 127.5).clamp(0, 255)
    return torch.where(v > STROKE_LEVEL, v, torch.zeros_like(v))


def expert_features(stats: np.ndarray, fitted: torch.Tensor) -> np.ndarray:
    """(N, statistics + N_EXTRA): what the expert reads. The stroke statistics, then two views of the stroke
    image (levels at or below detector.stats.STROKE_LEVEL set to 0; channels averaged):
    - the mean magnitude of each of the 64 DCT frequencies over the 8x8 blocks of JPEG's grid (the image padded
      to 32x32), log-scaled: what a JPEG re-save quantises, block by block;
    - the radially averaged magnitude spectrum (20 rings), log-scaled and relative to the DC ring.
    Measured leave-one-family-out, both add about 0.01 AUC on edited files to the statistics alone."""
    from scipy.fft import dctn

    v = stroke_levels(fitted)[:, 0].numpy().astype(np.float64)
    n, h, w = v.shape
    ph, pw = -h % 8, -w % 8
    blocks = np.pad(v, ((0, 0), (0, ph), (0, pw))).reshape(n, (h + ph) // 8, 8, (w + pw) // 8, 8)
    dct = np.abs(dctn(blocks.transpose(0, 1, 3, 2, 4), axes=(3, 4), norm="ortho")).mean((1, 2)).reshape(n, 64)
    yy, xx = np.meshgrid(np.arange(h) - h // 2, np.arange(w) - w // 2, indexing="ij")
    ring = np.sqrt(xx ** 2 + yy ** 2).round().astype(int).clip(0, 19)
    mag = np.abs(np.fft.fftshift(np.fft.fft2(v), axes=(1, 2))).reshape(n, -1)
    radial = np.log1p(np.stack([mag[:, ring.ravel() == r].mean(1) for r in range(20)], 1))
    return np.concatenate([np.asarray(stats, np.float64), np.log1p(dct), radial - radial[:, :1]], 1)


@dataclass(frozen=True)
class TreeEnsemble:
    """A binary gradient-boosted ensemble as padded arrays, (trees, nodes) each: go left when
    x[feature] <= threshold; the logit is baseline + the sum of the leaves reached."""
    feature: np.ndarray  # int64
    threshold: np.ndarray  # float64
    left: np.ndarray  # int64
    right: np.ndarray  # int64
    leaf: np.ndarray  # bool
    value: np.ndarray  # float64
    baseline: float
    depth: int  # longest root-to-leaf path: the walk's number of steps

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, seed: int = 0) -> "TreeEnsemble":
        from sklearn.ensemble import HistGradientBoostingClassifier

        clf = HistGradientBoostingClassifier(max_iter=TREES, learning_rate=LEARNING_RATE, early_stopping=True,
                                             random_state=seed).fit(np.asarray(x, np.float64), y)
        return cls.from_sklearn(clf)

    @classmethod
    def from_sklearn(cls, clf) -> "TreeEnsemble":
        """From a fitted binary HistGradientBoostingClassifier on numeric features without missing values."""
        trees = [it[0].nodes for it in clf._predictors]  # binary: one tree per iteration
        if any(t["is_categorical"].any() for t in trees):
            raise ValueError("categorical splits are not supported")
        n = max(len(t) for t in trees)

        def pad(field, dtype, fill=0):
            out = np.full((len(trees), n), fill, dtype)
            for i, t in enumerate(trees):
                out[i, :len(t)] = t[field]
            return out

        return cls(pad("feature_idx", np.int64), pad("num_threshold", np.float64), pad("left", np.int64),
                   pad("right", np.int64), pad("is_leaf", bool, 1), pad("value", np.float64),
                   float(np.ravel(clf._baseline_prediction)[0]), int(max(t["depth"].max() for t in trees)))

    def logit(self, x: np.ndarray) -> np.ndarray:
        """(N,) logits for (N, features)."""
        x = np.asarray(x, np.float64)
        rows = np.arange(len(self.feature))[None, :]
        node = np.zeros((len(x), len(self.feature)), np.int64)
        samples = np.arange(len(x))[:, None]
        for _ in range(self.depth):
            go_left = x[samples, self.feature[rows, node]] <= self.threshold[rows, node]
            step = np.where(go_left, self.left[rows, node], self.right[rows, node])
            node = np.where(self.leaf[rows, node], node, step)
        return self.baseline + self.value[rows, node].sum(1)

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{k}": torch.from_numpy(np.ascontiguousarray(getattr(self, k)))
                for k in ("feature", "threshold", "left", "right", "leaf", "value")} | {
                f"{prefix}.meta": torch.tensor([self.baseline, float(self.depth)], dtype=torch.float64)}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], prefix: str) -> "TreeEnsemble":
        a = {k: t[f"{prefix}.{k}"].numpy() for k in ("feature", "threshold", "left", "right", "leaf", "value")}
        shapes = {v.shape for v in a.values()}
        baseline, depth = t[f"{prefix}.meta"].tolist()
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"the edit expert {prefix!r} has arrays of different shapes")
        n = a["left"].shape[1]
        inner = ~a["leaf"].astype(bool)
        children = np.concatenate([a["left"][inner], a["right"][inner]])
        if (children >= n).any() or (children < 0).any():
            raise ValueError(f"the edit expert {prefix!r} points outside its trees")
        return cls(a["feature"].astype(np.int64), a["threshold"].astype(np.float64), a["left"].astype(np.int64),
                   a["right"].astype(np.int64), a["leaf"].astype(bool), a["value"].astype(np.float64), baseline,
                   int(depth))


def labelled(parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """{edit: (features of reals, of fakes)} -> (all features stacked, labels: 0 real, 1 fake)."""
    x = np.concatenate([np.concatenate(parts[k]) for k in parts])
    y = np.concatenate([np.r_[np.zeros(len(parts[k][0])), np.ones(len(parts[k][1]))] for k in parts])
    return x, y


@dataclass(frozen=True)
class EditExpert:
    """One tree ensemble on `expert_features`, trained on files under every benign edit it covers, with
    its Platt scaling; `prob` is its probability, used for the images routed to one of `edits` (the network
    judges the others: Detector.decide). One judge for all edits, not one per edit: measured leave-one-family-out
    they rank the same (within 0.02 AUC either way), and a file the router sends to the wrong edit route
    (blur and resize, JPEG and noise look alike) still meets the same judge."""
    trees: TreeEnsemble
    platt: Platt
    edits: tuple[str, ...]

    @classmethod
    def fit(cls, train: dict[str, tuple[np.ndarray, np.ndarray]], calibration: dict[str, tuple[np.ndarray, np.ndarray]],
            seed: int = 0) -> "EditExpert":
        """train / calibration: {edit: (expert_features of reals, of fakes)} under that edit, from the training and
        the calibration split; the trees learn on the first, Platt on the second."""
        trees = TreeEnsemble.fit(*labelled(train), seed)
        xc, yc = labelled(calibration)
        return cls(trees, Platt.fit(trees.logit(xc), yc), tuple(train))

    def prob(self, features: np.ndarray) -> np.ndarray:
        """(N,) the expert's probability for every image (its `expert_features`), whatever its route."""
        return self.platt(self.trees.logit(features))

    def to_config(self) -> dict:
        """What config.json records (the trees live in experts.safetensors)."""
        return {"edits": list(self.edits), "platt": {"a": self.platt.a, "b": self.platt.b},
                "trees": len(self.trees.feature)}

    def save(self, folder: str | Path) -> None:
        save_tensors(self.trees.to_tensors("edited"), Path(folder) / EXPERTS_FILE)

    @classmethod
    def load(cls, folder: str | Path, config: dict, n_stats: int) -> "EditExpert":
        """The expert config.json describes (calibration.expert), its trees from experts.safetensors; ValueError
        when the file lacks them or a tree reads a feature that does not exist (n_stats statistics + N_EXTRA)."""
        tensors, _ = load_tensors(Path(folder) / EXPERTS_FILE)
        try:
            trees = TreeEnsemble.from_tensors(tensors, "edited")
        except KeyError:
            raise ValueError(f"{EXPERTS_FILE} holds no trees") from None
        inner = trees.feature[~trees.leaf]
        if (inner >= n_stats + N_EXTRA).any() or (inner < 0).any():
            raise ValueError("the edit expert reads features this detector does not compute")
        return cls(trees, Platt(float(config["platt"]["a"]), float(config["platt"]["b"])), tuple(config["edits"]))
