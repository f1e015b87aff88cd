"""Is this image the kind the detector knows? Two gates, each with its reason.

1. `DomainRules`: structural facts of the decoded file (size, aspect, colour, background), checked
   before any resizing. They catch the obvious cases (a photograph, a colour image, dark text on white).
2. `DomainScore`: a measured score on what the network sees, for inputs that pass the rules but are
   still not digits (a grey photo crop with a dark median, light text on black, a screenshot):
   - the residual of a PCA of real digits (50 components): how much of the image no digit explains;
   - the Mahalanobis distance of the network's pooled features (Lee et al., NeurIPS 2018), with a
     Ledoit-Wolf covariance of the detector-train reals and fakes;
   - for a network with the stroke-statistics branch, the Mahalanobis distance of the coarse stroke
     statistics (the stroke's level quantiles, its cores' mean and spread, its size and place:
     detector.stats.coarse_statistics), fitted on the training digits under every benign edit. It catches
     what the first two miss: a dark, low-contrast photo crop has no stroke at digit levels, yet its pixels
     and its pooled features can sit close to a digit's. The fine level histograms are left out: the edits
     move them most, and with them a clean real digit was flagged as often as a photo crop is missed.
   Each is divided by its own 99.75th percentile on the calibration split (reals clean and under the
   benign edits, and fakes: a generated digit is in domain); the max of the ratios is then scaled so that
   `DOMAIN_FLAG_RATE` of the calibration images score above 1, and "out of domain" is score > 1. So the
   share of in-domain images flagged is set once, for all components together, however many there are.
   Nothing here is a hand-set constant except the structural rules, which are format facts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm_guard.generator.checkpoint import load_tensors, save_tensors
from ddpm_guard.detector.stats import coarse_statistics

PCA_COMPONENTS = 50  # digits live on a low-dimensional set: 50 components hold ~80 % of their variance
DOMAIN_QUANTILE = 0.9975  # per component, to put the components on one scale
DOMAIN_FLAG_RATE = 0.005  # of the calibration images, all components together
DOMAIN_FILE = "domain.safetensors"


@dataclass(frozen=True)
class DomainRules:
    """What the detector was trained on, as rules on the decoded file (before any resizing).

    The bundled detector knows 28x28 light-on-dark grey digits. The numbers are format facts, not fitted:
    Pillow's grey JPEGs decode with zero chroma, skimage's photographs have a mean channel spread of 38-114
    levels and a median grey of 100-180, MNIST digits a median of 0. A detector folder may override them
    under "domain" in config.json."""
    max_scale: float = 4.0  # longer side at most this many times the model's input
    max_aspect: float = 1.5  # longer side / shorter side
    max_colour_spread: float = 12.0  # mean over pixels of max - min channel, in 8-bit levels
    max_median_grey: float = 96.0  # the background must be dark (digits are light strokes on black)

    def check(self, img, image_size: int) -> tuple[bool, str | None]:
        """(in_domain, reason) for a decoded PIL image in mode L or RGB."""
        w, h = img.size
        if max(w, h) > self.max_scale * image_size:
            return False, f"a {w}x{h} image; this detector knows {image_size}x{image_size} digits"
        if max(w, h) > self.max_aspect * min(w, h):
            return False, f"a {w}x{h} image is not square; this detector knows {image_size}x{image_size} digits"
        arr = np.asarray(img)
        if arr.ndim == 3:
            spread = float((arr.max(-1).astype(np.int16) - arr.min(-1)).mean())
            if spread > self.max_colour_spread:
                return False, "a colour image; this detector knows grey digits"
            arr = np.asarray(img.convert("L"))
        if float(np.median(arr)) > self.max_median_grey:
            return False, "a light background; this detector knows light strokes on a dark background"
        return True, None


class DomainScore:
    """score(pixels, features[, stats]) -> (B,) ratios; > 1 means out of domain (see the module docstring)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.t = {k: v.double() for k, v in tensors.items()}

    @property
    def needs_stats(self) -> bool:
        """True when one component reads the stroke statistics (`raw` then needs them)."""
        return "stats_mean" in self.t

    @classmethod
    def fit(cls, pixels: torch.Tensor, features: torch.Tensor, cal_pixels: torch.Tensor,
            cal_features: torch.Tensor, stats: np.ndarray | None = None, cal_stats: np.ndarray | None = None,
            components: int = PCA_COMPONENTS) -> "DomainScore":
        """PCA and covariances on (pixels, features[, stats]) of the training images; thresholds on the
        calibration ones."""
        x = pixels.reshape(len(pixels), -1).double()
        mean = x.mean(0)
        _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
        t = {"pca_mean": mean, "pca_components": v[:components].contiguous(),
             **_mahalanobis_fit("feat", features.double().numpy())}
        if stats is not None:
            t.update(_mahalanobis_fit("stats", coarse_statistics(np.asarray(stats, np.float64))))
        model = cls({**t, "thresholds": torch.ones(3 if stats is not None else 2, dtype=torch.float64)})
        raw = model.raw(cal_pixels, cal_features, cal_stats)
        per = np.quantile(raw, DOMAIN_QUANTILE, axis=0)
        joint = np.quantile((raw / per).max(1), 1 - DOMAIN_FLAG_RATE)
        model.t["thresholds"] = torch.from_numpy(per * joint)
        return model

    def raw(self, pixels: torch.Tensor, features: torch.Tensor, stats: np.ndarray | None = None) -> np.ndarray:
        """(B, 2 or 3): PCA residual fraction of the centred image's energy, the Mahalanobis distance of the
        features[, and of the stroke statistics]."""
        x = pixels.reshape(len(pixels), -1).double() - self.t["pca_mean"]
        c = self.t["pca_components"]
        resid = x - (x @ c.T) @ c
        cols = [(resid.norm(dim=1) / (x.norm(dim=1) + 1e-6)).numpy(), self._mahalanobis("feat", features)]
        if self.needs_stats:
            if stats is None:
                raise ValueError("this domain score reads the stroke statistics; pass them")
            cols.append(self._mahalanobis("stats", torch.as_tensor(coarse_statistics(np.asarray(stats)))))
        return np.stack(cols, 1)

    def _mahalanobis(self, name: str, v: torch.Tensor) -> np.ndarray:
        d = v.double() - self.t[f"{name}_mean"]
        return ((d @ self.t[f"{name}_precision"]) * d).sum(1).clamp_min(0).sqrt().numpy()

    def __call__(self, pixels: torch.Tensor, features: torch.Tensor, stats: np.ndarray | None = None) -> np.ndarray:
        return (self.raw(pixels, features, stats) / self.t["thresholds"].numpy()).max(1)

    def save(self, folder: str | Path) -> None:
        save_tensors({k: v.float().contiguous() for k, v in self.t.items()}, Path(folder) / DOMAIN_FILE)

    @classmethod
    def load(cls, folder: str | Path) -> "DomainScore | None":
        path = Path(folder) / DOMAIN_FILE
        if not path.exists():
            return None
        tensors, _ = load_tensors(path)
        return cls(tensors)


def _mahalanobis_fit(name: str, v: np.ndarray) -> dict[str, torch.Tensor]:
    """Mean and Ledoit-Wolf precision of (N, D) training vectors, as `{name}_mean` and `{name}_precision`."""
    from sklearn.covariance import LedoitWolf

    return {f"{name}_mean": torch.from_numpy(v.mean(0)), f"{name}_precision": torch.from_numpy(LedoitWolf().fit(v).precision_)}


def verdict(rules_ok: bool, rules_reason: str | None, score: float | None) -> tuple[bool, str | None]:
    """One (in_domain, reason) from both gates; the rules' reason wins, since it is the plainer one."""
    if not rules_ok:
        return False, rules_reason
    if score is not None and score > 1:
        return False, (f"unlike the digits this detector was trained on (domain score {score:.2f} > 1: "
                       "its pixels or its features are outside what the calibration digits span)")
    return True, None
