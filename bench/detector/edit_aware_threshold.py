"""Would an edit-aware threshold raise recall at the same false-positive rate? (measurement, not shipped)

    python bench/detector/edit_aware_threshold.py > bench/results/detector_edit_aware.json

The bundled detector's single threshold is the highest of its per-edit 1 %-FPR thresholds, so blurred
and resized reals set it and clean fakes pay. Here a router (multinomial logistic regression on the
stroke statistics, detector.stats) guesses which benign edit an image went through; each guessed edit
gets its own 1 %-FPR threshold. Router and thresholds are fitted on the calibration reals and the
training families' calibration fakes only. Scored: the 1,000 held-out reals against ddpm-c's eval fakes
(bench/detector/generators/ddpm-c, never used to fit anything here), under `detector eval`'s edits.
"""
import json
import sys

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from detector.calibrate import threshold_at_fpr
from detector.data import CALIBRATION_PERTURBATIONS, perturb_for_calibration, real_split
from detector.evaluate import PERTURBATIONS, edit_pair
from detector.predict import load_detector
from detector.sources import family_fakes, parse_generator
from detector.stats import branch_statistics
from detector.train import FAKE_CACHE, TARGET_FPR, gather

det = load_detector(device="cpu")
fams = ["bundled", "detector/weights/families/ddpm-b", "detector/weights/families/vae", "detector/weights/families/gan"]
# the bundled detector's own splits: the same call `detector train` makes (seed 0, the fake cache)
real_tr, real_cal, _, fam_cal, _ = gather(det.config, [parse_generator(f) for f in fams], None, 0, FAKE_CACHE)
fake_cal = torch.cat(list(fam_cal.values()))
g = torch.Generator().manual_seed(0)
kinds = [k for k in CALIBRATION_PERTURBATIONS if k != "tidy"]  # tidy is invisible after the floor: same as clean
X, y = [], []
for i, k in enumerate(kinds):
    r, f = perturb_for_calibration(real_cal, k, g), perturb_for_calibration(fake_cal, k, g)
    X += [branch_statistics(r).numpy(), branch_statistics(f).numpy()]
    y += [np.full(len(r), i), np.full(len(f), i)]
router = LogisticRegression(max_iter=2000, C=1.0).fit(np.concatenate(X), np.concatenate(y))
# per routed edit: the 1 %-FPR threshold of the calibration reals routed there (all edits pooled)
g = torch.Generator().manual_seed(1)
pr, route = [], []
for k in kinds:
    r = perturb_for_calibration(real_cal, k, g)
    pr.append(det.score(r)["p_synthetic"])
    route.append(router.predict(branch_statistics(r).numpy()))
pr, route = np.concatenate(pr), np.concatenate(route)
thresholds = {kinds[i]: float(max(threshold_at_fpr(pr[route == i], TARGET_FPR), 0.5)) if (route == i).sum() >= 100
              else det.threshold for i in range(len(kinds))}
real_ho = real_split("heldout")
fake_c = torch.cat(list(family_fakes(parse_generator("bench/detector/generators/ddpm-c"), 150, 2000, real_tr, FAKE_CACHE).values()))
out = {"cpu": torch.backends.cpu.get_cpu_capability(), "single_threshold": det.threshold, "routed_thresholds": thresholds,
       "edits": {}}
for name in PERTURBATIONS:
    r, f = edit_pair(name, real_ho, fake_c, torch.Generator().manual_seed(0))
    sr, sf = det.score(r)["p_synthetic"], det.score(f)["p_synthetic"]
    tr = np.array([thresholds[kinds[i]] for i in router.predict(branch_statistics(r).numpy())])
    tf = np.array([thresholds[kinds[i]] for i in router.predict(branch_statistics(f).numpy())])
    out["edits"][name] = {"single": {"real_fpr": float((sr > det.threshold).mean()), "ddpm_c_tpr": float((sf > det.threshold).mean())},
                          "routed": {"real_fpr": float((sr > tr).mean()), "ddpm_c_tpr": float((sf > tf).mean())}}
    print(name, out["edits"][name], file=sys.stderr)
print(json.dumps(out, indent=1))
