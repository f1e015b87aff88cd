"""The watermark's fixed micro-batches (generator.microbatch): throughput of the x_T inversion (bundled model, 10
steps) and of the guided decoder by micro-batch size, the cost of one image alone, and whether a row depends on the
batch it was read in (it must not: the audit resumed with another --batch disagreed on an AVX2 host before).

    python bench/watermark/micro_batch.py [--n 64] > bench/results/watermark_micro_batch.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ddpm_guard.generator.checkpoint import load_model
from ddpm_guard.generator.microbatch import in_fixed_batches
from ddpm_guard.generator.samplers import ddim_invert
from ddpm_guard.watermark.guided.read import decode_logits, decoder_and_center


def rate(fn, x, size: int, reps: int = 2) -> tuple[float, float]:
    """(images/s over x, seconds for one image alone), best of reps."""
    best, one = 0.0, float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        in_fixed_batches(fn, x, size)
        best = max(best, len(x) / (time.perf_counter() - t))
        t = time.perf_counter()
        in_fixed_batches(fn, x[:1], size)
        one = min(one, time.perf_counter() - t)
    return best, one


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    a = ap.parse_args()
    torch.manual_seed(0)
    model, schedule, _ = load_model(None)
    dec, _ = decoder_and_center(None)
    x = torch.rand(a.n, 1, 28, 28) * 2 - 1
    xd = torch.rand(1024, 1, 28, 28) * 2 - 1
    out = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
           "date": time.strftime("%Y-%m-%d"), "inversion": {}, "decoder": {}}
    with torch.inference_mode():
        for size in (1, 4, 8, 16, 32):
            r, one = rate(lambda b: ddim_invert(model, schedule, b, 10), x, size)
            out["inversion"][size] = {"images_per_s": round(r, 1), "one_image_s": round(one, 3)}
        for size in (16, 32, 64, 128):
            r, one = rate(dec, xd, size)
            out["decoder"][size] = {"images_per_s": round(r, 1), "one_image_s": round(one, 4)}
    # the shipped paths: a row read alone equals the same row read in a batch of n, exactly
    inv = in_fixed_batches(lambda b: ddim_invert(model, schedule, b, 10), x[:11], 8)
    out["inversion_rows_equal"] = bool(torch.equal(inv[3:4], in_fixed_batches(
        lambda b: ddim_invert(model, schedule, b, 10), x[3:4], 8)))
    out["decoder_rows_equal"] = bool(torch.equal(decode_logits(xd[:5]), decode_logits(xd[:70])[:5]))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
