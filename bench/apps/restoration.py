"""Restoration on held-out digits: DDNM with the bundled digit model against the classical baselines.

Tasks, each on `--n` held-out MNIST digits (an even spread over the 1,000 never trained on), with the
degraded input rounded to 8 bits as a user's file would be:
- sr4: 4x4 box averaging to 7x7; baseline: bicubic upsampling (PIL).
- deblur: circular Gaussian blur, std 1.5 px; baselines: scikit-image's Wiener (balance swept on the
  training digits, never on these) and Richardson-Lucy (iterations swept the same way).
- box / half: the middle 14x14 square / the right half missing; baseline: skimage inpaint_biharmonic.
Metrics: PSNR and SSIM against the truth, the RMS measurement error ||A x - y|| (in [0, 1] units),
the digit classifier's accuracy on the outputs, FID on its features against the other held-out
digits' features, and, for DDNM with a watermark key, the share of outputs whose watermark verifies.

    python bench/apps/restoration.py --n 200
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.restoration import inpaint_biharmonic, richardson_lucy, wiener

from ddpm_guard.api.apps import built_in_mask
from ddpm_guard.generator.checkpoint import load_model
from ddpm_guard.generator.classifier import load_classifier, predict
from ddpm_guard.generator.data import load_dataset
from ddpm_guard.generator.image_io import quantize
from ddpm_guard.generator.metrics import fid
from ddpm_guard.generator.restore import blur, blur_image, ddnm, downsample, inpaint

SIGMA = 1.5


def to01(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) / 2).numpy().astype(np.float64)


def psf(sigma: float, size: int = 28) -> np.ndarray:
    """The circular blur's kernel as an image-sized PSF centred for skimage."""
    delta = torch.zeros(1, 1, size, size)
    delta[..., size // 2, size // 2] = 1
    return blur_image(delta, sigma)[0, 0].numpy().astype(np.float64)


def bicubic(y: torch.Tensor, scale: int) -> torch.Tensor:
    out = []
    for im in to01(y[:, 0]):
        pil = Image.fromarray(im.astype(np.float32), mode="F").resize((im.shape[1] * scale, im.shape[0] * scale),
                                                                     Image.BICUBIC)
        out.append(torch.from_numpy(np.array(pil)).float())
    return (torch.stack(out)[:, None] * 2 - 1).clamp(-1, 1)


def classical_deblur(y: torch.Tensor, how: str, param: float) -> torch.Tensor:
    k = psf(SIGMA)
    out = []
    for im in to01(y[:, 0]):
        if how == "wiener":
            r = wiener(im, k, balance=param, clip=False)
        else:
            r = richardson_lucy(np.clip(im, 1e-6, 1), k, num_iter=int(param), clip=False)
        out.append(torch.from_numpy(np.asarray(r, dtype=np.float32)))
    return (torch.stack(out)[:, None] * 2 - 1).clamp(-1, 1)


def biharmonic(y: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    m = (known[0, 0] == 0).numpy()
    return torch.stack([torch.from_numpy(inpaint_biharmonic(im, m).astype(np.float32)) for im in to01(y[:, 0])])[:, None] * 2 - 1


def metrics(out: torch.Tensor, truth: torch.Tensor, labels: torch.Tensor, measure, y: torch.Tensor, judge,
            ref_feats: np.ndarray) -> dict:
    o, t = to01(out[:, 0]), to01(truth[:, 0])
    feats, logits = predict(judge, out)
    cons = (measure(out) - y).flatten(1).pow(2).mean(1).sqrt() / 2  # [0, 1] units
    return {"psnr": float(np.mean([peak_signal_noise_ratio(a, b, data_range=1) for a, b in zip(t, o)])),
            "ssim": float(np.mean([structural_similarity(a, b, data_range=1) for a, b in zip(t, o)])),
            "consistency_rms": float(cons.mean()), "class_accuracy": float((logits.argmax(1) == labels).float().mean()),
            "fid": fid(feats.numpy(), ref_feats)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--tasks", nargs="+", default=["sr4", "deblur", "box", "half"])
    ap.add_argument("--watermark", action="store_true", help="also the keyed, deterministic run and its detection rate")
    ap.add_argument("--travel", nargs="*", default=["10:3"], help="time-travel settings JUMP:REPEATS for the inpainting tasks")
    ap.add_argument("--no-baselines", action="store_true", help="only the DDNM rows (for a sweep)")
    a = ap.parse_args()
    torch.manual_seed(0)
    model, schedule, _ = load_model(None)
    judge = load_classifier()
    held = load_dataset("mnist5k", "heldout")
    idx = torch.arange(0, 1000, 1000 // a.n)[: a.n]
    truth, labels = held.images[idx], held.labels[idx]
    rest = torch.ones(1000, dtype=torch.bool)
    rest[idx] = False
    ref_feats = predict(judge, held.images[rest])[0].numpy()
    train = load_dataset("mnist5k", "train")
    tune = train.images[::40][:100]  # baseline parameters are swept here, never on the evaluation digits
    report = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
              "n": a.n, "steps": a.steps, "tasks": {}}
    for task in a.tasks:
        known = None
        if task == "sr4":
            op = downsample(4)
        elif task == "deblur":
            op = blur(SIGMA, (28, 28))
        else:
            known = built_in_mask(task, 28, 28)
            op = inpaint(known)
        # the user's file, rounded to 8 bits: the full blur, the 7x7 thumbnail, or the digit with its hole
        if task == "deblur":
            y_file = quantize(blur_image(truth, SIGMA))
        else:
            y_file = quantize(op.forward(truth)) if task == "sr4" else quantize(truth) * known
        y = y_file
        # the measurement consistency is against the user's file, with the true operator (the full blur)
        measure = (lambda x: blur_image(x, SIGMA)) if task == "deblur" else op.forward
        rows = {}
        if task == "sr4":
            rows["bicubic"] = bicubic(y_file, 4)
        elif task == "deblur":
            tune_y = quantize(blur_image(tune, SIGMA))
            best = {}
            for how, grid in (("wiener", (0.003, 0.01, 0.03, 0.1, 0.3)), ("richardson_lucy", (5, 10, 20, 40, 80))):
                scores = {p: float(((classical_deblur(tune_y, how, p) - tune) ** 2).mean()) for p in grid}
                best[how] = min(scores, key=scores.get)
                rows[f"{how} ({'balance' if how == 'wiener' else 'iterations'} {best[how]})"] = classical_deblur(y_file, how, best[how])
        else:
            rows["biharmonic"] = biharmonic(y_file, known)
        runs = [("ddnm", dict(eta=0.85)), ("ddnm eta 0", dict(eta=0.0))]
        if known is not None:
            for jr in a.travel:
                j, r = map(int, jr.split(":"))
                runs.append((f"ddnm + time travel (jump {j}, {r}x)", dict(eta=0.85, jump=j, repeats=r)))
        if a.no_baselines:
            rows = {}
            runs = runs[2:] if known is not None else runs[:1]
        for name, kw in runs:
            t = time.perf_counter()
            gen = torch.Generator().manual_seed(0)
            outs = [ddnm(model, schedule, op, y[i:i + 100], (len(y[i:i + 100]), 1, 28, 28), steps=a.steps,
                         generator=gen, **kw) for i in range(0, len(y), 100)]
            out = torch.cat(outs)
            if known is not None:
                out = torch.where(known.bool(), y_file, out)
            rows[name] = quantize(out)
            rows[name + " seconds/image"] = (time.perf_counter() - t) / len(y)
        res = {}
        for name, out in rows.items():
            if name.endswith("seconds/image"):
                res[name.removesuffix(" seconds/image")]["seconds_per_image"] = round(out, 4)
                continue
            res[name] = metrics(out, truth, labels, measure, y_file, judge, ref_feats)
        res["degraded input"] = {"class_accuracy": float((predict(judge, y_file if task != "sr4" else
                                                                  F.interpolate(y_file, scale_factor=4, mode="nearest"))[1].argmax(1) == labels).float().mean())}
        if a.watermark:
            from ddpm_guard.watermark.latent.codec import Codec, watermarked_noise
            from ddpm_guard.watermark.keys import WatermarkKey
            from ddpm_guard.watermark.verify import verify_images

            key = WatermarkKey(bytes(range(32)))
            x_T = watermarked_noise(Codec(key, (1, 28, 28)), 7, len(y), torch.Generator().manual_seed(1))
            out = quantize(ddnm(model, schedule, op, y, tuple(x_T.shape), steps=a.steps, eta=0.0, x_T=x_T))
            if known is not None:
                out = torch.where(known.bool(), y_file, out)
            v = verify_images(out, {"k": key}, model, schedule, alpha=0.01)
            res["watermark_detected_at_alpha_0.01"] = sum(r.detected for r in v) / len(v)
        report["tasks"][task] = res
        print(json.dumps({task: res}), flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
