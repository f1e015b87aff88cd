"""Speed of our generator against diffusers' UNet2DModel + DDIMScheduler, in ONE run on ONE machine.

    python bench/speed.py [--batch 64] [--steps 50] [--repeats 3] [--json]

Both models: 28x28x1, class-conditional, channel widths (32, 64, 64), two res blocks per level,
attention at 7x7, dropout 0.1 in the res blocks; parameter counts are printed. Reports DDIM-50 images/s, training steps/s, fp32
and bf16 autocast, the ratios ours/diffusers, FLOPs per forward and utilisation of the measured
GEMM peak. Needs `pip install diffusers` (a bench-only dependency).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ddpm_guard.generator.config import DiffusionConfig, UNetConfig
from ddpm_guard.generator.samplers import autocast_for, sample
from ddpm_guard.generator.schedule import NoiseSchedule
from ddpm_guard.generator.unet import UNet


def ours() -> torch.nn.Module:
    return UNet(UNetConfig(base_channels=32, channel_mult=(1, 2, 2), attention_resolutions=(7,))).eval()


def theirs() -> torch.nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                       layers_per_block=2, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8,
                       attention_head_dim=16, num_class_embeds=11,
                       dropout=0.1).eval()  # ours trains with dropout 0.1 (the bundled config): the same work


def sample_ours(model, batch, steps, precision):
    sched = NoiseSchedule(DiffusionConfig())
    labels = torch.arange(batch) % 10
    return lambda: sample(model, sched, (batch, 1, 28, 28), labels=labels, guidance=1.0, steps=steps,
                          generator=torch.Generator().manual_seed(0), precision=precision)


def sample_theirs(model, batch, steps, precision):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", timestep_spacing="trailing")
    labels = torch.arange(batch) % 10

    @torch.inference_mode()
    def run():
        model.eval()  # the training bench leaves it in train mode (dropout on); our sample() does the same
        sched.set_timesteps(steps)
        x = torch.randn((batch, 1, 28, 28), generator=torch.Generator().manual_seed(0))
        with autocast_for(torch.device("cpu"), precision):
            for t in sched.timesteps:
                eps = model(x, t, class_labels=labels).sample.float()
                x = sched.step(eps, t, x).prev_sample
        return x
    return run


def train_fn(model, batch, precision, is_ours):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, 28, 28)
    t = torch.randint(0, 1000, (batch,))
    y = torch.randint(0, 11, (batch,))

    def step():
        model.train()
        with autocast_for(torch.device("cpu"), precision):
            out = model(x, t, y) if is_ours else model(x, t, class_labels=y).sample
        loss = F.mse_loss(out.float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def interleaved_best(fns: dict, repeats: int) -> dict:
    """Best time of each function, running them in turn within every repeat (after one warm-up each)."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def gemm_peak(dtype: torch.dtype, n: int = 2048) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    s = interleaved_best({"mm": lambda: a @ b}, 5)["mm"]
    return 2 * n**3 / s


def flops_per_forward(model, batch, is_ours) -> int:
    x, t, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 1000, (batch,)), torch.arange(batch) % 10
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        model(x, t, y) if is_ours else model(x, t, class_labels=y)
    return fc.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    models = {"ours": ours(), "diffusers": theirs()}
    res: dict = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
                 "torch": torch.__version__, "batch": a.batch, "steps": a.steps,
                 "params": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
                 "gemm_peak_gflops": {"fp32": gemm_peak(torch.float32) / 1e9, "bf16": gemm_peak(torch.bfloat16) / 1e9}}
    res["flops_per_forward"] = {k: flops_per_forward(m, a.batch, k == "ours") for k, m in models.items()}
    for prec in ("fp32", "bf16"):
        # ours and diffusers alternate, repeat by repeat, so drift on this shared machine hits both alike
        fns = {k: (sample_ours if k == "ours" else sample_theirs)(m, a.batch, a.steps, prec) for k, m in models.items()}
        for k, s in interleaved_best(fns, a.repeats).items():
            res[f"sample_images_per_s_{prec}_{k}"] = a.batch / s
            res[f"sample_utilisation_{prec}_{k}"] = res["flops_per_forward"][k] * a.steps / s / 1e9 / res["gemm_peak_gflops"][prec]
        fns = {k: train_fn(m, a.batch, prec, k == "ours") for k, m in models.items()}
        for k, s in interleaved_best(fns, a.repeats).items():
            res[f"train_steps_per_s_{prec}_{k}"] = 1 / s
        res[f"sample_ratio_{prec}"] = res[f"sample_images_per_s_{prec}_ours"] / res[f"sample_images_per_s_{prec}_diffusers"]
        res[f"train_ratio_{prec}"] = res[f"train_steps_per_s_{prec}_ours"] / res[f"train_steps_per_s_{prec}_diffusers"]
    print(json.dumps(res, indent=None if a.json else 2))


if __name__ == "__main__":
    main()
