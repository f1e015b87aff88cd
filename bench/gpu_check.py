"""The same work on CUDA and on the CPU of one machine: do the results agree, and what does CUDA buy?

A user may generate on a GPU and verify on a laptop, or the reverse, so the check is cross-device:
- DDIM samples from one seed on both devices (8-bit pixels that differ, class accuracy);
- watermarked samples (x_T mark + guided mark) made on CUDA, verified on CUDA and on the CPU, fast and deep;
- the detector's probabilities for the same images on both devices;
- the time of plain and guided sampling, verification and detection on each device (same run, same machine).

    python bench/gpu_check.py --out bench/results/gpu_check.json

Needs a CUDA device; prints one JSON object. Nothing here is tuned: the thresholds are the shipped ones.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def timed(fn, sync: bool):
    if sync and torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if sync and torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="samples per device")
    ap.add_argument("--n-marked", type=int, default=64)
    ap.add_argument("--out", default=None)
    ap.add_argument("--dry-run", action="store_true", help="no CUDA: run the script on the CPU twice (checks the script)")
    args = ap.parse_args()
    if not (torch.cuda.is_available() or args.dry_run):
        raise SystemExit("no CUDA device")

    from ddpm_guard.detector.predict import load_detector
    from ddpm_guard.generator.checkpoint import default_device, load_model
    from ddpm_guard.generator.classifier import load_classifier
    from ddpm_guard.generator.data import load_dataset
    from ddpm_guard.generator.image_io import quantize
    from ddpm_guard.generator.pipeline import generate
    from ddpm_guard.watermark.marking import MarkSpec, generate_marked
    from ddpm_guard.watermark.keys import WatermarkKey
    from ddpm_guard.watermark.verify import verify_images

    cuda, cpu = torch.device("cpu" if args.dry_run else "cuda"), torch.device("cpu")
    sync = not args.dry_run
    report: dict = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if sync else None,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_threads": torch.get_num_threads(),
                    "default_device": str(default_device())}
    models = {name: load_model(device=d)[:2] for name, d in (("cuda", cuda), ("cpu", cpu))}
    clf = load_classifier(device="cpu")

    # 1. plain DDIM-50 from one seed on both devices
    imgs, times = {}, {}
    for dev in ("cuda", "cpu"):
        model, schedule = models[dev]
        generate(model, schedule, 8, seed=99, steps=5)  # warm-up
        for prec in ("fp32", "auto"):
            (x, labels), dt = timed(lambda: generate(model, schedule, args.n, seed=0, steps=50, precision=prec), dev == "cuda")
            imgs[dev, prec], times[f"sample_{dev}_{prec}_s"] = (quantize(x), labels), dt
    a, b = imgs["cuda", "fp32"][0], imgs["cpu", "fp32"][0]
    labels = imgs["cuda", "fp32"][1]
    diff = ((a - b).abs() * 127.5).round()
    with torch.no_grad():
        acc = {f"{dev}_{prec}": float((clf(imgs[dev, prec][0]).argmax(1) == labels).float().mean())
               for dev in ("cuda", "cpu") for prec in ("fp32", "auto")}
    report["sample"] = {"n": args.n, "steps": 50, "pixels_differing_fp32": float((diff > 0).float().mean()),
                        "pixels_off_by_more_than_2_levels": float((diff > 2).float().mean()),
                        "max_level_difference": float(diff.max()), "class_accuracy": acc}

    # 2. watermarked on CUDA, verified on both devices (fast = guided decoder only; deep adds the inversion)
    key = WatermarkKey(bytes(range(32)))
    model, schedule = models["cuda"]
    generate_marked(model, schedule, key, 0x1234ABCD, 4, seed=98, steps=5)  # warm-up
    (plain, _), t_plain = timed(lambda: generate(model, schedule, args.n_marked, seed=5, steps=50), True)
    (wm, _), t_guided = timed(lambda: generate_marked(model, schedule, key, 0x1234ABCD, args.n_marked, MarkSpec.of(guided=True), seed=5, steps=50), True)
    wm = quantize(wm)
    times["plain_sampling_cuda_s"], times["guided_sampling_cuda_s"] = t_plain, t_guided
    wrong = WatermarkKey(bytes(range(1, 33)))
    ver = {}
    for dev in ("cuda", "cpu"):
        m, s = models[dev]
        for deep in (False, True):
            rows, dt = timed(lambda: verify_images(wm, {"k": key}, m, s, guided=True, deep=deep), dev == "cuda")
            times[f"verify_{'deep' if deep else 'fast'}_{dev}_s"] = dt
            ver[f"{dev}_{'deep' if deep else 'fast'}"] = {
                "detected": sum(r.detected for r in rows), "payload_ok": sum(r.payload == "1234abcd" for r in rows),
                "median_log10_p": float(np.median(np.log10([max(r.p_value, 1e-300) for r in rows])))}
        rows = verify_images(wm, {"k": wrong}, m, s, guided=True, deep=True)
        ver[f"{dev}_wrong_key_detected"] = sum(r.detected for r in rows)
    report["watermark"] = {"n": args.n_marked, **ver}

    # 3. the detector on both devices: held-out digits and our samples
    held = load_dataset("mnist5k", "heldout")
    x = torch.cat([held.images[::4][:128], a[:128]])
    probs = {}
    for dev in ("cuda", "cpu"):
        det = load_detector(device=cuda if dev == "cuda" else cpu)
        det.score(x[:8])
        out, dt = timed(lambda: det.score(x), dev == "cuda")
        probs[dev], times[f"detect_{dev}_s"] = out, dt
    pc, pp = probs["cuda"]["p_synthetic"], probs["cpu"]["p_synthetic"]
    report["detector"] = {"n": len(x), "max_abs_p_difference": float(np.abs(pc - pp).max()),
                          "verdicts_differing": int((probs["cuda"]["synthetic"] != probs["cpu"]["synthetic"]).sum()),
                          "flagged_cuda_real_fake": [int(probs["cuda"]["synthetic"][:128].sum()),
                                                     int(probs["cuda"]["synthetic"][128:].sum())]}
    report["seconds"] = {k: round(v, 3) for k, v in times.items()}
    report["ratios"] = {"guided_over_plain_cuda": times["guided_sampling_cuda_s"] / times["plain_sampling_cuda_s"],
                        "cpu_over_cuda_sample_fp32": times["sample_cpu_fp32_s"] / times["sample_cuda_fp32_s"],
                        "cpu_over_cuda_verify_fast": times["verify_fast_cpu_s"] / times["verify_fast_cuda_s"]}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
