"""Which components the out-of-domain score should have, chosen without the eval's test sets.

    python bench/detector/domain_components.py > bench/results/detector_domain_components.json

Everything here comes from the bundled detector's *training* split and a development set of out-of-domain
images that `detector eval` never uses, so the eval's held-out digits and skimage's photographs stay a test:
- in domain: the training reals and fakes split in two halves (seeded). Each design is fitted on half A (and
  thresholded on the usual calibration split, as `detector train` does); its false flags are counted on half
  B's reals, clean and under the eval's edits, and on half B's fakes;
- out of domain: 28x28 crops (grey, inverted, colour) of scikit-learn's two sample photographs
  (china.jpg, flower.jpg) at three scales;
- unseen families: each training family held out of the fit in turn, and its fakes' false flags counted.

Designs: pixels' PCA residual + the features' Mahalanobis distance (v2/v3), and the same with a third
component on the stroke statistics: all 122 of them or only the coarse ones (detector.stats.coarse_statistics),
fitted on clean training digits or on the training digits under every calibration edit.
"""
import json
import sys
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from ddpm_guard.detector import domain
from ddpm_guard.detector.data import CALIBRATION_PERTURBATIONS, perturb_for_calibration
from ddpm_guard.detector.domain import DomainScore
from ddpm_guard.detector.evaluate import PERTURBATIONS
from ddpm_guard.detector.predict import load_detector
from ddpm_guard.detector.sources import parse_generator
from ddpm_guard.detector.train import FAKE_CACHE, gather
from ddpm_guard.generator.image_io import to_tensor
from loo_common import FAMILIES



def dev_crops(seed: int = 1, per_scale: int = 50) -> dict[str, list[Image.Image]]:
    rng = np.random.default_rng(seed)
    out = {"grey": [], "grey, inverted": [], "colour": []}
    for a in load_sample_images().images:
        for size in (84, 140, 280):
            small = Image.fromarray(a)
            small.thumbnail((size, size))
            for _ in range(per_scale):
                x0, y0 = int(rng.integers(0, small.width - 28)), int(rng.integers(0, small.height - 28))
                c = small.crop((x0, y0, x0 + 28, y0 + 28))
                out["grey"].append(c.convert("L"))
                out["grey, inverted"].append(Image.eval(c.convert("L"), lambda v: 255 - v))
                out["colour"].append(c)
    return out


@contextmanager
def statistics_view(design: str):
    """For the "all stats" designs, make the domain score read all 122 statistics instead of the coarse ones."""
    saved = domain.coarse_statistics
    if design.startswith("all stats"):
        domain.coarse_statistics = lambda s: s
    try:
        yield
    finally:
        domain.coarse_statistics = saved


def fit(design: str, x_tr, f_tr, s_clean, s_edit, x_cal, f_cal, s_cal) -> DomainScore:
    if design == "pixels + features":
        return DomainScore.fit(x_tr, f_tr, x_cal, f_cal)
    return DomainScore.fit(x_tr, f_tr, x_cal, f_cal, s_clean if design.endswith("clean fit") else s_edit, s_cal)


def flag_rates(design: str, fitted: tuple, parts: dict) -> dict[str, float]:
    with statistics_view(design):
        ds = fit(design, *fitted)
        return {k: float((ds(x, f, s) > 1).mean()) for k, (_, f, x, s) in parts.items()}


def main() -> None:
    det = load_detector(None, device="cpu")
    fams = [parse_generator(s) for s in FAMILIES]
    real_tr, real_cal, fam_tr, fam_cal, _ = gather(det.config, fams, None, 0, FAKE_CACHE)
    def fwd(x):
        return det.forward(x, with_stats=True)

    designs = ["pixels + features", "all stats, clean fit", "all stats, edit fit", "coarse stats, clean fit",
               "coarse stats, edit fit"]

    out = {"cpu": torch.backends.cpu.get_cpu_capability(), "split": {}, "unseen_family": {}}
    # in-domain halves and the development crops
    perm = torch.randperm(len(real_tr), generator=torch.Generator().manual_seed(5))
    ra, rb = real_tr[perm[: len(perm) // 2]], real_tr[perm[len(perm) // 2:]]
    fake_all = torch.cat(list(fam_tr.values()))
    permf = torch.randperm(len(fake_all), generator=torch.Generator().manual_seed(6))
    fa, fb = fake_all[permf[: len(permf) // 2]], fake_all[permf[len(permf) // 2:]]
    g = torch.Generator().manual_seed(1)
    cal = torch.cat([perturb_for_calibration(real_cal, k, g) for k in CALIBRATION_PERTURBATIONS]
                    + [torch.cat(list(fam_cal.values()))])
    tr = torch.cat([ra, fa])
    _, f_tr, x_tr, s_clean = fwd(tr)
    _, f_cal, x_cal, s_cal = fwd(cal)
    s_edit = np.concatenate([fwd(perturb_for_calibration(tr, k, g))[3] for k in CALIBRATION_PERTURBATIONS])
    ge = torch.Generator().manual_seed(9)
    parts = {"real, clean": fwd(rb)}
    for p in ("tidy", "jpeg75", "jpeg50", "blur1", "resize0.5", "noise0.05"):
        parts[f"real, {p}"] = fwd(PERTURBATIONS[p][0](rb, ge))
    parts["fakes"] = fwd(fb)
    for name, ims in dev_crops().items():
        parts[f"dev crops, {name}"] = fwd(torch.stack([to_tensor(im.convert("L")) for im in ims]))
    for d in designs:
        out["split"][d] = flag_rates(d, (x_tr, f_tr, s_clean, s_edit, x_cal, f_cal, s_cal), parts)
        print(d, {k: round(v, 3) for k, v in out["split"][d].items()}, file=sys.stderr, flush=True)
    # unseen family: fitted without it, its fakes' false flags
    for held in fam_tr:
        g = torch.Generator().manual_seed(1)
        cal = torch.cat([perturb_for_calibration(real_cal, k, g) for k in CALIBRATION_PERTURBATIONS]
                        + [torch.cat([v for k, v in fam_cal.items() if k != held])])
        tr = torch.cat([real_tr] + [v for k, v in fam_tr.items() if k != held])
        _, f_tr, x_tr, s_clean = fwd(tr)
        _, f_cal, x_cal, s_cal = fwd(cal)
        s_edit = np.concatenate([fwd(perturb_for_calibration(tr, k, g))[3] for k in CALIBRATION_PERTURBATIONS])
        part = {held: fwd(fam_tr[held])}
        row = {d: flag_rates(d, (x_tr, f_tr, s_clean, s_edit, x_cal, f_cal, s_cal), part)[held]
               for d in ("pixels + features", "coarse stats, edit fit")}
        out["unseen_family"][held] = row
        print(held, row, file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
