"""Colorization on held-out photos: the bundled photos32 model with DDNM against two baselines.

Data: the 516 held-out 32x32 patches of `photos32` (cut only from chelsea.png and rocket.jpg, which the
model never saw), and those two photographs whole, at full resolution (the thumbnail path of
`generator.restore.colorize_image`). Baselines: "grey" (R = G = B = luma) and "mean colour" (the
training patches' average chroma added to the luma, projected back so the luma is exact).
Metrics, on 8-bit outputs:
- gray-consistency error: mean |luma(output) - luma(input)| in 8-bit levels (DDNM: exact up to rounding);
- colourfulness (Hasler & Suesstrunk 2003) beside the ground truth's;
- colour-histogram error: total-variation distance between the output's and the truth's 16-bin
  histograms of the two opponent chroma axes (rg = R - G, yb = (R + G)/2 - B), mean of the two;
- PSNR against the true colours.

    python bench/apps/colorize.py --steps 100
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ddpm_guard.generator.checkpoint import BUNDLED_COLOR, load_model
from ddpm_guard.generator.data import load_dataset, photo_paths
from ddpm_guard.generator.image_io import load_image, quantize
from ddpm_guard.generator.metrics import psnr_db
from ddpm_guard.generator.restore import LUMA, colorize_image, finish, gray


def luma(x: torch.Tensor) -> torch.Tensor:
    return (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)


def opponent(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r, g, b = ((x + 1) * 127.5).unbind(1)
    return r - g, (r + g) / 2 - b


def colourfulness(x: torch.Tensor) -> float:
    """Per image, then averaged: sqrt(sd_rg^2 + sd_yb^2) + 0.3 sqrt(mu_rg^2 + mu_yb^2) on 0-255 values."""
    rg, yb = opponent(x)
    rg, yb = rg.flatten(1), yb.flatten(1)
    c = (rg.std(1) ** 2 + yb.std(1) ** 2).sqrt() + 0.3 * (rg.mean(1) ** 2 + yb.mean(1) ** 2).sqrt()
    return float(c.mean())


def hist_error(out: torch.Tensor, truth: torch.Tensor, bins: int = 16) -> float:
    errs = []
    for a, b in zip(opponent(out), opponent(truth)):
        for i in range(len(out)):
            ha = torch.histc(a[i], bins, -255, 255)
            hb = torch.histc(b[i], bins, -255, 255)
            errs.append(0.5 * (ha / ha.sum() - hb / hb.sum()).abs().sum().item())
    return float(np.mean(errs))


def scores(out: torch.Tensor, truth: torch.Tensor) -> dict:
    out, truth = quantize(out), quantize(truth)
    return {"gray_error_levels": float(((luma(out) - luma(truth)).abs() * 127.5).mean()),
            "colourfulness": colourfulness(out), "colourfulness_truth": colourfulness(truth),
            "chroma_hist_tv": hist_error(out, truth), "psnr": psnr_db(out, truth)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--variants", nargs="*", default=[], choices=["eta0", "travel", "mean4"],
                    help="alternatives on the patches only: eta 0, time travel (jump 10, 3x), the mean of 4 samples' chroma")
    ap.add_argument("--photos-only", action="store_true", help="only the two held-out photographs")
    a = ap.parse_args()
    model, schedule, _ = load_model(a.checkpoint or BUNDLED_COLOR)
    train = load_dataset("photos32", "train").images
    shift = (train - luma(train)).mean((0, 2, 3)).view(1, 3, 1, 1)  # the training patches' mean chroma
    held = load_dataset("photos32", "heldout").images
    op = gray()

    def baselines(x: torch.Tensor) -> dict:
        y = luma(x)
        return {"grey": y.expand(-1, 3, -1, -1), "mean colour": finish(y + shift, op, y)}

    report = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
              "steps": a.steps, "patches": {"n": len(held)}, "photos": {}}
    if a.variants:
        def run(kw: dict, seed: int = 0) -> torch.Tensor:
            gen = torch.Generator().manual_seed(seed)
            return torch.cat([colorize_image(model, schedule, luma(held[i:i + 172]), steps=a.steps, generator=gen, **kw)
                              for i in range(0, len(held), 172)])
        for v in a.variants:
            t = time.perf_counter()
            if v == "mean4":  # the posterior mean of the colours: average 4 samples, then put the luma back
                out = finish(torch.stack([run({}, seed) for seed in range(4)]).mean(0), op, luma(held))
            else:
                out = run({"eta": 0.0} if v == "eta0" else {"jump": 10, "repeats": 3})
            report["patches"][v] = {**scores(out, held), "seconds_per_patch": (time.perf_counter() - t) / len(held)}
            print(json.dumps({v: report["patches"][v]}), flush=True)
        return
    if a.photos_only:
        report.pop("patches")
        return _photos(model, schedule, baselines, a, report)
    outs = baselines(held)
    t = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    outs["ddnm"] = torch.cat([colorize_image(model, schedule, luma(held[i:i + 172]), steps=a.steps, generator=gen)
                              for i in range(0, len(held), 172)])
    report["patches"]["ddnm_seconds_per_patch"] = (time.perf_counter() - t) / len(held)
    for k, v in outs.items():
        report["patches"][k] = scores(v, held)
    print(json.dumps(report["patches"]), flush=True)
    _photos(model, schedule, baselines, a, report)


def _photos(model, schedule, baselines, a, report: dict) -> None:
    """The held-out photographs whole: one DDNM run, and the mean of 4 (the `colorize` default)."""
    from ddpm_guard.generator.image_io import save_image

    for path in photo_paths("heldout"):
        x = load_image(path, mode="RGB")[None]
        outs = baselines(x)
        res = {}
        for name, k in (("ddnm", 1), ("ddnm, mean of 4", 4)):
            t = time.perf_counter()
            outs[name] = colorize_image(model, schedule, luma(x), samples=k, steps=a.steps,
                                        generator=torch.Generator().manual_seed(0))
            res[name + " seconds"] = time.perf_counter() - t
        res.update({k: scores(v, x) for k, v in outs.items()})
        res["size"] = list(x.shape[-2:])
        report["photos"][path.name] = res
        save_image(torch.cat([x[0], outs["ddnm, mean of 4"][0]], -1), f"bench/results/colorize_{path.stem}.png")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
