"""Which speed levers help our sampler on this CPU? Each is measured, none assumed.

    python bench/levers.py [--batch 64] [--steps 10] [--repeats 3]

Times DDIM sampling (images/s) of the bench architecture (the one bench/speed.py compares with
diffusers) under: fp32 vs bf16 autocast, channels_last memory format, no_grad vs inference_mode,
1 vs all threads, and torch.compile (skipped with a note if it cannot compile here). Best of
`repeats` after a warm-up, all in one process on one machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from ddpm_guard.generator.config import DiffusionConfig
from ddpm_guard.generator.samplers import ddim_step, guided_eps, timesteps_for
from ddpm_guard.generator.schedule import NoiseSchedule

from speed import ours  # bench/speed.py: the same architecture as the diffusers comparison


def ddim_loop(model, sched, x, labels, steps, precision, memory_format):
    grid = timesteps_for(sched.num_timesteps, steps)
    x = x.to(memory_format=memory_format)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with ctx:
        for i, t in enumerate(grid):
            tt = torch.full((x.shape[0],), t, dtype=torch.long)
            eps = guided_eps(model, x, tt, labels, 1.0)
            x = ddim_step(eps, t, grid[i + 1] if i + 1 < len(grid) else -1, x, sched)
    return x


def measure(fn, repeats):
    t0 = time.perf_counter()
    fn()  # warm-up; for torch.compile this is where compilation happens
    warm = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best, warm


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also try torch.compile (slow to compile)")
    a = ap.parse_args()
    sched = NoiseSchedule(DiffusionConfig())
    x = torch.randn(a.batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(a.batch) % 10
    threads = torch.get_num_threads()
    rows = {}

    def run(name, model, precision="fp32", fmt=torch.contiguous_format, grad_ctx=torch.inference_mode, nthreads=threads):
        torch.set_num_threads(nthreads)
        m = model.to(memory_format=fmt)

        def fn():
            with grad_ctx():
                ddim_loop(m, sched, x, labels, a.steps, precision, fmt)
        secs, warm = measure(fn, a.repeats)
        rows[name] = a.batch / secs  # images/s of an a.steps-step sampler
        print(f"{name:40s} {rows[name]:8.2f} images/s ({a.steps} steps; first call {warm:.1f} s)", flush=True)
        torch.set_num_threads(threads)

    base = ours()
    run("fp32 (baseline)", base)
    run("fp32 no_grad instead of inference_mode", base, grad_ctx=torch.no_grad)
    run("fp32 channels_last", base, fmt=torch.channels_last)
    run("fp32 1 thread", base, nthreads=1)
    run("bf16 autocast", base, precision="bf16")
    run("bf16 autocast + channels_last", base, precision="bf16", fmt=torch.channels_last)
    base = base.to(memory_format=torch.contiguous_format)
    if a.compile:
        try:
            comp = torch.compile(base)
            run("fp32 torch.compile", comp)
            run("bf16 torch.compile", comp, precision="bf16")
        except Exception as e:  # a compiler missing on the machine is a result, not a crash
            print(f"torch.compile: not available here ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    print(json.dumps({"batch": a.batch, "steps": a.steps, "threads": threads,
                      "images_per_s": rows, "ratio_to_baseline": {k: v / rows["fp32 (baseline)"] for k, v in rows.items()}}))


if __name__ == "__main__":
    main()
