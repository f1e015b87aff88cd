"""Which extra views of an edited file help the edit expert: leave one family out, training families only.

    python bench/detector/expert_views.py [VIEW ...] [GENERATOR_DIR ...] > bench/results/detector_expert_views.json

(BENCHMARKS.md: the four views and the four distilled students under generator/weights/.)

Same protocol as bench/detector/edit_expert.py (ddpm-c is not used): for each training family held out, one
tree ensemble is trained on the training reals and the other families' fakes under the four calibration
edits, then scored on the calibration reals against the held-out family's calibration fakes under
`detector eval`'s edits. The baseline reads the shipped expert's features (detector.experts.expert_features);
each variant adds one view, computed from the same floored, fitted image:
- sharpen: the stroke statistics of an unsharp-masked copy (a blur partly undone, the plateau partly restored);
- moments: intensity moments of the stroke (centroid offset, second and third central moments, mass): a
  symmetric blur keeps the centroid and adds a known amount to the second moments;
- coarse: the stroke statistics of the 2x2-mean-pooled image (14x14), which a blur or a resize changes little;
- profile: the level histogram of the stroke's rim (stroke pixels next to background) against its interior;
- elbo: evidence of another kind, a DDPM's noise-prediction error on the floored image at t = 50, 150, 400
  (its ELBO terms; over the image, the stroke and the background). The scorer is ddpm-d, which no fold holds
  out and the baseline does not train on. Not in the default list (it costs about 10 minutes): name it.
Generator folders given after the views are extra fake families for training: the baseline and all views are
fitted again with them. A distilled student (its config.json has "distill") is held out together with the
bundled DDPM it comes from; an independent generator stays in training for every fold.
"""
import json
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from detector.evaluate import PERTURBATIONS
from detector.experts import TreeEnsemble, expert_features, stroke_levels
from detector.predict import load_detector
from detector.sources import parse_generator
from detector.stats import stroke_statistics
from detector.train import EXPERT_EDITS, FAKE_CACHE, gather
from loo_common import FAMILIES, TESTS, auc
from detector.data import perturb_for_calibration
from generator.checkpoint import load_model
from generator.perturb import gaussian_blur



def view_sharpen(fitted):
    v = stroke_levels(fitted)
    x = v / 127.5 - 1
    sharp = (x + 1.0 * (x - gaussian_blur(x, 1.0))).clamp(-1, 1)
    return stroke_statistics(sharp).numpy()


def view_moments(fitted):
    v = stroke_levels(fitted)[:, 0].double()
    n, h, w = v.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    m = v.sum((1, 2)).clamp(min=1e-6)
    cy, cx = (v * yy).sum((1, 2)) / m, (v * xx).sum((1, 2)) / m
    dy, dx = yy - cy[:, None, None], xx - cx[:, None, None]
    mom = lambda a, b: (v * dy ** a * dx ** b).sum((1, 2)) / m
    feats = [cy - (h - 1) / 2, cx - (w - 1) / 2, m / (255 * h * w), mom(2, 0), mom(0, 2), mom(1, 1),
             mom(3, 0), mom(0, 3), mom(2, 1), mom(1, 2), mom(4, 0), mom(0, 4)]
    return torch.stack(feats, 1).numpy()


def view_coarse(fitted):
    v = stroke_levels(fitted)
    return stroke_statistics(F.avg_pool2d(v, 2) / 127.5 - 1).numpy()


def view_profile(fitted):
    v = stroke_levels(fitted)
    stroke = v > 0
    bg_near = F.max_pool2d((~stroke).float(), 3, 1, 1) > 0
    rim, inner = stroke & bg_near, stroke & ~bg_near
    edges = torch.tensor([float(e) for e in range(48, 256, 16)])
    out = []
    for mask in (rim, inner):
        idx = torch.bucketize(v.flatten(1), edges, right=True)
        hist = torch.zeros(len(v), len(edges) + 1).scatter_add_(1, idx, mask.flatten(1).float())
        out += [hist / mask.flatten(1).sum(1, keepdim=True).clamp(min=1), mask.flatten(1).float().mean(1, keepdim=True)]
    return torch.cat(out, 1).numpy()


ELBO_MODEL = "detector/weights/families/ddpm-d"  # the scorer: no fold holds it out, the eval never uses it
ELBO_TS = (50, 150, 400)


@lru_cache(maxsize=1)
def _elbo_scorer():
    return load_model(ELBO_MODEL, device="cpu")[:2]


