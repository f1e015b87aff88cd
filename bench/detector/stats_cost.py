"""What the statistics branch and the edit router cost on the scoring path (ms per batch of 256 held-out
digits, 2 threads).

    python bench/detector/stats_cost.py
"""
import time

import torch

from ddpm_guard.detector.data import real_split
from ddpm_guard.detector.predict import load_detector
from ddpm_guard.detector.stats import branch_statistics, stroke_statistics
from ddpm_guard.generator.perturb import median_filter

torch.set_num_threads(2)
x = real_split("heldout")[:256]
det = load_detector(device="cpu")
single = load_detector(device="cpu")
single.router = None  # the same detector judged at one threshold


def ms(f, n=20):
    f()
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t0) / n * 1000


with torch.no_grad():
    print(f"cpu {torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}")
    for name, f in [("stroke_statistics", lambda: stroke_statistics(x)), ("median_filter 3x3", lambda: median_filter(x, 3)),
                    ("branch_statistics (both)", lambda: branch_statistics(x)), ("network forward (all of it)", lambda: det.net(x)),
                    ("Detector.score, one threshold", lambda: single.score(x)),
                    ("Detector.score (default: routed)", lambda: det.score(x))]:
        print(f"{name:32s} {ms(f):7.1f} ms / 256")
