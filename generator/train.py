"""Training: the epsilon-prediction loss of Ho et al. (Eq. 14), with AdamW, warmup, grad clip,
EMA, bf16 autocast, label dropout for classifier-free guidance, atomic checkpoints and exact resume.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_guard.generator.checkpoint import (CONFIG_NAME, STATE_NAME, default_device, load_tensors, read_config,
                                  save_model, save_tensors)
from ddpm_guard.generator.config import DiffusionConfig, TrainConfig, UNetConfig, config_from_dict, config_to_dict
from ddpm_guard.generator.data import Dataset
from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.samplers import autocast_for
from ddpm_guard.generator.schedule import NoiseSchedule
from ddpm_guard.generator.unet import UNet


def fit_supervised(net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, *,
                   augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor], gen: torch.Generator,
                   epochs: int, batch_size: int, lr: float, weight_decay: float = 1e-4,
                   device: torch.device | None = None, log: Callable[[str], None] | None = None) -> nn.Module:
    """The small supervised loop the digit classifier and the detector share: AdamW with a one-cycle
    schedule, a fresh permutation from `gen` each epoch, and `augment(batch, gen)` on every batch."""
    device = device or next(net.parameters()).device
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * math.ceil(len(x) / batch_size))
    net.train()
    for ep in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total, t0 = 0.0, time.time()
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            loss = loss_fn(net(augment(x[idx], gen).to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if log:
            log(f"epoch {ep + 1}/{epochs} loss {total / len(x):.4f} ({time.time() - t0:.0f} s)")
    return net.eval()


class EMA:
    """Exponential moving average of the weights. The decay ramps up as (1 + n) / (10 + n) so the
    average is not dominated by the random initialisation in short runs."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach().float(), 1 - d)
            else:
                self.shadow[k].copy_(v)


