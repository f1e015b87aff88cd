"""Evaluate a detector on the 1,000 held-out real digits and freshly generated fakes.

Reports, per fake source (training settings with fresh seeds, and sampler settings never used for
training): AUC, AP, TPR at 1% FPR (threshold read off the ROC of these reals) and, at the stored
calibrated threshold, accuracy, TPR and the reals' false-positive rate. Then the same pooled over
in-domain and held-out sources under each perturbation; the zero-shot DIRE score, the classifier and
their fusion on a common subsample; throughput; and a ROC plot.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from generator.perturb import gaussian_blur, gaussian_noise, jpeg, resize_and_back
from detector.data import HELDOUT_SOURCES, N_EVAL_FAKES, TRAIN_SOURCES, fake_sets, real_split
from detector.predict import Detector

PERTURBATIONS = {
    "clean": lambda x, g: x,
    "jpeg90": lambda x, g: jpeg(x, 90),
    "jpeg75": lambda x, g: jpeg(x, 75),
    "jpeg50": lambda x, g: jpeg(x, 50),
    "blur1": lambda x, g: gaussian_blur(x, 1.0),
    "resize0.5": lambda x, g: resize_and_back(x, 0.5),
    "noise0.05": lambda x, g: gaussian_noise(x, g, 0.05),
}


def metrics(p_real: np.ndarray, p_fake: np.ndarray, threshold: float | None = None) -> dict:
    y = np.r_[np.zeros(len(p_real)), np.ones(len(p_fake))]
    s = np.r_[p_real, p_fake]
    fpr, tpr, _ = roc_curve(y, s)
    out = {"auc": float(roc_auc_score(y, s)), "ap": float(average_precision_score(y, s)),
           "tpr_at_1pct_fpr": float(tpr[fpr <= 0.01].max()), "n_real": len(p_real), "n_fake": len(p_fake)}
    if threshold is not None:
        out.update(accuracy=float(((s > threshold) == y).mean()), tpr_at_threshold=float((p_fake > threshold).mean()),
                   fpr_at_threshold=float((p_real > threshold).mean()))
    return out


def evaluate_detector(det: Detector, model, schedule, *, seed: int = 0, cache: Path | None = None,
                      zero_shot_n: int = 60, out_dir: str | Path | None = None, log=None) -> dict:
    real = real_split("heldout")
    sources = TRAIN_SOURCES + HELDOUT_SOURCES
    fakes = fake_sets(model, schedule, sources, N_EVAL_FAKES, 2000 + seed, real, cache, log)
    in_domain = [s.name for s in TRAIN_SOURCES]
    held_out = [s.name for s in HELDOUT_SOURCES]
    thr = det.threshold
    report: dict = {"threshold": thr, "n_real": len(real), "sources": {}, "pooled": {}, "perturbations": {}}

    p_real = det.score(real)["p_synthetic"]
    p_fake = {k: det.score(v)["p_synthetic"] for k, v in fakes.items()}
    for k in fakes:
        report["sources"][k] = {"held_out": k in held_out, **metrics(p_real, p_fake[k], thr)}
    for group, names in (("in_domain", in_domain), ("held_out", held_out)):
        report["pooled"][group] = metrics(p_real, np.concatenate([p_fake[k] for k in names]), thr)

    curves = {}
    for name, fn in PERTURBATIONS.items():
        if log:
            log(f"perturbation {name}")
        g = torch.Generator().manual_seed(seed)
        pr = det.score(fn(real, g))["p_synthetic"]
        row = {}
        for group, names in (("in_domain", in_domain), ("held_out", held_out)):
            pf = np.concatenate([det.score(fn(fakes[k], g))["p_synthetic"] for k in names])
            row[group] = metrics(pr, pf, thr)
            if name in ("clean", "jpeg75"):
                curves[f"{group}, {name}"] = (pr, pf)
        report["perturbations"][name] = row

    if zero_shot_n and det.fusion is not None:
        report["zero_shot"] = _zero_shot(det, real, fakes, in_domain, held_out, zero_shot_n, log)
    report["throughput"] = _throughput(det)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _plot_roc(curves, out / "detector_roc.png")
        report["files"] = [str(out / "detector_roc.png")]
    return report


def _zero_shot(det: Detector, real, fakes, in_domain, held_out, n: int, log) -> dict:
    """Classifier alone, DIRE alone and the fusion, on the same subsample (DIRE costs 20 generator passes)."""
    r = real[torch.linspace(0, len(real) - 1, min(len(real), 5 * n)).long()]
    if log:
        log(f"zero-shot scores on {len(r)} real + {n} per source")
    t0 = time.time()
    s_real = det.score(r, zero_shot=True)
    seconds = time.time() - t0
    out = {"n_real": len(r), "n_per_source": n, "seconds_per_image": seconds / len(r)}
    for group, names in (("in_domain", in_domain), ("held_out", held_out)):
        s_fake = [det.score(fakes[k][:n], zero_shot=True) for k in names]
        row = {}
        for key, sign in (("classifier", 1), ("dire", -1), ("fused", 1)):  # DIRE: a low error means generated
            m = metrics(sign * s_real[key], sign * np.concatenate([s[key] for s in s_fake]))
            row[key] = {"auc": m["auc"], "tpr_at_1pct_fpr": m["tpr_at_1pct_fpr"]}
        out[group] = row
    return out


@torch.inference_mode()
def _throughput(det: Detector, batch_size: int = 256, repeats: int = 10) -> dict:
    x = torch.rand(batch_size, det.config.in_chans, det.config.image_size, det.config.image_size) * 2 - 1
    det.logits(x)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        det.logits(x, batch_size=batch_size)
    dt = time.perf_counter() - t0
    return {"images_per_s": batch_size * repeats / dt, "batch_size": batch_size, "threads": torch.get_num_threads()}


def _plot_roc(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for name, (pr, pf) in curves.items():
        fpr, tpr, _ = roc_curve(np.r_[np.zeros(len(pr)), np.ones(len(pf))], np.r_[pr, pf])
        ax.plot(np.maximum(fpr, 1e-4), tpr, label=f"{name} (AUC {roc_auc_score(np.r_[np.zeros(len(pr)), np.ones(len(pf))], np.r_[pr, pf]):.3f})")
    ax.axvline(0.01, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("false-positive rate (held-out real digits)")
    ax.set_ylabel("true-positive rate")
    ax.set_title("detector ROC")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
