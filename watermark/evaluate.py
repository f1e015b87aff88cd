"""`ddpm-guard watermark eval`: detection power per attack, empirical FPR, payload bit accuracy,
verify time and the watermark's effect on FID."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from generator.data import load_dataset
from generator.image_io import quantize
from generator.pipeline import generate
from watermark.attacks import ATTACKS, TREE_RING_SIX
from watermark.detect import verify
from watermark.embed import Codec, Scheme, generate_watermarked
from watermark.keys import WatermarkKey


def _scores(x, codec, model, schedule, steps, search, alpha):
    t0 = time.time()
    v = verify(x, codec, model, schedule, alpha=alpha, steps=steps, search=search)
    return v, (time.time() - t0) / max(1, len(x))


def bit_accuracies(verdicts, payload: int) -> list[float]:
    """Per verdict, the share of the 32 payload bits decoded right (before the tag decides validity)."""
    truth = np.unpackbits(np.frombuffer(payload.to_bytes(4, "big"), dtype=np.uint8))
    return [float((np.array([int(c) for c in f"{int(r.extra['decoded_payload'], 16):032b}"]) == truth).mean())
            for r in verdicts]


def tpr_at_fpr(neg: np.ndarray, pos: np.ndarray, fpr: float = 0.01) -> float:
    """Share of positives scoring above the (1 - fpr) quantile of the negatives (higher = more marked)."""
    thr = np.quantile(neg, 1 - fpr, method="higher")
    return float((pos > thr).mean())


def evaluate_watermark(model, schedule, key: WatermarkKey, *, n: int = 500, n_negative: int = 10_000,
                       payload: int = 0xC0FFEE42, steps: int = 10, alpha: float = 0.01, search: bool = False,
                       attacks: tuple[str, ...] = tuple(ATTACKS), seed: int = 0, scheme: Scheme = Scheme(),
                       fid_seeds: int = 0, out_dir: str | Path | None = None, log=None) -> dict:
    log = log or (lambda s: None)
    cfg = model.config
    codec = Codec(key, (cfg.in_channels, cfg.image_size, cfg.image_size), scheme)
    wm, _ = generate_watermarked(model, schedule, key, payload, n, scheme=scheme, seed=seed)
    wm = quantize(wm)
    # negatives: held-out real digits and unwatermarked samples, cycled through the attacks' clean state
    held = load_dataset("mnist5k", "heldout").images
    n_fake = max(0, n_negative - len(held))
    plain = quantize(generate(model, schedule, n_fake, seed=seed + 1)[0]) if n_fake else held[:0]
    neg_imgs = torch.cat([held, plain])[:n_negative]
    neg_v, neg_time = _scores(neg_imgs, codec, model, schedule, steps, search, alpha)
    neg_p = np.array([v.p_value for v in neg_v])
    neg_s = -np.log10(np.maximum(neg_p, 1e-300))
    report: dict = {"n": n, "n_negative": len(neg_imgs), "steps": steps, "alpha": alpha, "search": search,
                    "empirical_fpr": float((neg_p < alpha).mean()),
                    "empirical_fpr_real": float((neg_p[: len(held)] < alpha).mean()),
                    "verify_seconds_per_image_negative": neg_time, "attacks": {}}
    log(f"negatives: FPR {report['empirical_fpr']:.4f} at alpha {alpha}")
    g = torch.Generator().manual_seed(seed + 2)
    for name in attacks:
        x = quantize(ATTACKS[name](wm, g))  # as a user receives it: an 8-bit file
        v, secs = _scores(x, codec, model, schedule, steps, search, alpha)
        p = np.array([r.p_value for r in v])
        s = -np.log10(np.maximum(p, 1e-300))
        acc = bit_accuracies(v, payload)
        report["attacks"][name] = {
            "auc": float(roc_auc_score(np.r_[np.zeros(len(neg_s)), np.ones(len(s))], np.r_[neg_s, s])),
            "tpr_at_1pct_fpr": tpr_at_fpr(neg_s, s), "tpr_at_alpha": float((p < alpha).mean()),
            "bit_accuracy": float(np.mean(acc)), "payload_exact": float(np.mean([r.payload == f"{payload:08x}" for r in v])),
            "verify_seconds_per_image": secs}
        log(f"{name}: {report['attacks'][name]}")
    six = [report["attacks"][a]["tpr_at_1pct_fpr"] for a in ("clean", *TREE_RING_SIX) if a in report["attacks"]]
    report["mean_tpr_clean_plus_tree_ring_six"] = float(np.mean(six)) if six else None
    bits = [r["bit_accuracy"] for k, r in report["attacks"].items() if k != "clean"]
    report["mean_bit_accuracy_attacks"] = float(np.mean(bits)) if bits else None
    if fid_seeds:
        report["fid"] = fid_change(model, schedule, key, payload, n=n, seeds=fid_seeds, scheme=scheme, seed=seed, log=log)
    if out_dir is not None:
        _plot(report, Path(out_dir) / "watermark_tpr.png")
    return report


def fid_change(model, schedule, key: WatermarkKey, payload: int, *, n: int, seeds: int, scheme: Scheme = Scheme(),
               seed: int = 0, log=None) -> dict:
    """FID (project classifier features, against the held-out digits) of watermarked and of plain
    samples for `seeds` seeds: the change, and the plain seed-to-seed spread it should stay within."""
    from generator.classifier import load_classifier, predict
    from generator.metrics import fid

    net = load_classifier()
    ref = predict(net, load_dataset("mnist5k", "heldout").images)[0].numpy()
    rows = {"watermarked": [], "plain": []}
    for s in range(seed + 100, seed + 100 + seeds):
        wm = quantize(generate_watermarked(model, schedule, key, payload, n, scheme=scheme, seed=s)[0])
        plain = quantize(generate(model, schedule, n, seed=s)[0])
        rows["watermarked"].append(fid(predict(net, wm)[0].numpy(), ref))
        rows["plain"].append(fid(predict(net, plain)[0].numpy(), ref))
        if log:
            log(f"FID seed {s}: watermarked {rows['watermarked'][-1]:.2f}, plain {rows['plain'][-1]:.2f}")
    w, p = np.array(rows["watermarked"]), np.array(rows["plain"])
    return {"n": n, "seeds": seeds, "watermarked": w.tolist(), "plain": p.tolist(),
            "change": float(w.mean() - p.mean()), "plain_seed_spread_std": float(p.std(ddof=1)) if seeds > 1 else None,
            "within_spread": bool(abs(w.mean() - p.mean()) <= 2 * p.std(ddof=1)) if seeds > 1 else None}


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["attacks"])
    vals = [report["attacks"][k]["tpr_at_1pct_fpr"] for k in names]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(names, vals)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("TPR at 1% FPR")
    ax.set_title("watermark detection per attack")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
