"""Which detector input generalises best: raw pixels, the NPR residual, or both?

    python bench/detector/compare_inputs.py [--epochs 12]

Each variant is trained with the same data, seed and epochs as `ddpm-guard detector train` (no
zero-shot fusion). The choice is made on the CALIBRATION split (clean TPR at 1% FPR on in-domain
fakes not trained on), never on the evaluation sets; the evaluation numbers and the JPEG q75
calibration figures are printed beside it for the record."""
import argparse
import json

import numpy as np
import torch

from generator.checkpoint import load_model
from generator.perturb import jpeg
from detector.data import N_TRAIN_FAKES, TRAIN_SOURCES, fake_sets, real_split
from detector.evaluate import evaluate_detector, metrics
from detector.model import INPUTS, DetectorConfig
from detector.train import FAKE_CACHE, calibrate, split_fakes, train_net

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=40)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--aug-p", type=float, default=0.3)
ap.add_argument("--inputs", nargs="*", default=list(INPUTS))
a = ap.parse_args()
model, schedule, _ = load_model()
fakes = fake_sets(model, schedule, TRAIN_SOURCES, N_TRAIN_FAKES, 1000 + a.seed, real_split("train"), FAKE_CACHE)
fake_tr, fake_cal = split_fakes(fakes)
real_tr, real_cal = real_split("train"), real_split("calib")
rows = {}
for inp in a.inputs:
    net = train_net(DetectorConfig(input=inp), real_tr, fake_tr, epochs=a.epochs, aug_p=a.aug_p, seed=a.seed)
    det = calibrate(net, real_cal, fake_cal, zero_shot=False)
    cal = metrics(det.score(real_cal)["p_synthetic"], det.score(fake_cal)["p_synthetic"])
    cal_j = metrics(det.score(jpeg(real_cal, 75))["p_synthetic"], det.score(jpeg(fake_cal, 75))["p_synthetic"])
    ev = evaluate_detector(det, model, schedule, seed=a.seed, cache=FAKE_CACHE, zero_shot_n=0)
    rows[inp] = {"calib_tpr1": cal["tpr_at_1pct_fpr"], "calib_jpeg75_tpr1": cal_j["tpr_at_1pct_fpr"],
                 "calib_auc": cal["auc"], "calib_jpeg75_auc": cal_j["auc"],
                 "eval_in_domain_auc": ev["pooled"]["in_domain"]["auc"],
                 "eval_in_domain_tpr1": ev["pooled"]["in_domain"]["tpr_at_1pct_fpr"],
                 "eval_held_out_auc": ev["pooled"]["held_out"]["auc"],
                 "eval_jpeg75_auc": ev["perturbations"]["jpeg75"]["in_domain"]["auc"],
                 "images_per_s": ev["throughput"]["images_per_s"]}
    print(inp, json.dumps(rows[inp]), flush=True)
choice = max(rows, key=lambda k: (rows[k]["calib_tpr1"], rows[k]["calib_auc"]))  # clean TPR@1%FPR on calibration
print(json.dumps({"choice (by calibration split)": choice, "rows": rows}, indent=1))
