"""The detector's fixed micro-batch: images/s by network batch size, and whether a score depends on
how images are grouped (padding the last micro-batch keeps every call the same size).

    python bench/detector/micro_batch.py
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from ddpm_guard.detector.predict import load_detector


def main() -> None:
    det = load_detector(device="cpu")
    x = torch.rand(4096, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    speed = {}
    for bs in (16, 32, 64, 128, 256):
        det.logits(x[:512], batch_size=bs)  # warm-up
        t = time.perf_counter()
        det.logits(x, batch_size=bs)
        speed[bs] = round(len(x) / (time.perf_counter() - t))
    ref = det.logits(x)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    shuffled = det.logits(x[perm])[torch.argsort(perm).numpy()]
    pieces = np.concatenate([det.logits(x[i:i + 7]) for i in range(0, len(x), 7)])
    print(json.dumps({"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                      "images_per_s_by_batch": speed,
                      "max_abs_logit_change_when_shuffled": float(np.abs(shuffled - ref).max()),
                      "max_abs_logit_change_in_groups_of_7": float(np.abs(pieces - ref).max())}, indent=1))


if __name__ == "__main__":
    main()
