"""Configuration dataclasses. Every default carries a comment saying why it is what it is."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class UNetConfig:
    image_size: int = 28  # MNIST; must be divisible by 2 ** (len(channel_mult) - 1)
    in_channels: int = 1  # 1 for digits, 3 for colour
    base_channels: int = 64  # width of the first level; the main speed/quality knob on a CPU
    channel_mult: tuple[int, ...] = (1, 2, 2)  # 28 -> 14 -> 7: three levels are enough for digits
    num_res_blocks: int = 2  # per level, as in Ho et al.
    attention_resolutions: tuple[int, ...] = (7,)  # self-attention only where it is cheap (low res)
    num_heads: int = 4  # heads of each attention block
    dropout: float = 0.1  # Ho et al. used 0.1 on CIFAR-10; regularises a small data set
    num_classes: int | None = 10  # class conditioning; None = unconditional. Index num_classes is the null class
    norm_groups: int = 8  # GroupNorm groups; 32 is too many for 32-64 channel blocks
    prediction: str = "eps"  # "eps" (Ho et al.) or "v" = alpha eps - sigma x0 (Salimans & Ho 2022): a few-step student's x0 stays well posed at t = T
    guidance_embed: bool = False  # the CFG scale is an input (Meng et al. 2023): one pass per step instead of two

    def __post_init__(self) -> None:
        self.channel_mult = tuple(self.channel_mult)
        self.attention_resolutions = tuple(self.attention_resolutions)
        if self.prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {self.prediction!r}")


@dataclass
class DiffusionConfig:
    num_timesteps: int = 1000  # T of Ho et al.
    beta_schedule: str = "linear"  # "linear" (Ho et al.) or "cosine" (Nichol & Dhariwal)
    beta_start: float = 1e-4  # linear schedule endpoints from Ho et al.
    beta_end: float = 0.02


@dataclass
class TrainConfig:
    dataset: str = "mnist5k"  # a name understood by generator.data.load_dataset
    batch_size: int = 128  # fills two CPU cores without starving the optimiser of steps
    lr: float = 2e-4  # Ho et al.'s CIFAR-10 rate
    weight_decay: float = 0.0  # AdamW decay; the EMA already regularises
    warmup_steps: int = 500  # linear warmup avoids early blow-ups at this lr
    grad_clip: float = 1.0  # global grad-norm clip, as in Ho et al.
    ema_decay: float = 0.999  # ~1000-step horizon: suits runs of 10k-50k steps (0.9999 would still be noise)
    cond_drop_prob: float = 0.1  # label dropout for classifier-free guidance (Ho & Salimans)
    max_steps: int = 20000  # total optimiser steps
    precision: str = "bf16"  # "bf16" autocast, "fp32", or "auto" (bf16 only where the hardware runs it natively)
    checkpoint_every: int = 1000  # steps between atomic checkpoints
    log_every: int = 100  # steps between log lines
    seed: int = 0  # seeds init, batches, timesteps, noise and dropout
    max_minutes: float | None = None  # stop (with a checkpoint) after this wall time


def config_to_dict(cfg: Any) -> dict[str, Any]:
    d = asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def config_from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Build a dataclass from a dict, ignoring nothing silently: unknown keys are an error."""
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return cls(**d)


__all__ = ["UNetConfig", "DiffusionConfig", "TrainConfig", "config_to_dict", "config_from_dict"]
