"""Audit throughput: files/s over a folder of mixed real and generated 28x28 PNGs, per engine, with
the peak memory of the whole process tree (Ray's workers included) at two dataset sizes, to show
that memory stays flat in the number of files (the audit streams and never holds every image).

    python bench/audit/throughput.py --files 10000 2000 --engines local ray --out bench/out/audit_throughput.json

The data set (runs/bench_audit/data_N/) is made once: the 5,000 mnist5k digits (real) and as many
bundled-model DDIM-10 samples as needed (generated), cached between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

CACHE = Path("runs/bench_audit")


def make_data(n: int, full: int) -> Path:
    """data_N: the first N/2 real and N/2 generated files of data_FULL (made once, then copied)."""
    if n < full:
        src, out = make_data(full, full), CACHE / f"data_{n}"
        if not (CACHE / f"data_{n}.complete").exists():
            shutil.rmtree(out, ignore_errors=True)
            for kind in ("real", "generated"):
                for f in sorted((src / kind).rglob("*.png"))[: n // 2]:
                    (out / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(f, out / f.relative_to(src))
            (CACHE / f"data_{n}.complete").touch()
        return out
    return _make_full(n)


def _make_full(n: int) -> Path:
    from ddpm_guard.generator.checkpoint import load_model
    from ddpm_guard.generator.data import load_dataset
    from ddpm_guard.generator.image_io import save_image
    from ddpm_guard.generator.pipeline import generate

    out = CACHE / f"data_{n}"
    if (CACHE / f"data_{n}.complete").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    real = torch.cat([load_dataset("mnist5k", "train").images, load_dataset("mnist5k", "heldout").images])
    n_real = min(len(real), n // 2)
    for i in range(n_real):
        save_image(real[i], out / "real" / f"{i // 1000:02d}" / f"r{i:05d}.png")
    model, schedule, _ = load_model()
    fake, _ = generate(model, schedule, n - n_real, steps=10, seed=123, progress=True)
    for i, x in enumerate(fake):
        save_image(x, out / "generated" / f"{i // 1000:02d}" / f"g{i:05d}.png")
    (CACHE / f"data_{n}.complete").touch()
    return out


def run(data: Path, engine: str, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "ddpm_guard.api.cli", "audit", str(data), "--out", str(out), "--engine", engine, "--json"]
    t0 = time.perf_counter()
    p = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = 0
    while p.poll() is None:
        try:
            procs = [p, *p.children(recursive=True)]
            peak = max(peak, sum(q.memory_info().rss for q in procs if q.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    summary = json.loads(p.stdout.read().strip().splitlines()[-1])
    return {"files": summary["files"], "wall_s": round(wall, 2), "scoring_s": summary["seconds_this_run"],
            "files_per_s_scoring": round(summary["files"] / summary["seconds_this_run"], 1),
            "files_per_s_wall": round(summary["files"] / wall, 1), "peak_rss_mb": round(peak / 2**20, 1),
            "counts": summary["counts"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, nargs="+", default=[10000, 2000])
    ap.add_argument("--engines", nargs="+", default=["local", "ray"])
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    report = {"machine": {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
                          "python": platform.python_version(), "torch": torch.__version__}, "runs": {}}
    for n in a.files:
        data = make_data(n, max(a.files))
        for engine in a.engines:
            r = run(data, engine, CACHE / f"out_{engine}_{n}")
            report["runs"][f"{engine}_{n}"] = r
            print(json.dumps({f"{engine}_{n}": r}), flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
