"""Which judge for edited files: leave one family out, on the training families only (ddpm-c is not used).

    python bench/detector/edit_expert.py > bench/results/detector_edit_expert.json

For each training family held out: judges on the stroke statistics (detector.stats, of the floored image)
are trained on the training split's reals and the *other* families' fakes under the benign edits
(`detector.train.expert_statistics`, two draws per real, one per fake), then scored on the calibration
split's reals against the held-out family's calibration fakes under `detector eval`'s edits. Judges:
- gbt pooled: one gradient-boosted tree ensemble for all four edits (detector.experts.EditExpert, shipped);
- gbt per edit: one ensemble per edit, each scored on its own edit;
- mlp pooled, logistic pooled: the same pooled data, standardised.
For reference, the AUC of the bundled network is printed too, though it was trained on every family,
the held-out one included (the leave-one-out networks are not kept; their JPEG q75 AUC is in the bundled
detector's config.json, "leave_one_out").
"""
import json
import sys

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from detector.evaluate import PERTURBATIONS
from detector.experts import TreeEnsemble
from detector.predict import load_detector
from detector.sources import parse_generator
from detector.train import EXPERT_EDITS, FAKE_CACHE, expert_statistics, gather

FAMILIES = ["bundled", "detector/weights/families/ddpm-b", "detector/weights/families/vae",
            "detector/weights/families/gan"]
TESTS = {"jpeg": ("jpeg75", "jpeg50"), "blur": ("blur1",), "resize": ("resize0.5",), "noise": ("noise0.05",)}


def auc(real: np.ndarray, fake: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.zeros(len(real)), np.ones(len(fake))], np.r_[real, fake]))


def stack(parts: dict) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([np.concatenate(parts[k]) for k in parts])
    y = np.concatenate([np.r_[np.zeros(len(parts[k][0])), np.ones(len(parts[k][1]))] for k in parts])
    return x, y


def main() -> None:
    det = load_detector(None, device="cpu")
    real_tr, real_cal, fam_tr, fam_cal, _ = gather(det.config, [parse_generator(s) for s in FAMILIES], None, 0,
                                                   FAKE_CACHE)
    out = {"cpu": torch.backends.cpu.get_cpu_capability(), "held_out": {}}
    for held in fam_tr:
        others = torch.cat([v for k, v in fam_tr.items() if k != held])
        train = expert_statistics(det, real_tr, others, seed=0)
        x, y = stack(train)
        judges = {"gbt pooled": TreeEnsemble.fit(x, y).logit}
        for name, model in (("mlp pooled", MLPClassifier((128, 64), alpha=1e-3, max_iter=200, early_stopping=True,
                                                         random_state=0)),
                            ("logistic pooled", LogisticRegression(C=1.0, max_iter=3000))):
            fitted = make_pipeline(StandardScaler(), model).fit(x, y)
            judges[name] = lambda s, m=fitted: m.predict_proba(s)[:, 1]
        own = {e: TreeEnsemble.fit(*stack({e: train[e]})).logit for e in EXPERT_EDITS}
        rows = {}
        for edit, tests in TESTS.items():
            for t in tests:
                g = torch.Generator().manual_seed(1)
                r_img, f_img = PERTURBATIONS[t][0](real_cal, g), PERTURBATIONS[t][0](fam_cal[held], g)
                (lr, _, _, sr), (lf, _, _, sf) = (det.forward(r_img, with_stats=True),
                                                  det.forward(f_img, with_stats=True))
                row = {name: auc(j(sr), j(sf)) for name, j in judges.items()}
                row["gbt per edit"] = auc(own[edit](sr), own[edit](sf))
                row["bundled network (trained on this family)"] = auc(lr, lf)
                rows[t] = row
                print(held, t, {k: round(v, 3) for k, v in row.items()}, file=sys.stderr, flush=True)
        out["held_out"][held] = rows
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
