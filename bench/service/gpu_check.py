"""GPU check of the scan and the audit (run where CUDA is present; the CPU suite covers the rest).

Makes watermarked and plain samples with the bundled model, scans them on CUDA and on the CPU
(verdicts must agree; scores within float noise), then audits a folder of them on CUDA with and
without the watermark check, reporting files/s. Writes a JSON report to --out.

    python bench/service/gpu_check.py --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from ddpm_guard.api.audit import run_audit
    from ddpm_guard.api.audit.engine import ScanSpec
    from ddpm_guard.api.scan import Scanner, read_items, scan_items
    from ddpm_guard.detector.predict import load_detector
    from ddpm_guard.generator.checkpoint import load_model
    from ddpm_guard.generator.image_io import save_image
    from ddpm_guard.generator.pipeline import generate
    from ddpm_guard.watermark.marking import generate_marked
    from ddpm_guard.watermark.keys import new_key_file

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=2000, help="files for the audit throughput")
    a = ap.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    tmp = Path(tempfile.mkdtemp())
    key = new_key_file(tmp / "k.key")
    model, schedule, _ = load_model()
    report["model_device"] = str(next(model.parameters()).device)
    wm, _ = generate_marked(model, schedule, key, 42, 16, seed=1)
    plain, _ = generate(model, schedule, a.n, steps=10, seed=2)
    for i, x in enumerate(wm):
        save_image(x, tmp / "data" / "wm" / f"w{i:02d}.png")
    for i, x in enumerate(plain):
        save_image(x, tmp / "data" / "plain" / f"p{i:05d}.png")
    items = read_items([str(tmp / "data" / "wm"), *[str(p) for p in sorted((tmp / "data" / "plain").glob("*.png"))[:16]]])
    rows = {}
    for dev in ("cuda", "cpu"):
        m, s, _ = load_model(device=dev)
        sc = Scanner(load_detector(device=dev), m, s, {"k": key}, None, 0.01)
        t = time.perf_counter()
        rows[dev] = scan_items(items, sc)
        report[f"scan_32_seconds_{dev}"] = round(time.perf_counter() - t, 3)
    report["verdicts_agree"] = [r["verdict"] for r in rows["cuda"]] == [r["verdict"] for r in rows["cpu"]]
    report["verdict_counts_cuda"] = {v: sum(r["verdict"] == v for r in rows["cuda"]) for v in {r["verdict"] for r in rows["cuda"]}}
    report["max_abs_p_synthetic_diff"] = float(np.max([abs(x["p_synthetic"] - y["p_synthetic"])
                                                       for x, y in zip(rows["cuda"], rows["cpu"])]))
    for name, spec in {"default": ScanSpec(), "watermark": ScanSpec(key_files=(str(tmp / "k.key"),))}.items():
        s = run_audit(tmp / "data", tmp / f"rep_{name}", spec, progress=False, batch=256)
        report[f"audit_{name}"] = {"files": s["files"], "seconds": s["seconds_this_run"],
                                   "files_per_s": round(s["files"] / s["seconds_this_run"], 1), "counts": s["counts"]}
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
