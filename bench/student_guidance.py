"""The distilled students take the guidance scale as an input: which scale gives each its best FID?
Run on a selection seed (not the seed the time-to-quality table reports), so the choice is not tuned
on the reported figure. FID on the digit-classifier features against the 1,000 held-out digits.

    python bench/student_guidance.py --seed 1 --scales 1.0,1.25,1.5,2.0,2.5 \
        --students generator/weights/mnist5k-student8,generator/weights/mnist5k-student4,generator/weights/mnist5k-student2
"""

from __future__ import annotations

import argparse
import json

import torch

from ddpm_guard.generator.checkpoint import load_model
from ddpm_guard.generator.classifier import predict
from ddpm_guard.generator.evaluate import feature_metrics, heldout_reference
from ddpm_guard.generator.image_io import quantize
from ddpm_guard.generator.pipeline import generate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--students", required=True)
    ap.add_argument("--scales", default="1.0,1.25,1.5,2.0,2.5")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--precision", default="auto")
    a = ap.parse_args()
    net, real_f = heldout_reference()
    out = {"seed": a.seed, "n": a.n, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "rows": {}}
    for folder in a.students.split(","):
        model, schedule, cfg = load_model(folder)
        steps = int(cfg["distill"]["steps"])
        for w in (float(s) for s in a.scales.split(",")):
            x, y = generate(model, schedule, a.n, guidance=w, steps=steps, seed=a.seed, precision=a.precision)
            f, logits = predict(net, quantize(x))
            row = {"steps": steps, "guidance": w, "fid": feature_metrics(f.numpy(), real_f)["fid"],
                   "class_accuracy": float((logits.argmax(1) == y).float().mean())}
            out["rows"][f"student{steps}-w{w}"] = row
            print(json.dumps(row), flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
