"""A CNN for edited files that sees the top of the level range stretched: leave one family out, training
families only (ddpm-c is not used).

    python bench/detector/edit_cnn.py [EPOCHS] > bench/results/detector_edit_cnn.json

The edit expert's trees read global histograms of the stroke's levels. Where along a stroke the top levels lie
(a real stroke's blurred core stays evenly bright along its length) is spatial, which a histogram cannot hold,
and the detector's network sees [-1, 1] pixels, where the top ten levels are a rounding error. This CNN reads
two channels of the floored image: the levels, and the band 160-255 stretched to [0, 1]. It is trained only on
edited files (the four calibration edits, drawn as for the expert: two draws of each real, one of each fake),
as the expert is, and scored like bench/detector/expert_views.py: the held-out family's calibration fakes
against the calibration reals under `detector eval`'s edits. Printed beside it: the trees (the shipped
expert's features) and their fusion (the sum of the two logits, each standardised on the training set).
"""
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detector.data import perturb_for_calibration
from detector.evaluate import PERTURBATIONS
from detector.experts import TreeEnsemble, expert_features, stroke_levels
from detector.predict import load_detector
from detector.sources import parse_generator
from detector.train import EXPERT_EDITS, FAKE_CACHE, gather
from loo_common import FAMILIES, TESTS, auc

BAND = 160.0


def inputs(fitted: torch.Tensor) -> torch.Tensor:
    v = stroke_levels(fitted)
    return torch.cat([v / 127.5 - 1, ((v - BAND) / (255 - BAND)).clamp(0, 1) * 2 - 1], 1)


class EditCNN(nn.Module):
    def __init__(self, w: int = 32):
        super().__init__()
        block = lambda i, o: [nn.Conv2d(i, o, 3, 1, 1), nn.BatchNorm2d(o), nn.ReLU()]
        self.body = nn.Sequential(*block(2, w), *block(w, w), nn.MaxPool2d(2), *block(w, 2 * w), *block(2 * w, 2 * w),
                                  nn.MaxPool2d(2), *block(2 * w, 4 * w))
        self.head = nn.Linear(8 * w, 1)

    def forward(self, x):
        h = self.body(x)
        return self.head(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)).squeeze(1)


def train_cnn(xr: torch.Tensor, xf: torch.Tensor, epochs: int, seed: int = 0) -> EditCNN:
    torch.manual_seed(seed)
    net = EditCNN()
    x = torch.cat([xr, xf])
    y = torch.cat([torch.zeros(len(xr)), torch.ones(len(xf))])
    w = torch.where(y == 1, len(xr) / len(xf), 1.0)  # balanced classes
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + 255) // 256)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 256):
            idx = perm[i:i + 256]
            xb = x[idx]
            flip = torch.rand(len(xb), generator=g) < 0.5  # transposes keep level statistics, vary the shapes
            xb = torch.where(flip[:, None, None, None], xb.transpose(2, 3), xb)
            loss = F.binary_cross_entropy_with_logits(net(xb), y[idx], weight=w[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def cnn_logit(net: EditCNN, x: torch.Tensor) -> np.ndarray:
    return torch.cat([net(x[i:i + 1024]) for i in range(0, len(x), 1024)]).numpy()


def main() -> None:
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    torch.set_num_threads(2)
    det = load_detector(None, device="cpu")
    real_tr, real_cal, fam_tr, fam_cal, _ = gather(det.config, [parse_generator(s) for s in FAMILIES], None, 0,
                                                   FAKE_CACHE)
    g = torch.Generator().manual_seed(2)

    def both(x):
        _, _, fitted, stats = det.forward(x, with_stats=True)
        return inputs(fitted), expert_features(stats, fitted)

    er = [both(perturb_for_calibration(real_tr, k, g)) for k in EXPERT_EDITS for _ in range(2)]
    ef = {n: [both(perturb_for_calibration(f, k, g)) for k in EXPERT_EDITS] for n, f in fam_tr.items()}
    xr, fr = torch.cat([a for a, _ in er]), np.concatenate([b for _, b in er])
    tests = {}
    for held in fam_cal:
        for t in TESTS:
            gt = torch.Generator().manual_seed(1)
            tests[held, t] = (both(PERTURBATIONS[t][0](real_cal, gt)), both(PERTURBATIONS[t][0](fam_cal[held], gt)))
    out = {"cpu": torch.backends.cpu.get_cpu_capability(), "epochs": epochs, "held_out": {}}
    for held in fam_cal:
        xf = torch.cat([a for n, v in ef.items() if n != held for a, _ in v])
        ff = np.concatenate([b for n, v in ef.items() if n != held for _, b in v])
        trees = TreeEnsemble.fit(np.concatenate([fr, ff]), np.r_[np.zeros(len(fr)), np.ones(len(ff))]).logit
        net = train_cnn(xr, xf, epochs)
        lt, lc = np.r_[trees(fr), trees(ff)], np.r_[cnn_logit(net, xr), cnn_logit(net, xf)]
        zt = lambda s: (s - lt.mean()) / lt.std()
        zc = lambda s: (s - lc.mean()) / lc.std()
        rows = {}
        for t in TESTS:
            (ir, sr), (i_f, sf) = tests[held, t]
            tr_, tf_ = trees(sr), trees(sf)
            cr, cf = cnn_logit(net, ir), cnn_logit(net, i_f)
            rows[t] = {"trees": auc(tr_, tf_), "cnn": auc(cr, cf), "sum": auc(zt(tr_) + zc(cr), zt(tf_) + zc(cf))}
        out["held_out"][held] = rows
        print(held, {t: {k: round(v, 3) for k, v in r.items()} for t, r in rows.items()}, file=sys.stderr, flush=True)
    for k in ("trees", "cnn", "sum"):
        out[f"mean {k}"] = float(np.mean([r[k] for h in out["held_out"].values() for r in h.values()]))
    print({k: round(v, 4) for k, v in out.items() if k.startswith("mean")}, file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
