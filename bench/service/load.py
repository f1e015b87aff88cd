"""Load bench for /v1/scan: N concurrent clients for S seconds on loopback against `ddpm-guard serve`.

Reports req/s, images/s, p50/p99 latency, errors, and the server's memory (RSS sampled each second:
peak, and the mean of the first vs the last tenth of the run, to show it is flat). Runs the same
load with the batching window on and off (DDPM_GUARD_BATCH_WINDOW_MS), one after the other.

    python bench/service/load.py --clients 16 --seconds 60 --out bench/out/service_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _payloads(n: int = 64) -> list[bytes]:
    """Real held-out digits and bundled-model samples, as PNG bytes (what a moderator uploads)."""
    from ddpm_guard.generator.checkpoint import load_model
    from ddpm_guard.generator.data import load_dataset
    from ddpm_guard.generator.image_io import encode_png
    from ddpm_guard.generator.pipeline import generate

    held = load_dataset("mnist5k", "heldout")
    real = [encode_png(held.images[i]) for i in range(0, len(held), len(held) // (n // 2))][: n // 2]
    model, schedule, _ = load_model()
    fake, _ = generate(model, schedule, n // 2, steps=20, seed=7)
    return real + [encode_png(x) for x in fake]


async def _client(url: str, key: str, files: list[bytes], stop: float, lat: list, errors: list, k: int) -> None:
    async with httpx.AsyncClient(timeout=60) as c:
        i = k
        while time.monotonic() < stop:
            data = files[i % len(files)]
            i += 1
            t = time.perf_counter()
            try:
                r = await c.post(url, headers={"X-API-Key": key}, files=[("files", (f"{i}.png", data, "image/png"))])
                ok = r.status_code == 200
            except httpx.HTTPError as e:  # noqa: PERF203
                ok, r = False, e
            (lat if ok else errors).append(time.perf_counter() - t if ok else str(getattr(r, "status_code", r)))


async def _load(url: str, key: str, files: list[bytes], clients: int, seconds: float, pid: int) -> dict:
    lat: list[float] = []
    errors: list = []
    rss: list[int] = []
    stop = time.monotonic() + seconds

    async def sample_memory():
        while time.monotonic() < stop:
            rss.append(_rss_kb(pid))
            await asyncio.sleep(1.0)

    t0 = time.perf_counter()
    await asyncio.gather(sample_memory(), *[_client(url, key, files, stop, lat, errors, k) for k in range(clients)])
    wall = time.perf_counter() - t0
    tenth = max(1, len(rss) // 10)
    a = np.array(lat) * 1000
    return {"requests": len(lat) + len(errors), "errors": len(errors), "error_kinds": sorted(set(map(str, errors)))[:5],
            "req_per_s": len(lat) / wall, "p50_ms": float(np.percentile(a, 50)) if len(a) else None,
            "p99_ms": float(np.percentile(a, 99)) if len(a) else None,
            "rss_peak_mb": max(rss) / 1024 if rss else None,
            "rss_first_tenth_mb": float(np.mean(rss[:tenth])) / 1024 if rss else None,
            "rss_last_tenth_mb": float(np.mean(rss[-tenth:])) / 1024 if rss else None,
            "rss_every_10s_mb": [round(r / 1024) for r in rss[::10]]}


def run_server(home: str, window_ms: float, port: int) -> subprocess.Popen:
    env = dict(os.environ, DDPM_GUARD_HOME=home, DDPM_GUARD_BATCH_WINDOW_MS=str(window_ms),
               DDPM_GUARD_RATE_LIMIT_PER_MINUTE="0")
    p = subprocess.Popen([sys.executable, "-m", "ddpm_guard.api.cli", "serve", "--port", str(port)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return p
        except httpx.HTTPError:
            pass
        if p.poll() is not None:
            raise RuntimeError(p.stderr.read().decode()[-2000:])
        time.sleep(0.2)
    p.kill()
    raise RuntimeError("the server did not become ready")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--windows", type=float, nargs="+", default=[5.0, 0.0], help="batch windows (ms) to compare")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    files = _payloads()
    report = {"machine": {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
                          "python": platform.python_version(), "torch": torch.__version__},
              "clients": a.clients, "seconds": a.seconds, "runs": {}}
    with tempfile.TemporaryDirectory() as home:
        from ddpm_guard.api.cli import main as cli

        buf = io.StringIO()
        from contextlib import redirect_stdout

        os.environ["DDPM_GUARD_HOME"] = home
        with redirect_stdout(buf):
            cli(["keys", "new-api", "--account", "bench"])
        key = json.loads(buf.getvalue())["api_key"]
        for w in a.windows:
            port = _free_port()
            server = run_server(home, w, port)
            try:
                r = asyncio.run(_load(f"http://127.0.0.1:{port}/v1/scan", key, files, a.clients, a.seconds, server.pid))
            finally:
                server.terminate()
                server.wait(30)
            report["runs"][f"window_{w:g}ms"] = r
            print(json.dumps({f"window_{w:g}ms": r}), flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