def train_step(model: UNet, schedule: NoiseSchedule, x0: torch.Tensor, labels: torch.Tensor | None,
               cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """One loss evaluation: ||eps - eps_theta(sqrt(abar) x0 + sqrt(1 - abar) eps, t)||^2 (Eq. 14)."""
    b, device = x0.shape[0], x0.device
    t = torch.randint(0, schedule.num_timesteps, (b,), generator=generator).to(device)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    if labels is not None:
        # label dropout: the null class teaches the unconditional model needed by CFG
        drop = torch.rand(b, generator=generator).to(device) < cfg.cond_drop_prob
        labels = torch.where(drop, torch.full_like(labels, model.config.num_classes), labels)
    x_t = schedule.add_noise(x0, noise, t)
    with autocast_for(device, cfg.precision):
        pred = model(x_t, t, labels)
    return F.mse_loss(pred.float(), noise)


class Trainer:
    """Owns one run folder. `fit` trains to cfg.max_steps, checkpointing every cfg.checkpoint_every."""

    def __init__(self, out_dir: str | Path, unet: UNetConfig, diffusion: DiffusionConfig, train: TrainConfig,
                 device: torch.device | str | None = None, log: Callable[[str], None] | None = None):
        self.out = Path(out_dir)
        self.unet_cfg, self.diff_cfg, self.cfg = unet, diffusion, train
        self.device = torch.device(device) if device else default_device()
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        torch.manual_seed(train.seed)  # init and dropout
        self.model = UNet(unet).to(self.device)
        self.schedule = NoiseSchedule(diffusion)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        self.ema = EMA(self.model, train.ema_decay)
        self.gen = torch.Generator().manual_seed(train.seed)  # batches, timesteps, noise, label dropout
        self.step = 0

    @classmethod
    def resume(cls, out_dir: str | Path, device: torch.device | str | None = None,
               max_steps: int | None = None, log: Callable[[str], None] | None = None,
               max_minutes: float | None = None) -> "Trainer":
        """The run in `out_dir`, at its last checkpoint. `max_steps` and `max_minutes`, when given, replace the
        stored limits (a resumed run's wall-time budget counts from the resume)."""
        cfg = read_config(out_dir)
        if "train" not in cfg:
            raise GuardError(f"{out_dir}: holds no training run to resume")
        train = config_from_dict(TrainConfig, cfg["train"])
        if max_steps is not None:
            train.max_steps = max_steps
        if max_minutes is not None:
            train.max_minutes = max_minutes
        self = cls(out_dir, config_from_dict(UNetConfig, cfg["unet"]),
                   config_from_dict(DiffusionConfig, cfg["diffusion"]), train, device, log)
        self._load_state(cfg.get("step"))
        return self

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        t = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        t.update({f"ema.{k}": v for k, v in self.ema.shadow.items()})
        for idx, st in self.opt.state_dict()["state"].items():
            t.update({f"optim.{idx}.{k}": torch.as_tensor(v) for k, v in st.items()})
        t["rng.generator"] = self.gen.get_state()
        t["rng.torch"] = torch.get_rng_state()
        if self.device.type == "cuda":
            t["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        return t

    def save(self) -> None:
        groups = self.opt.state_dict()["param_groups"]
        meta = {"step": str(self.step), "param_groups": json.dumps(groups)}
        # order matters for crash safety: train state, then weights, then config.json (the commit point)
        save_tensors(self._state_tensors(), self.out / STATE_NAME, metadata=meta)
        save_model(self.out, self.model, self.diff_cfg, weights=self.ema.shadow,
                   extra={"train": config_to_dict(self.cfg), "step": self.step, "weights": "ema"})

    def _load_state(self, cfg_step: int | None) -> None:
        tensors, meta = load_tensors(self.out / STATE_NAME)
        step = int(meta.get("step", -1))
        if step != cfg_step:
            raise GuardError(f"{self.out}: train state is at step {step} but config.json at {cfg_step}; "
                             "the run folder is inconsistent")
        try:
            self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            for k in self.ema.shadow:
                self.ema.shadow[k] = tensors[f"ema.{k}"].to(self.device)
            state: dict[int, dict[str, torch.Tensor]] = {}
            for k, v in tensors.items():
                if k.startswith("optim."):
                    _, idx, name = k.split(".", 2)
                    state.setdefault(int(idx), {})[name] = v
            self.opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
        except (KeyError, RuntimeError, ValueError) as e:
            raise GuardError(f"{self.out / STATE_NAME}: does not match config.json ({e})") from None
        self.gen.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        if self.device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.step = step

    def lr_at(self, step: int) -> float:
        return self.cfg.lr * min(1.0, (step + 1) / max(1, self.cfg.warmup_steps))

    def fit(self, data: Dataset, progress: bool = True) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        if data.images.shape[1:] != (self.unet_cfg.in_channels, self.unet_cfg.image_size, self.unet_cfg.image_size):
            raise GuardError(f"data has shape {tuple(data.images.shape[1:])}, the model expects "
                             f"({self.unet_cfg.in_channels}, {self.unet_cfg.image_size}, {self.unet_cfg.image_size})")
        conditional = bool(self.unet_cfg.num_classes)
        if conditional and (data.labels < 0).any():
            raise GuardError(f"{data.name} is unlabelled; train an unconditional model (--unconditional)")
        images = data.images.to(self.device)
        labels = data.labels.to(self.device) if conditional else None
        model.train()
        start, t_log, loss_sum, n_sum = time.time(), time.time(), 0.0, 0
        logf = (self.out / "train_log.jsonl")
        self.out.mkdir(parents=True, exist_ok=True)
        last = {}
        while self.step < cfg.max_steps:
            idx = torch.randint(0, len(images), (cfg.batch_size,), generator=self.gen).to(self.device)
            for g in self.opt.param_groups:
                g["lr"] = self.lr_at(self.step)
            loss = train_step(model, self.schedule, images[idx], labels[idx] if labels is not None else None,
                              cfg, self.gen)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise RuntimeError(f"loss became {loss_value} at step {self.step}; lower --lr")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.opt.step()
            self.step += 1
            self.ema.update(model, self.step)
            loss_sum, n_sum = loss_sum + loss_value, n_sum + 1
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                now = time.time()
                last = {"step": self.step, "loss": loss_sum / n_sum, "grad_norm": float(gnorm),
                        "lr": self.lr_at(self.step - 1), "steps_per_s": n_sum / (now - t_log),
                        "elapsed_s": now - start}
                with logf.open("a") as f:
                    f.write(json.dumps(last) + "\n")
                if progress:
                    self.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items()))
                t_log, loss_sum, n_sum = now, 0.0, 0
            out_of_time = cfg.max_minutes is not None and time.time() - start > 60 * cfg.max_minutes
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps or out_of_time:
                self.save()
            if out_of_time:
                self.log(f"stopping at step {self.step}: --max-minutes {cfg.max_minutes} reached")
                break
        model.eval()
        return last


def train_run(out_dir: str | Path, unet: UNetConfig | None = None, diffusion: DiffusionConfig | None = None,
              train: TrainConfig | None = None, *, resume: bool = False, max_steps: int | None = None,
              max_minutes: float | None = None) -> dict[str, float]:
    """Train a new run in `out_dir` (refused if it already holds one), or with `resume` continue the one there
    exactly where it stopped; the data set is the run's own. Returns the last logged metrics."""
    from ddpm_guard.generator.data import load_dataset

    if resume:
        trainer = Trainer.resume(out_dir, max_steps=max_steps, max_minutes=max_minutes)
    else:
        if (Path(out_dir) / CONFIG_NAME).exists():
            raise GuardError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
        trainer = Trainer(out_dir, unet or UNetConfig(), diffusion or DiffusionConfig(), train or TrainConfig())
    cfg = trainer.unet_cfg
    data = load_dataset(trainer.cfg.dataset, "train", image_size=cfg.image_size, channels=cfg.in_channels)
    return trainer.fit(data)
