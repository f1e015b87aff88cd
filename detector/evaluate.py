"""Evaluate a detector the way its users meet it: per generator family (the ones it trained on and ones it
never saw), under the edits uploads go through, at the threshold it ships with, and on inputs it does not
know.

- Reals: the 1,000 held-out mnist5k digits (never trained or calibrated on). Fakes: fresh seeds for every
  family; for the bundled DDPM also sampler settings never used in training.
- Perturbation x family: AUC, TPR@1%FPR, and at the stored threshold the fakes' TPR and the reals' FPR.
  "tidy" is the shortcut test: the fakes' near-black background set to exactly 0, the reals' background
  given faint noise; evidence that lives only in the background does not survive it.
- Reliability: predicted p_synthetic against the observed fraction of fakes, in ten bins (+ ECE).
- Out of domain: skimage's photographs, 28x28 grey and colour crops of them (some inverted to a dark
  background), text screenshots (skimage's page and text, and rendered text in both polarities); the
  false out-of-domain rate on real digits, clean and edited, and on fakes.
- Throughput of the default path.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ddpm_guard.generator.image_io import decode_image, fit_to, quantize, read_bytes, to_tensor
from ddpm_guard.generator.perturb import background_noise, gaussian_blur, gaussian_noise, jpeg, resize_and_back, tidy
from ddpm_guard.detector.data import HELDOUT_SOURCES, TRAIN_SOURCES, fake_sets, real_split
from ddpm_guard.detector.predict import Detector
from ddpm_guard.detector.sources import Family, check_shape, family_fakes

TIDY_LEVEL, BACKGROUND_AMPLITUDE = 20, 4  # the shortcut test (8-bit levels): fakes <= 20 -> 0; reals' background +|N(0, 4)|
N_EVAL_PER_SOURCE = 150  # bundled DDPM: 11 sampler settings x 150; other DDPMs: 5 x 150; VAE/GAN: 600

def _same(op):
    """An edit applied alike to reals and fakes."""
    return op, op


# name -> (edit of the reals, edit of the fakes), each (images, generator) -> images; alike except the "tidy" ones
PERTURBATIONS = {
    "clean": _same(lambda x, g: x),
    "tidy": (lambda x, g: quantize(background_noise(x, g, BACKGROUND_AMPLITUDE)), lambda x, g: tidy(x, TIDY_LEVEL)),
    "jpeg90": _same(lambda x, g: jpeg(x, 90)),
    "jpeg75": _same(lambda x, g: jpeg(x, 75)),
    "jpeg50": _same(lambda x, g: jpeg(x, 50)),
    "blur1": _same(lambda x, g: gaussian_blur(x, 1.0)),
    "resize0.5": _same(lambda x, g: resize_and_back(x, 0.5)),
    "noise0.05": _same(lambda x, g: gaussian_noise(x, g, 0.05)),
    # the shortcut test again, before an edit: evidence a forger can remove by tidying first must not carry an edit
    "tidy+jpeg75": (lambda x, g: jpeg(quantize(background_noise(x, g, BACKGROUND_AMPLITUDE)), 75),
                    lambda x, g: jpeg(tidy(x, TIDY_LEVEL), 75)),
    "tidy+blur1": (lambda x, g: gaussian_blur(quantize(background_noise(x, g, BACKGROUND_AMPLITUDE)), 1.0),
                   lambda x, g: gaussian_blur(tidy(x, TIDY_LEVEL), 1.0)),
}


def edit_pair(name: str, real: torch.Tensor, fake: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(edited reals, edited fakes): the reals draw from `gen` first, then the fakes."""
    edit_real, edit_fake = PERTURBATIONS[name]
    r = edit_real(real, gen)
    return r, edit_fake(fake, gen)


