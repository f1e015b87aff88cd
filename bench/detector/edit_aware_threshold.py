"""The edit-aware threshold against the single one, on the shipped detector (same scores, two decisions).

    python bench/detector/edit_aware_threshold.py > bench/results/detector_edit_aware.json

The single threshold is the highest of the per-edit 1 %-FPR thresholds, so blurred and resized reals set it
and clean fakes pay. The detector's router (detector.calibrate.EditRouter, fitted by `detector train` or
`detector calibrate` on the calibration split only) guesses which benign edit an image went through and
judges it at that edit's threshold. Scored: the 1,000 held-out reals against ddpm-c's eval fakes
(bench/detector/generators/ddpm-c, never used to fit anything), under `detector eval`'s edits.
"""
import json
import sys

import torch

from ddpm_guard.detector.data import real_split
from ddpm_guard.detector.evaluate import PERTURBATIONS, edit_pair
from ddpm_guard.detector.predict import load_detector
from ddpm_guard.detector.sources import family_fakes, parse_generator
from ddpm_guard.detector.train import FAKE_CACHE

det = load_detector(sys.argv[1] if len(sys.argv) > 1 else None, device="cpu")
if det.router is None:
    sys.exit("this detector has no edit router; run `ddpm-guard detector calibrate` on it")
real_ho = real_split("heldout")
fake_c = torch.cat(list(family_fakes(parse_generator("bench/detector/generators/ddpm-c"), 150, 2000,
                                     real_split("train"), FAKE_CACHE).values()))
out = {"cpu": torch.backends.cpu.get_cpu_capability(), "single_threshold": det.threshold,
       "routed_thresholds": det.router.by_edit, "edits": {}}
for name in PERTURBATIONS:
    r, f = edit_pair(name, real_ho, fake_c, torch.Generator().manual_seed(0))
    sr, sf = det.score(r), det.score(f)
    out["edits"][name] = {
        "single": {"real_fpr": float((sr["p_synthetic"] > det.threshold).mean()),
                   "ddpm_c_tpr": float((sf["p_synthetic"] > det.threshold).mean())},
        "routed": {"real_fpr": float(sr["synthetic"].mean()), "ddpm_c_tpr": float(sf["synthetic"].mean())},
        "fakes_routed_to": {e: float((sf["threshold"] == t).mean()) for e, t in out["routed_thresholds"].items()}}
    print(name, {k: v for k, v in out["edits"][name].items() if k != "fakes_routed_to"}, file=sys.stderr)
print(json.dumps(out, indent=1))
