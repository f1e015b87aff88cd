"""Distillation of the guided DDPM into a few-step student, with the classifier-free guidance scale
distilled in as an input (Meng et al. 2023, "On distillation of guided diffusion models"). Two methods:

- progressive (Salimans & Ho 2022), the default, described below;
- consistency (Song et al. 2023, as Latent Consistency Models run it: a skipping-step DDIM teacher with
  the guidance scale as input): the student's x0 at t must equal a slowly moving copy's x0 at the
  point s one teacher step nearer the data, so one network pass maps any point of a guided ODE
  trajectory to its end. It learns every step count at once (`steps` is only the default it samples
  with) from one run.

One round teaches a student to cover in one DDIM step what its teacher covers in `teacher_steps /
steps` DDIM steps. The student predicts v (its x0 stays well posed at t = T, where an eps-predictor
would divide by alpha_T = 0.006) and takes the CFG scale w as an input, so it needs one network pass
per step where the teacher needs two. Rounds chain: the student of one round is the teacher of the
next (32 -> 8 -> 4 -> 2).

    ddpm-guard weights distill --teacher generator/weights/mnist5k --steps 8 --teacher-steps 32 --out runs/student8
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ddpm_guard.generator.checkpoint import default_device, load_model, save_model
from ddpm_guard.generator.config import config_to_dict
from ddpm_guard.generator.data import load_dataset
from ddpm_guard.generator.samplers import autocast_for, ddim_step, guided_eps, timesteps_for
from ddpm_guard.generator.schedule import NoiseSchedule
from ddpm_guard.generator.train import EMA
from ddpm_guard.generator.unet import UNet, VPrediction


@dataclass
class DistillConfig:
    steps: int = 8  # the student's DDIM steps after this round
    teacher_steps: int = 32  # the teacher's DDIM grid this round: a multiple of steps (2x in Salimans & Ho)
    guidance_min: float = 1.0  # the CFG scales the student learns (the CLI default 1.5 lies inside)
    guidance_max: float = 3.0
    dataset: str = "mnist5k"  # the teacher's training data (generator.data names)
    cond_drop_prob: float = 0.1  # share of null-class (unconditional) examples, as in the teacher's training
    batch_size: int = 64
    lr: float = 1e-4  # Adam; the student starts from its teacher, so a small rate
    warmup_steps: int = 50
    max_steps: int = 1500
    ema_decay: float = 0.998  # a short run: a ~500-step horizon
    grad_clip: float = 1.0
    precision: str = "bf16"  # the student's forward and backward
    teacher_precision: str = "fp32"  # bf16 teacher steps put 0.14 rms of noise into the first interval's target (measured)
    seed: int = 0
    checkpoint_every: int = 250
    eval_n: int = 500  # samples for the FID logged at each checkpoint (monitoring only; the bench uses n >= 1000)
    max_minutes: float | None = None
    method: str = "progressive"  # or "consistency"
    target_decay: float = 0.95  # consistency: the EMA rate of the target network (LCM's 0.95)


def make_student(teacher: nn.Module, schedule: NoiseSchedule) -> VPrediction:
    """A v-predicting, guidance-embedding copy of the teacher's network. The guidance MLP starts at
    zero, so the copy begins as the teacher's conditional model read as v (right at low noise, where
    v ~ eps; the first round teaches the rest)."""
    if isinstance(teacher, VPrediction):
        student = copy.deepcopy(teacher)
    else:
        cfg = replace(teacher.config, prediction="v", guidance_embed=True)
        unet = UNet(cfg)
        missing, unexpected = unet.load_state_dict(teacher.state_dict(), strict=False)
        if unexpected or any(not k.startswith("guidance_mlp.") for k in missing):
            raise ValueError(f"teacher and student do not match: {missing} {unexpected}")
        student = VPrediction(unet, schedule.sqrt_alphas_cumprod, schedule.sqrt_one_minus_alphas_cumprod)
    return student.to(next(teacher.parameters()).device)


def teacher_grid(schedule: NoiseSchedule, cfg: DistillConfig) -> torch.Tensor:
    """The teacher's DDIM timesteps this round, descending, with -1 (the clean image) appended."""
    return torch.tensor(timesteps_for(schedule.num_timesteps, cfg.teacher_steps) + [-1])