def metrics(p_real: np.ndarray, p_fake: np.ndarray,
            threshold: float | tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Ranking metrics, and with a threshold (one for all, or (reals', fakes') per-image thresholds, as an edit
    router sets them) the decisions' accuracy, TPR and FPR."""
    y = np.r_[np.zeros(len(p_real)), np.ones(len(p_fake))]
    s = np.r_[p_real, p_fake]
    fpr, tpr, _ = roc_curve(y, s)
    out = {"auc": float(roc_auc_score(y, s)), "ap": float(average_precision_score(y, s)),
           "tpr_at_1pct_fpr": float(tpr[fpr <= 0.01].max()), "n_real": len(p_real), "n_fake": len(p_fake)}
    if threshold is not None:
        t_real, t_fake = threshold if isinstance(threshold, tuple) else (threshold, threshold)
        called_r, called_f = p_real > t_real, p_fake > t_fake
        out.update(accuracy=float((np.r_[called_r, called_f] == y).mean()), tpr_at_threshold=float(called_f.mean()),
                   fpr_at_threshold=float(called_r.mean()))
    return out


def eval_fakes(family: Family, n: int, seed: int, real: torch.Tensor, cache: Path | None, log=None) -> dict:
    """{source: fakes} with fresh seeds; the bundled DDPM adds the sampler settings it never trained on."""
    if family.kind == "ddpm" and family.path is None:
        from ddpm_guard.generator.checkpoint import load_model

        model, schedule, _ = load_model(None)
        return fake_sets(model, schedule, TRAIN_SOURCES + HELDOUT_SOURCES, n, seed, real, cache, log)
    return family_fakes(family, n, seed, real, cache, log)


def evaluate_detector(det: Detector, families: list[Family], *, seed: int = 0, cache: Path | None = None,
                      zero_shot_n: int = 0, out_dir: str | Path | None = None, log=None) -> dict:
    cfg = det.net.config
    for f in families:
        check_shape(f, (cfg.in_chans, cfg.image_size, cfg.image_size))
    real = real_split("heldout")
    trained = set((det.meta.get("train") or {}).get("families", {}))
    report: dict = {"threshold": det.threshold, "routed_thresholds": None if det.router is None else det.router.by_edit,
                    "n_real": len(real), "families": {}, "sources": {},
                    "perturbations": {}, "pooled": {}}
    fakes = {f.name: eval_fakes(f, N_EVAL_PER_SOURCE, 2000 + seed, real, cache, log) for f in families}
    for name, srcs in fakes.items():
        report["families"][name] = {"trained_on": name in trained, "n": sum(map(len, srcs.values())),
                                    "sources": list(srcs)}

    def scored(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:  # (p_synthetic, the threshold each was judged at)
        s = det.score(x)
        return s["p_synthetic"], s["threshold"]

    p_real, t_real = scored(real)
    for fam, srcs in fakes.items():  # clean, per source
        for src, x in srcs.items():
            pf, tf = scored(x)
            report["sources"][f"{fam}/{src}"] = metrics(p_real, pf, (t_real, tf))
    groups = {"trained families": [f for f in fakes if f in trained], "unseen families": [f for f in fakes if f not in trained]}
    curves, all_clean = {}, None
    for pname, (edit_real, edit_fake) in PERTURBATIONS.items():
        if log:
            log(f"perturbation {pname}")
        row, by_family = {}, {}
        g = torch.Generator().manual_seed(seed)
        pr, tr = scored(edit_real(real, g))  # once per edit; each family's fakes then draw from the same state
        after_real = g.get_state()
        for fam, srcs in fakes.items():
            g.set_state(after_real)
            by_family[fam] = scored(edit_fake(torch.cat(list(srcs.values())), g))
            row[fam] = metrics(pr, by_family[fam][0], (tr, by_family[fam][1]))
        for gname, names in groups.items():
            if names:
                pf, tf = (np.concatenate([by_family[k][i] for k in names]) for i in (0, 1))
                row[gname] = metrics(pr, pf, (tr, tf))
                if pname in ("clean", "tidy", "jpeg75"):
                    curves[f"{gname}, {pname}"] = (pr, pf)
        row["real_fpr_at_threshold"] = float((pr > tr).mean())
        report["perturbations"][pname] = row
        if pname == "clean":
            all_clean = (pr, np.concatenate([v[0] for v in by_family.values()]))
    report["reliability"] = reliability(*all_clean)
    report["out_of_domain"] = out_of_domain(det, real, fakes, seed)
    if zero_shot_n and det.fusion is not None and any(f.path is None and f.kind == "ddpm" for f in families):
        bundled = next(f.name for f in families if f.path is None and f.kind == "ddpm")
        report["zero_shot"] = _zero_shot(det, real, fakes[bundled], zero_shot_n, log)
    report["throughput"] = _throughput(det)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _plot_roc(curves, out / "detector_roc.png")
        _plot_reliability(report["reliability"], out / "detector_reliability.png")
        report["files"] = [str(out / "detector_roc.png"), str(out / "detector_reliability.png")]
    return report


def reliability(p_real: np.ndarray, p_fake: np.ndarray, bins: int = 10) -> dict:
    """Per bin of predicted p_synthetic: mean prediction, observed fraction of fakes (classes weighted
    equally, the prior the calibration was fitted at), count; and the expected calibration error."""
    p = np.r_[p_real, p_fake]
    y = np.r_[np.zeros(len(p_real)), np.ones(len(p_fake))]
    w = np.r_[np.full(len(p_real), 0.5 / len(p_real)), np.full(len(p_fake), 0.5 / len(p_fake))]
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = idx == b
        if not m.any():
            continue
        wm = w[m].sum()
        pred, obs = float((p[m] * w[m]).sum() / wm), float((y[m] * w[m]).sum() / wm)
        rows.append({"bin": [float(edges[b]), float(edges[b + 1])], "mean_p": pred, "fraction_fake": obs,
                     "count": int(m.sum())})
        ece += wm * abs(pred - obs)
    return {"bins": rows, "ece": float(ece)}


# ---- out of domain -----------------------------------------------------------------------------------

def _skimage_images() -> list[tuple[str, Image.Image]]:
    import skimage

    folder = Path(os.path.dirname(skimage.__file__)) / "data"
    out = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in (".png", ".jpg"):
            out.append((p.stem, decode_image(read_bytes(p), name=str(p))))
    return out


def _text_screens(rng: np.random.Generator) -> list[Image.Image]:
    """Rendered text in PIL's default font: light on dark (a terminal) and dark on light, 28-96 px squares."""
    words = ("scan the upload before you trust it", "provenance 2026 invoice total 417.30",
             "def main(): return 0", "ERROR 404 not found", "the quick brown fox jumps over 13 lazy dogs")
    out = []
    for i in range(40):
        size = int(rng.choice([28, 56, 96]))
        light_on_dark = i % 2 == 0
        img = Image.new("L", (size, size), 0 if light_on_dark else 255)
        d = ImageDraw.Draw(img)
        y = int(rng.integers(-4, 6))
        while y < size:
            d.text((int(rng.integers(-20, 2)), y), words[int(rng.integers(len(words)))], fill=255 if light_on_dark else 0)
            y += 11
        out.append(img)
    return out


def ood_sets(seed: int = 0) -> dict[str, list[Image.Image]]:
    """The out-of-domain inputs: whole photographs, 28x28 crops (grey, inverted grey, colour), text screens."""
    rng = np.random.default_rng(seed)
    photos = [(n, im) for n, im in _skimage_images() if n not in ("page", "text")]
    crops_grey, crops_inv, crops_colour = [], [], []
    for _, im in photos:
        small = im.copy()
        small.thumbnail((84, 84))
        for _ in range(4):
            x0, y0 = int(rng.integers(0, max(1, small.width - 28))), int(rng.integers(0, max(1, small.height - 28)))
            c = small.crop((x0, y0, x0 + 28, y0 + 28))
            g = c.convert("L")
            crops_grey.append(g)
            crops_inv.append(Image.eval(g, lambda v: 255 - v))
            if c.mode == "RGB":
                crops_colour.append(c)
    texts = [im for n, im in _skimage_images() if n in ("page", "text")]
    text_crops = []
    for im in texts:
        g = im.convert("L")
        for _ in range(10):
            x0, y0 = int(rng.integers(0, g.width - 56)), int(rng.integers(0, g.height - 56))
            c = g.crop((x0, y0, x0 + 56, y0 + 56))
            text_crops += [c, Image.eval(c, lambda v: 255 - v)]
    return {"photographs": [im for _, im in photos], "photo crops 28x28 grey": crops_grey,
            "photo crops 28x28 grey, inverted": crops_inv, "photo crops 28x28 colour": crops_colour,
            "text screenshots": texts + text_crops + _text_screens(rng)}


def domain_flags(det: Detector, images: list[Image.Image]) -> dict:
    """How many images each gate flags (rules alone, score alone, either)."""
    cfg = det.config
    mode = "L" if cfg.in_chans == 1 else "RGB"
    x = torch.stack([fit_to(to_tensor(im.convert(mode))[None], (cfg.in_chans, cfg.image_size, cfg.image_size))[0]
                     for im in images])
    score = det.score(x).get("domain_score")
    rules = np.array([not det.domain.check(im, cfg.image_size)[0] for im in images])
    by_score = np.zeros(len(images), bool) if score is None else score > 1
    return {"n": len(images), "flagged": float((rules | by_score).mean()), "by_rules": float(rules.mean()),
            "by_score": float(by_score.mean())}


def _as_pils(x: torch.Tensor) -> list[Image.Image]:
    arr = ((x[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return [Image.fromarray(a, "L") for a in arr]


def out_of_domain(det: Detector, real: torch.Tensor, fakes: dict, seed: int = 0) -> dict:
    out = {name: domain_flags(det, ims) for name, ims in ood_sets(seed).items()}
    g = torch.Generator().manual_seed(seed)
    in_domain = {"real digits, clean": real}
    for pname in ("tidy", "jpeg75", "jpeg50", "blur1", "resize0.5", "noise0.05"):
        in_domain[f"real digits, {pname}"] = PERTURBATIONS[pname][0](real, g)
    for fam, srcs in fakes.items():
        in_domain[f"fakes: {fam}"] = torch.cat(list(srcs.values()))
    out["false flags on in-domain images"] = {k: domain_flags(det, _as_pils(v)) for k, v in in_domain.items()}
    return out


# ---- zero-shot, throughput, plots --------------------------------------------------------------------

def _zero_shot(det: Detector, real, fakes: dict, n: int, log) -> dict:
    """Classifier alone, DIRE alone and the fusion, on the same subsample (DIRE costs 20 generator passes)."""
    r = real[torch.linspace(0, len(real) - 1, min(len(real), 5 * n)).long()]
    if log:
        log(f"zero-shot scores on {len(r)} real + {n} per source")
    t0 = time.time()
    s_real = det.score(r, zero_shot=True)
    seconds = time.time() - t0
    s_fake = [det.score(x[:n], zero_shot=True) for x in fakes.values()]
    out = {"n_real": len(r), "n_per_source": n, "seconds_per_image": seconds / len(r)}
    for key, sign in (("classifier", 1), ("dire", -1), ("fused", 1)):  # DIRE: a low error means generated
        m = metrics(sign * s_real[key], sign * np.concatenate([s[key] for s in s_fake]))
        out[key] = {"auc": m["auc"], "tpr_at_1pct_fpr": m["tpr_at_1pct_fpr"]}
    return out


@torch.inference_mode()
def _throughput(det: Detector, batch_size: int = 256, repeats: int = 10) -> dict:
    """The default path's scoring (network, calibration and the domain score) on fitted 28x28 batches."""
    x = torch.rand(batch_size, det.config.in_chans, det.config.image_size, det.config.image_size) * 2 - 1
    det.score(x)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        det.score(x)
    dt = time.perf_counter() - t0
    return {"images_per_s": batch_size * repeats / dt, "batch_size": batch_size, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _plot_roc(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    for name, (pr, pf) in curves.items():
        y, s = np.r_[np.zeros(len(pr)), np.ones(len(pf))], np.r_[pr, pf]
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(np.maximum(fpr, 1e-4), tpr, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
    ax.axvline(0.01, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("false-positive rate (held-out real digits)")
    ax.set_ylabel("true-positive rate")
    ax.set_title("detector ROC")
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_reliability(rel: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=120)
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.plot([b["mean_p"] for b in rel["bins"]], [b["fraction_fake"] for b in rel["bins"]], "o-")
    ax.set_xlabel("predicted p_synthetic")
    ax.set_ylabel("observed fraction synthetic (classes weighted equally)")
    ax.set_title(f"reliability, clean (ECE {rel['ece']:.3f})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
