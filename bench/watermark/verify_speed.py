"""Fast-path verify throughput (decode + zero-bit test + payload, no inversion) of the bundled decoder read under
its views against the same decoder read once, in the same run, interleaved, median of --reps; and the shipped path,
`decode_logits` (the views in fixed micro-batches of DECODE_BATCH, so no row depends on its batch).

    python bench/watermark/verify_speed.py [--n 4096] [--reps 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


@torch.inference_mode()
def main() -> None:
    from ddpm_guard.generator.data import load_dataset
    from ddpm_guard.watermark.guided.read import DECODE_BATCH, decode_logits, decoder_and_center
    from ddpm_guard.watermark.guided.statistic import read_logits
    from ddpm_guard.watermark.keys import WatermarkKey

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    held = load_dataset("mnist5k", "heldout").images
    x = held.repeat(-(-a.n // len(held)), 1, 1, 1)[:a.n]
    dec, cal = decoder_and_center(None)
    one = dec.file_reader  # the network that reads the file view
    cal1 = cal.head(one.config.bits)
    key = WatermarkKey(bytes([2]) * 32)
    readers = {f"{name}, batch {bs}": (d, c, bs) for name, d, c in
               (("views " + ",".join(getattr(dec, "views", ("id",))), dec, cal), ("file only", one, cal1))
               for bs in (128, 512)}
    shipped = f"shipped: decode_logits, fixed micro-batches of {DECODE_BATCH}"
    times = {k: [] for k in [shipped, *readers]}
    for _ in range(a.reps):
        t0 = time.perf_counter()
        read_logits(decode_logits(x), cal, key)
        times[shipped].append(time.perf_counter() - t0)
        for k, (d, c, bs) in readers.items():
            t0 = time.perf_counter()
            logits = torch.cat([d(x[i:i + bs]) for i in range(0, len(x), bs)])
            read_logits(logits, c, key)
            times[k].append(time.perf_counter() - t0)
    out = {"n": a.n, "reps": a.reps, "threads": torch.get_num_threads(), "cpu": torch.backends.cpu.get_cpu_capability(),
           "images_per_s": {k: a.n / statistics.median(v) for k, v in times.items()}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
