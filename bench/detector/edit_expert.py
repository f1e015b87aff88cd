"""Which judge for edited files: leave one family out, on the training families only (ddpm-c is not used).

    python bench/detector/edit_expert.py > bench/results/detector_edit_expert.json

For each training family held out: judges on the stroke statistics (detector.stats, of the floored image)
are trained on the training split's reals and the *other* families' fakes under the benign edits
(`detector.train.expert_training_set`: the statistics alone, two draws per real and one per fake, as first
shipped; then the shipped expert's features and draws), then scored on the calibration
split's reals against the held-out family's calibration fakes under `detector eval`'s edits. Judges:
- shipped: one gradient-boosted tree ensemble for all four edits on the expert's features (the statistics,
  8x8 DCT magnitudes, radial spectrum: detector.experts.expert_features), two draws per fake;
- gbt pooled: the same on the statistics alone, one draw per fake (the first version);
- gbt per edit: one ensemble per edit on the statistics, each scored on its own edit;
- mlp pooled, logistic pooled: the statistics, pooled, standardised.
For reference, the AUC of the bundled network is printed too, though it was trained on every family,
the held-out one included (the leave-one-out networks are not kept; their JPEG q75 AUC is in the bundled
detector's config.json, "leave_one_out").
"""
import json
import sys

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ddpm_guard.detector.evaluate import PERTURBATIONS
from ddpm_guard.detector.experts import TreeEnsemble, expert_features, labelled
from ddpm_guard.detector.predict import load_detector
from ddpm_guard.detector.sources import parse_generator
from ddpm_guard.detector.stats import N_STATS
from ddpm_guard.detector.train import EXPERT_EDITS, FAKE_CACHE, expert_training_set, gather
from loo_common import FAMILIES, auc

TESTS = {"jpeg": ("jpeg75", "jpeg50"), "blur": ("blur1",), "resize": ("resize0.5",), "noise": ("noise0.05",)}


def main() -> None:
    det = load_detector(None, device="cpu")
    real_tr, real_cal, fam_tr, fam_cal, _ = gather(det.config, [parse_generator(s) for s in FAMILIES], None, 0,
                                                   FAKE_CACHE)
    out = {"cpu": torch.backends.cpu.get_cpu_capability(), "held_out": {}}
    n_stats = 2 * det.config.in_chans * N_STATS
    for held in fam_tr:
        others = torch.cat([v for k, v in fam_tr.items() if k != held])
        train = expert_training_set(det, real_tr, others, seed=0, draws=1)
        x, y = labelled(train)  # the statistics are the first n_stats columns of the expert's features
        stats_only = {"gbt pooled": TreeEnsemble.fit(x[:, :n_stats], y).logit}
        for name, model in (("mlp pooled", MLPClassifier((128, 64), alpha=1e-3, max_iter=200, early_stopping=True,
                                                         random_state=0)),
                            ("logistic pooled", LogisticRegression(C=1.0, max_iter=3000))):
            fitted = make_pipeline(StandardScaler(), model).fit(x[:, :n_stats], y)
            stats_only[name] = lambda s, m=fitted: m.predict_proba(s)[:, 1]
        own = {}
        for e in EXPERT_EDITS:
            xe, ye = labelled({e: train[e]})
            own[e] = TreeEnsemble.fit(xe[:, :n_stats], ye).logit
        shipped = TreeEnsemble.fit(*labelled(expert_training_set(det, real_tr, others, seed=0, draws=2))).logit
        rows = {}
        for edit, tests in TESTS.items():
            for t in tests:
                g = torch.Generator().manual_seed(1)
                r_img, f_img = PERTURBATIONS[t][0](real_cal, g), PERTURBATIONS[t][0](fam_cal[held], g)
                (lr, _, xr, sr), (lf, _, xf, sf) = (det.forward(r_img, with_stats=True),
                                                    det.forward(f_img, with_stats=True))
                fr, ff = expert_features(sr, xr), expert_features(sf, xf)
                row = {"shipped: gbt pooled, + DCT + spectrum, 2 draws": auc(shipped(fr), shipped(ff))}
                row.update({name: auc(j(sr), j(sf)) for name, j in stats_only.items()})
                row["gbt per edit"] = auc(own[edit](sr), own[edit](sf))
                row["bundled network (trained on this family)"] = auc(lr, lf)
                rows[t] = row
                print(held, t, {k: round(v, 3) for k, v in row.items()}, file=sys.stderr, flush=True)
        out["held_out"][held] = rows
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