@torch.inference_mode()
def view_elbo(fitted):
    """Another kind of evidence: how well a DDPM (ddpm-d, null class) predicts the noise added to the floored
    image at a few t (the terms of its ELBO). Per t: log mean squared error over the whole image, the stroke
    and the background. Fixed noise (seed 0), the same for every call."""
    model, schedule = _elbo_scorer()
    v = stroke_levels(fitted)
    x0, stroke = v / 127.5 - 1, (v > 0).float()
    g = torch.Generator().manual_seed(0)
    feats = []
    for t in ELBO_TS:
        out = []
        for i in range(0, len(x0), 1024):
            xb = x0[i:i + 1024]
            eps = torch.randn(xb.shape, generator=g)
            tt = torch.full((len(xb),), t, dtype=torch.long)
            out.append((model(schedule.add_noise(xb, eps, tt).float(), tt, None) - eps) ** 2)
        err = torch.cat(out)
        for mask in (torch.ones_like(stroke), stroke, 1 - stroke):
            feats.append(torch.log((err * mask).sum((1, 2, 3)) / mask.sum((1, 2, 3)).clamp(min=1) + 1e-6))
    return torch.stack(feats, 1).numpy()


VIEWS = {"sharpen": view_sharpen, "moments": view_moments, "coarse": view_coarse, "profile": view_profile,
         "elbo": view_elbo}


def main() -> None:
    wanted = [a for a in sys.argv[1:] if a in VIEWS] if len(sys.argv) > 1 else [v for v in VIEWS if v != "elbo"]
    extra = [a for a in sys.argv[1:] if a not in VIEWS]  # further generator folders: extra training fakes
    variants = {"baseline": []} | {v: [v] for v in wanted} | ({"all": wanted} if len(wanted) > 1 else {})
    det = load_detector(None, device="cpu")
    real_tr, real_cal, fam_tr, fam_cal, _ = gather(det.config, [parse_generator(s) for s in FAMILIES], None, 0,
                                                   FAKE_CACHE)
    extra_tr, students = {}, set()
    if extra:
        _, _, extra_tr, _, _ = gather(det.config, [parse_generator(s) for s in extra], None, 0, FAKE_CACHE)
        students = {name for name, path in zip(extra_tr, extra)
                    if "distill" in json.loads((Path(path) / "config.json").read_text())}
        variants |= {f"{name} + extra families": views + ["+extra"] for name, views in variants.items()
                     if name in ("baseline", "all")}
    all_views = sorted(set(sum(variants.values(), [])) - {"+extra"})
    # edited training images, drawn once for every variant: two draws of each real, one of each fake
    g = torch.Generator().manual_seed(2)
    edited_real = [perturb_for_calibration(real_tr, k, g) for k in EXPERT_EDITS for _ in range(2)]
    edited_fake = {name: [perturb_for_calibration(f, k, g) for k in EXPERT_EDITS]
                   for name, f in (fam_tr | extra_tr).items()}
    cols = {}  # view -> column slice in the full feature matrix

    def full(x):
        _, _, fitted, stats = det.forward(x, with_stats=True)
        parts = [expert_features(stats, fitted)] + [VIEWS[v](fitted) for v in all_views]
        if not cols:
            start = parts[0].shape[1]
            cols["baseline"] = slice(0, start)
            for v, p in zip(all_views, parts[1:]):
                cols[v] = slice(start, start + p.shape[1])
                start += p.shape[1]
        return np.concatenate(parts, 1)

    fr_all = np.concatenate([full(x) for x in edited_real])
    ff_all = {name: np.concatenate([full(x) for x in xs]) for name, xs in edited_fake.items()}
    tests = {}
    for held in fam_cal:
        for t in TESTS:
            gt = torch.Generator().manual_seed(1)
            r_img, f_img = PERTURBATIONS[t][0](real_cal, gt), PERTURBATIONS[t][0](fam_cal[held], gt)
            tests[held, t] = (full(r_img), full(f_img))

    def pick(a, views):
        return np.concatenate([a[:, cols["baseline"]]] + [a[:, cols[v]] for v in views], 1)

    out = {"cpu": torch.backends.cpu.get_cpu_capability(), "variants": {}}
    for name, views in variants.items():
        rows = {}
        use_extra, views = "+extra" in views, [v for v in views if v != "+extra"]
        for held in fam_cal:
            # a distilled student is held out with the bundled DDPM it comes from
            ff = np.concatenate([ff_all[k] for k in ff_all if k != held and (k in fam_tr or (
                use_extra and not (k in students and held == "ddpm-bundled")))])
            x = np.concatenate([pick(fr_all, views), pick(ff, views)])
            y = np.r_[np.zeros(len(fr_all)), np.ones(len(ff))]
            judge = TreeEnsemble.fit(x, y).logit
            for t in TESTS:
                r, f = tests[held, t]
                rows[f"{held}/{t}"] = auc(judge(pick(r, views)), judge(pick(f, views)))
        mean = float(np.mean(list(rows.values())))
        out["variants"][name] = {"mean": mean, "auc": rows}
        print(name, round(mean, 4), {k: round(v, 3) for k, v in rows.items()}, file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
