"""Time to quality: seconds to 1,000 samples at a target FID, ours against diffusers' schedulers
driving THE SAME network (the bundled U-Net, through a thin loop), in one run on one machine.

For each (system, steps): n samples (labels spread over the ten digits, guidance 1.5, the same x_T
for every system), FID and class accuracy on the project's digit-classifier features against the
1,000 held-out digits, and the sampling seconds. Systems run in turn within the run, so drift on
this shared machine hits all alike. Targets: our DDIM-50 FID (measured here) and that + 5; for each
system the fewest steps whose FID is within the target, its seconds, and the ratio of diffusers'
best to ours. Needs `pip install diffusers` (bench-only; `make bench` installs it).

`ours-student` rows run the distilled students (generator/distill.py) with DDIM on their own grid;
each student folder's config says its step count. They take the guidance scale as an input, so one
network pass per step, where every other row needs two (classifier-free guidance). `--spread-seeds`
reruns the chosen rows with other starting noise and reports FID's seed-to-seed standard deviation.

    python bench/time_to_quality.py --n 1000 --precision auto \
        --students generator/weights/mnist5k-student,runs/distill/s8,runs/distill/s2,runs/distill/s1
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from ddpm_guard.generator.checkpoint import load_model, save_json
from ddpm_guard.generator.classifier import predict
from ddpm_guard.generator.evaluate import feature_metrics, heldout_reference
from ddpm_guard.generator.image_io import quantize
from ddpm_guard.generator.pipeline import DEFAULT_GUIDANCE, spread_labels
from ddpm_guard.generator.samplers import autocast_for, guided_eps, resolve_precision, sample

DIFFUSERS = {  # name -> (class name, kwargs, step kwargs): each scheduler's recommended multistep setting
    # DDIM clips x0 like ours and, like ours, re-derives eps from the clipped x0 (without it, guided
    # samples from the first high-noise steps go wrong: FID 554 against 235 in a 20-sample probe)
    "diffusers-ddim": ("DDIMScheduler", {"clip_sample": True}, {"use_clipped_model_output": True}),
    "diffusers-dpmsolver++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, {}),
    "diffusers-unipc": ("UniPCMultistepScheduler", {"solver_order": 2, "predict_x0": True, "solver_type": "bh2"}, {}),
}


def diffusers_sampler(name: str, model, guidance: float, precision: str):
    import diffusers

    cls, kw, step_kw = DIFFUSERS[name]
    sched = getattr(diffusers, cls)(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                                    timestep_spacing="trailing", **kw)
    device = next(model.parameters()).device

    @torch.inference_mode()
    def run(x_T: torch.Tensor, steps: int, labels: torch.Tensor) -> torch.Tensor:
        sched.set_timesteps(steps)
        x = x_T.clone()
        with autocast_for(device, precision):
            for t in sched.timesteps:
                tt = torch.full((x.shape[0],), int(t), dtype=torch.long)
                eps = guided_eps(model, x, tt, labels, guidance)
                x = sched.step(eps, t, x, **step_kw).prev_sample
        return x.clamp(-1, 1)
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", default="ours-ddim:20,50;ours-dpmpp2m:5,10,15,20;ours-unipc:5,10,15,20;diffusers-ddim:20,50;"
                                      "diffusers-dpmsolver++2m:5,10,15,20;diffusers-unipc:5,10,15,20")
    ap.add_argument("--students", default="", help="comma-separated student checkpoint folders")
    ap.add_argument("--consistency", default=None,
                    help="a consistency-distilled student's folder: one model for every step count (--consistency-steps)")
    ap.add_argument("--consistency-steps", default="2,4,8")
    ap.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="CFG scale of every non-student row")
    ap.add_argument("--student-guidance", type=float, default=DEFAULT_GUIDANCE,
                    help="the CFG scale the students run at (an input of theirs; chosen on another seed by bench/student_guidance.py)")
    ap.add_argument("--write-fast", default=None,
                    help="write the fastest student within +5 FID of ours-ddim-50 as `sample --fast`'s config (weights/fast.json)")
    ap.add_argument("--spread-seeds", default="", help="comma-separated extra seeds for the spread rows")
    ap.add_argument("--spread-rows", default="ours-ddim-50,ours-unipc-10,diffusers-unipc-10,ours-student-4")
    a = ap.parse_args()
    precision = resolve_precision(a.precision, torch.device("cpu"))
    model, schedule, _ = load_model(None)
    net, real_f = heldout_reference()
    labels = spread_labels(a.n, 10)
    x_T = torch.randn((a.n, 1, 28, 28), generator=torch.Generator().manual_seed(a.seed))
    grid = {k: [int(s) for s in v.split(",")] for k, v in (p.split(":") for p in a.grid.split(";"))}
    students, student_dirs = {}, {}
    for folder in filter(None, a.students.split(",")):
        m, _, cfg = load_model(folder)
        students[int(cfg["distill"]["steps"])] = m
        student_dirs[int(cfg["distill"]["steps"])] = Path(folder)
    if students:
        grid["ours-student"] = sorted(students)
    cm = None
    if a.consistency:
        cm = load_model(a.consistency)[0]
        grid["ours-consistency"] = [int(v) for v in a.consistency_steps.split(",")]

    def ours(smp: str):
        return lambda x, st, lab: sample(model, schedule, tuple(x.shape), labels=lab, guidance=a.guidance, x_T=x,
                                         sampler=smp, steps=st, precision=precision)

    def student(x, st, lab):
        return sample(students[st], schedule, tuple(x.shape), labels=lab, guidance=a.student_guidance, x_T=x,
                      sampler="ddim", steps=st, precision=precision)

    def consistency(x, st, lab):  # DDIM with the student's x0: deterministic, so the x_T watermark still applies
        return sample(cm, schedule, tuple(x.shape), labels=lab, guidance=a.student_guidance, x_T=x,
                      sampler="ddim", steps=st, precision=precision)

    runners = {k: student if k == "ours-student" else consistency if k == "ours-consistency" else
               ours(k.split("-", 1)[1]) if k.startswith("ours") else
               diffusers_sampler(k, model, a.guidance, precision) for k in grid}
    rows = {}

    def measure(name: str, st: int, x_start: torch.Tensor) -> dict:
        t = time.perf_counter()
        x = torch.cat([runners[name](x_start[j:j + 250], st, labels[j:j + 250]) for j in range(0, a.n, 250)])
        secs = time.perf_counter() - t
        f, logits = predict(net, quantize(x))
        m = feature_metrics(f.numpy(), real_f)
        return {"system": name, "steps": st, "fid": m["fid"], "class_accuracy":
                float((logits.argmax(1) == labels).float().mean()), "seconds": secs}

    # in turn: every system's smallest step count first, then the next ... so slow phases of the machine spread out
    for i in range(max(map(len, grid.values()))):
        for name, steps in grid.items():
            if i >= len(steps):
                continue
            st = steps[i]
            rows[f"{name}-{st}"] = measure(name, st, x_T)
            print(json.dumps(rows[f"{name}-{st}"]), flush=True)
    spread = {}
    for seed in (int(s) for s in filter(None, a.spread_seeds.split(","))):
        x_seed = torch.randn((a.n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))
        for key in filter(lambda k: k in rows, a.spread_rows.split(",")):
            r = measure(rows[key]["system"], rows[key]["steps"], x_seed)
            spread.setdefault(key, [rows[key]["fid"]]).append(r["fid"])
            print(json.dumps({"spread": key, "seed": seed, **r}), flush=True)
    spread = {k: {"fids": v, "mean": float(np.mean(v)), "std": float(np.std(v, ddof=1))} for k, v in spread.items()}
    base = rows.get("ours-ddim-50", {}).get("fid")
    summary = {}
    if base is not None:
        for label, target in (("ddim50_fid", base), ("ddim50_fid_plus_5", base + 5)):
            best = {}
            for name in grid:
                ok = [r for r in rows.values() if r["system"] == name and r["fid"] <= target + 1e-9]
                if ok:
                    r = min(ok, key=lambda r: r["seconds"])
                    best[name] = {"steps": r["steps"], "seconds": r["seconds"], "fid": r["fid"]}
            ours_best = min((v for k, v in best.items() if k.startswith("ours")), key=lambda v: v["seconds"], default=None)
            theirs_best = min((v for k, v in best.items() if k.startswith("diffusers")), key=lambda v: v["seconds"], default=None)
            summary[label] = {"target_fid": target, "best": best,
                              "speedup_ours_vs_diffusers_best": (theirs_best["seconds"] / ours_best["seconds"])
                              if ours_best and theirs_best else None}
    if a.write_fast and base is not None:
        ok = [r for r in rows.values() if r["system"] in ("ours-student", "ours-consistency") and r["fid"] <= base + 5
              and r["class_accuracy"] >= 0.97]
        if not ok:
            print(f"no student within +5 of DDIM-50's FID {base:.2f}; {a.write_fast} not written", flush=True)
        else:
            r = min(ok, key=lambda r: r["seconds"])
            target = Path(a.write_fast)
            folder = Path(a.consistency) if r["system"] == "ours-consistency" else student_dirs[r["steps"]]
            save_json({"checkpoint": os.path.relpath(folder.resolve(), target.parent.resolve()),
                       "sampler": "ddim", "steps": r["steps"], "guidance": a.student_guidance, "fid": r["fid"],
                       "class_accuracy": r["class_accuracy"], "reference": "ours-ddim-50", "reference_fid": base,
                       "speedup_vs_reference": rows["ours-ddim-50"]["seconds"] / r["seconds"], "n": a.n,
                       "cpu_capability": torch.backends.cpu.get_cpu_capability(), "precision": precision,
                       "measured_by": "bench/time_to_quality.py"}, target)
    print(json.dumps({"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                      "precision": precision, "n": a.n, "guidance": a.guidance,
                      "student_guidance": a.student_guidance, "rows": rows, "summary": summary, "seed_spread": spread},
                     indent=1))


if __name__ == "__main__":
    main()
