"""`make demo`: the three parts on one table.

1. a demo key (0600, inside the output folder) and watermarked digits carrying a payload;
2. edited copies of two of them, as an upload platform would pass them on: a JPEG q50 re-save and a
   square crop of 80 % of the area resized back;
3. one unwatermarked sample and a few held-out real digits, saved the same way;
4. `watermark verify` and `detect` over all of them, the verdicts side by side.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ddpm_guard.generator.checkpoint import load_model
from ddpm_guard.generator.data import load_dataset
from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.image_io import quantize, save_image, save_jpeg
from ddpm_guard.generator.pipeline import generate, write_samples

DEMO_PAYLOAD = "c0ffee42"


def run_demo(out: str | Path, n_watermarked: int = 8, n_real: int = 4, seed: int = 0) -> list[dict]:
    """Write the demo files under `out` and return one row per image with both verdicts."""
    from ddpm_guard.detector.predict import detect_files, load_detector
    from ddpm_guard.watermark.marking import MarkSpec, generate_marked, parse_payload
    from ddpm_guard.watermark.keys import load_key, new_key_file
    from ddpm_guard.watermark.verify import verify_files

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GuardError(f"--out {out} is a file; give a folder for the demo's files")
    try:
        out.mkdir(parents=True, exist_ok=True)  # the demo makes its own folder
    except OSError as e:
        raise GuardError(f"{out}: cannot create the demo folder ({e.strerror})") from None
    key_path = out / "demo.key"
    key = load_key(key_path) if key_path.exists() else new_key_file(key_path)
    model, schedule, _ = load_model()
    wm, labels = generate_marked(model, schedule, key, parse_payload(DEMO_PAYLOAD), n_watermarked, MarkSpec.of(guided=True), seed=seed, precision="auto")  # both marks: the edited copies need the guided one
    files = [("watermarked", p) for p in write_samples(wm, out / "watermarked", labels)]
    from ddpm_guard.generator.perturb import random_resized_crop

    edited = out / "edited"
    edited.mkdir(exist_ok=True)
    files.append(("watermarked, JPEG q50", save_jpeg(quantize(wm[0]), edited / "watermarked_0_jpeg50.jpg", 50)))
    # a square crop of 80 % of the area, resized back (the Tree-Ring crop's 3:4 stretch is harder: BENCHMARKS.md)
    crop = random_resized_crop(quantize(wm[1:2]), torch.Generator().manual_seed(seed), scale=0.8, ratio=1.0)[0]
    files.append(("watermarked, cropped", save_image(crop, edited / "watermarked_1_crop80.png")))
    plain, plain_labels = generate(model, schedule, 1, seed=seed + 1, precision="auto")
    files += [("plain sample", p) for p in write_samples(plain, out / "plain", plain_labels)]
    held = load_dataset("mnist5k", "heldout")
    for i in range(n_real):
        j = i * (len(held) // n_real)  # one from each part of the label-sorted set
        files.append(("real digit", save_image(held.images[j], out / "real" / f"real_{j:04d}_label{int(held.labels[j])}.png")))
    paths = [str(p) for _, p in files]
    verdicts = verify_files(paths, {"demo": key})
    detections = detect_files(paths, load_detector())
    rows = []
    for (kind, p), v, d in zip(files, verdicts, detections):
        rows.append({"path": str(p), "truth": kind, "watermarked": v.get("detected"), "wm_p_value": v.get("p_value"),
                     "payload": v.get("payload"), "synthetic": d.get("synthetic"), "p_synthetic": d.get("p_synthetic"),
                     "error": v.get("error") or d.get("error")})
    return rows
