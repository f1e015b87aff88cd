"""Shared fixtures: tiny models so the suite runs in minutes on two CPU cores."""

from __future__ import annotations

import pytest
import torch

from ddpm_guard.generator.config import DiffusionConfig, TrainConfig, UNetConfig
from ddpm_guard.generator.data import load_dataset
from ddpm_guard.generator.schedule import NoiseSchedule
from ddpm_guard.generator.train import Trainer

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def tiny_unet(**kw) -> UNetConfig:
    base = dict(image_size=8, in_channels=1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), num_heads=2, dropout=0.0, num_classes=10, norm_groups=4)
    base.update(kw)
    return UNetConfig(**base)


def tiny_train(**kw) -> TrainConfig:
    base = dict(dataset="digits", batch_size=32, lr=2e-3, warmup_steps=10, max_steps=300, precision="fp32",
                checkpoint_every=10_000, log_every=10_000, ema_decay=0.99, seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits", "train")


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory, digits):
    """A tiny class-conditional DDPM trained for a few hundred steps on the 8x8 digits."""
    out = tmp_path_factory.mktemp("tiny_run")
    trainer = Trainer(out, tiny_unet(), DiffusionConfig(), tiny_train(), device="cpu", log=lambda s: None)
    trainer.fit(digits, progress=False)
    return out, trainer


@pytest.fixture(scope="session")
def schedule():
    return NoiseSchedule(DiffusionConfig())