def distill_target(teacher: nn.Module, schedule: NoiseSchedule, z_t: torch.Tensor, i: torch.Tensor,
                   labels: torch.Tensor, w: torch.Tensor, cfg: DistillConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Salimans & Ho, Algorithm 2: from z_t at index i of the teacher's grid, the teacher runs k DDIM
    steps to the student's next point s; the target is the x0 that one DDIM step t -> s must predict
    to land where the teacher did. Returns (target x0, s); s = -1 (the clean image) gives target = z_s."""
    k = cfg.teacher_steps // cfg.steps
    grid = teacher_grid(schedule, cfg)
    device = z_t.device
    z = z_t
    with torch.no_grad(), autocast_for(torch.device(device), cfg.teacher_precision):
        for j in range(k):  # per-example timesteps: the sampler's own guidance and DDIM step (x0 clipped)
            tj, tn = grid[i + j].to(device), grid[i + j + 1].to(device)
            z = ddim_step(guided_eps(teacher, z, tj, labels, w), tj, tn, z, schedule, clip_x0=True)
    t, s = grid[i].to(device), grid[i + k].to(device)
    a_t, a_s = schedule.alpha_bar(t, z).sqrt(), schedule.alpha_bar(s, z).sqrt()
    ratio = (1 - a_s ** 2).sqrt() / (1 - a_t ** 2).sqrt()
    return (z - ratio * z_t) / (a_s - ratio * a_t), s


def distill_loss(student: VPrediction, teacher: nn.Module, schedule: NoiseSchedule, x0: torch.Tensor,
                 labels: torch.Tensor, cfg: DistillConfig, gen: torch.Generator) -> torch.Tensor:
    """Noise x0 to a random point t of the student's grid (a random CFG scale, a tenth of the labels
    dropped to the null class), and regress the student's x0 = alpha_t z_t - sigma_t v on the teacher's
    target with the truncated-SNR weight max(SNR_t, 1) (Salimans & Ho, Sec. 4)."""
    device, b = x0.device, x0.shape[0]
    k = cfg.teacher_steps // cfg.steps
    i = torch.randint(0, cfg.steps, (b,), generator=gen) * k  # the student's t, as an index on the teacher's grid
    noise = torch.randn(x0.shape, generator=gen).to(device)
    w = (cfg.guidance_min + (cfg.guidance_max - cfg.guidance_min) * torch.rand(b, generator=gen)).to(device)
    drop = (torch.rand(b, generator=gen) < cfg.cond_drop_prob).to(device)
    labels = torch.where(drop, torch.full_like(labels, student.config.num_classes), labels)
    t = teacher_grid(schedule, cfg)[i].to(device)
    a_t = schedule.alpha_bar(t, x0).sqrt()
    sig_t = (1 - a_t ** 2).sqrt()
    z_t = a_t * x0 + sig_t * noise
    target, _ = distill_target(teacher, schedule, z_t, i, labels, w, cfg)
    with autocast_for(torch.device(device), cfg.precision):
        v = student.v(z_t, t, labels, guidance=w).float()
    x_hat = a_t * z_t - sig_t * v
    weight = (a_t ** 2 / sig_t ** 2).clamp(min=1.0)
    return (weight * (x_hat - target) ** 2).mean()


def pseudo_huber(d: torch.Tensor) -> torch.Tensor:
    """sqrt(|d|^2 + c^2) - c per example, c = 0.00054 sqrt(dim) (Song & Dhariwal 2023, "Improved
    techniques for training consistency models"): L2 near zero, L1 for the outliers of early targets."""
    c = 0.00054 * d[0].numel() ** 0.5
    return ((d.flatten(1) ** 2).sum(1) + c * c).sqrt() - c


def consistency_loss(student: VPrediction, target: VPrediction, teacher: nn.Module, schedule: NoiseSchedule,
                     x0: torch.Tensor, labels: torch.Tensor, cfg: DistillConfig, gen: torch.Generator) -> torch.Tensor:
    """Consistency distillation: z_t = alpha_t x0 + sigma_t eps at a random point t of the teacher's
    grid; the teacher's guided DDIM step takes it to s, the next point (s = -1: the clean image); the
    student's x0 at (z_t, t) regresses on the target network's x0 at (z_s, s), or on z_s itself at
    s = -1 (the boundary condition f(x, 0) = x), under a pseudo-Huber distance."""
    device, b = x0.device, x0.shape[0]
    grid = teacher_grid(schedule, cfg)
    i = torch.randint(0, cfg.teacher_steps, (b,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen).to(device)
    w = (cfg.guidance_min + (cfg.guidance_max - cfg.guidance_min) * torch.rand(b, generator=gen)).to(device)
    drop = (torch.rand(b, generator=gen) < cfg.cond_drop_prob).to(device)
    labels = torch.where(drop, torch.full_like(labels, student.config.num_classes), labels)
    t, s = grid[i].to(device), grid[i + 1].to(device)
    a_t = schedule.alpha_bar(t, x0).sqrt()
    sig_t = (1 - a_t ** 2).sqrt()
    z_t = a_t * x0 + sig_t * noise
    with torch.no_grad():
        with autocast_for(torch.device(device), cfg.teacher_precision):
            z_s = ddim_step(guided_eps(teacher, z_t, t, labels, w), t, s, z_t, schedule, clip_x0=True)
        s0 = s.clamp(min=0)  # the target network is not asked about s = -1; its answer there is z_s
        a_s = schedule.alpha_bar(s0, x0).sqrt()
        with autocast_for(torch.device(device), cfg.precision):
            v_s = target.v(z_s, s0, labels, guidance=w).float()
        x_s = a_s * z_s - (1 - a_s ** 2).sqrt() * v_s
        goal = torch.where((s < 0).view(-1, 1, 1, 1), z_s, x_s)
    with autocast_for(torch.device(device), cfg.precision):
        v = student.v(z_t, t, labels, guidance=w).float()
    return pseudo_huber(a_t * z_t - sig_t * v - goal).mean()


def fid_of(model: nn.Module, schedule: NoiseSchedule, steps: int, guidance: float, n: int, seed: int = 0) -> dict:
    """Monitoring: FID and class accuracy of n DDIM samples against the held-out digits."""
    from ddpm_guard.generator.classifier import predict
    from ddpm_guard.generator.evaluate import heldout_reference
    from ddpm_guard.generator.image_io import quantize
    from ddpm_guard.generator.metrics import fid
    from ddpm_guard.generator.pipeline import generate

    net, real_f = heldout_reference()
    x, y = generate(model, schedule, n, guidance=guidance, steps=steps, seed=seed, precision="bf16")
    f, logits = predict(net, quantize(x))
    return {"fid": fid(f.numpy(), real_f), "class_accuracy": float((logits.argmax(1) == y).float().mean())}


def distill(teacher_dir: str | Path | None, out_dir: str | Path, cfg: DistillConfig, log=print) -> Path:
    if cfg.method not in ("progressive", "consistency"):
        raise ValueError(f"unknown method {cfg.method!r}; use 'progressive' or 'consistency'")
    if cfg.teacher_steps % cfg.steps:
        raise ValueError(f"teacher_steps {cfg.teacher_steps} is not a multiple of steps {cfg.steps}")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = default_device()
    teacher, schedule, tcfg = load_model(teacher_dir, device=device)
    teacher.requires_grad_(False)
    student = make_student(teacher, schedule).train()
    student.unet.requires_grad_(True)
    ucfg = student.config
    data = load_dataset(cfg.dataset, "train", image_size=ucfg.image_size, channels=ucfg.in_channels)
    opt = torch.optim.Adam(student.unet.parameters(), lr=cfg.lr)
    ema = EMA(student.unet, cfg.ema_decay)
    target = None
    if cfg.method == "consistency":  # the slowly moving copy whose x0 the student chases
        target = copy.deepcopy(student).requires_grad_(False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    history = []
    lineage = list(tcfg.get("distill", {}).get("lineage", [])) + [
        {"teacher": str(teacher_dir or "bundled"), **config_to_dict(cfg)}]
    t0, losses = time.time(), []

    def checkpoint(step: int) -> None:
        ev_model = copy.deepcopy(student).eval()
        ev_model.unet.load_state_dict(ema.shadow)
        ev = fid_of(ev_model, schedule, cfg.steps, 1.5, cfg.eval_n) if cfg.eval_n else {}
        row = {"step": step, "loss": sum(losses) / max(len(losses), 1), "minutes": (time.time() - t0) / 60, **ev}
        history.append(row)
        log(json.dumps(row))
        save_model(out, ev_model.unet, schedule.config, weights=ema.shadow,
                   extra={"step": step, "weights": "ema",
                          "distill": {"steps": cfg.steps, "method": cfg.method, "guidance_range": [cfg.guidance_min, cfg.guidance_max],
                                      "lineage": lineage, "history": history}})
        losses.clear()

    for step in range(1, cfg.max_steps + 1):
        lr = cfg.lr * min(1.0, step / cfg.warmup_steps) * (1 - (step - 1) / cfg.max_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        x0, y = data.images[idx].to(device), data.labels[idx].to(device)
        if target is None:
            loss = distill_loss(student, teacher, schedule, x0, y, cfg, gen)
        else:
            loss = consistency_loss(student, target, teacher, schedule, x0, y, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(student.unet.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(student.unet, step)
        if target is not None:
            with torch.no_grad():
                for p_t, p in zip(target.unet.parameters(), student.unet.parameters()):
                    p_t.lerp_(p, 1 - cfg.target_decay)
        losses.append(loss.item())
        done = cfg.max_minutes is not None and time.time() - t0 > cfg.max_minutes * 60
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps or done:
            checkpoint(step)
        if done:
            log(f"stopping at step {step}: max_minutes reached")
            break
    return out
