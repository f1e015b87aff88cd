"""Checkpoints: safetensors weights + config.json, written atomically; loading never unpickles.

A checkpoint folder holds
- ``config.json``: {"format": ..., "unet": {...}, "diffusion": {...}, "train": {...}, "step": N, ...}
- ``model.safetensors``: the weights to sample with (the EMA weights of a training run)
- ``train_state.safetensors`` (training runs only): raw weights, optimizer moments and RNG states,
  so ``--resume`` continues the same run exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from ddpm_guard.generator.config import DiffusionConfig, UNetConfig, config_from_dict, config_to_dict
from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.fsutil import atomic_write, atomic_write_bytes
from ddpm_guard.generator.schedule import NoiseSchedule
from ddpm_guard.generator.unet import UNet, VPrediction

FORMAT = "ddpm-guard/unet-v1"
CONFIG_NAME, WEIGHTS_NAME, STATE_NAME = "config.json", "model.safetensors", "train_state.safetensors"
BUNDLED = Path(__file__).parent / "weights" / "mnist5k"
BUNDLED_COLOR = Path(__file__).parent / "weights" / "photos32"  # the colorization prior (32x32 RGB photo patches)
FAST = Path(__file__).parent / "weights" / "fast.json"  # what `sample --fast` runs: checkpoint, sampler, steps (measured)


@dataclass(frozen=True)
class Distilled:
    """What a distilled student's config says about using it (attached to the model as `.distilled`)."""
    steps: int  # the DDIM grid it learned
    guidance_range: tuple[float, float]  # the CFG scales it learned


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise GuardError(f"{path}: missing; is this a ddpm-guard checkpoint folder?")
    try:
        with safe_open(str(path), framework="pt") as f:  # one open: metadata and tensors together
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise GuardError(f"{path}: corrupt or not a safetensors file ({e})") from None


def save_json(obj: dict[str, Any], path: Path) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_config(folder: str | os.PathLike, fmt: str = FORMAT) -> dict[str, Any]:
    folder = Path(folder)
    if not folder.is_dir():
        raise GuardError(f"{folder}: no such checkpoint folder")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise GuardError(f"{path}: missing; is this a ddpm-guard checkpoint folder?")
    try:
        cfg = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise GuardError(f"{path}: corrupt JSON ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != fmt:
        raise GuardError(f"{path}: not a {fmt} config")
    return cfg


def save_model(folder: str | os.PathLike, model: torch.nn.Module, diffusion: DiffusionConfig,
               extra: dict[str, Any] | None = None, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write model.safetensors (then config.json, so a config always points at complete weights)."""
    folder = Path(folder)
    model = getattr(model, "unet", model)  # a VPrediction wrapper saves its network (its buffers come from the schedule)
    save_tensors(weights if weights is not None else model.state_dict(), folder / WEIGHTS_NAME)
    cfg = {"format": FORMAT, "unet": config_to_dict(model.config), "diffusion": config_to_dict(diffusion)}
    cfg.update(extra or {})
    save_json(cfg, folder / CONFIG_NAME)
    return folder


def load_model(folder: str | os.PathLike | None = None, device: torch.device | str | None = None
               ) -> tuple[UNet | VPrediction, NoiseSchedule, dict[str, Any]]:
    """Load (model in eval mode, schedule, config dict). None loads the bundled default model."""
    folder = Path(folder) if folder is not None else BUNDLED
    cfg = read_config(folder)
    try:
        unet_cfg = config_from_dict(UNetConfig, cfg["unet"])
        diff_cfg = config_from_dict(DiffusionConfig, cfg["diffusion"])
        model = UNet(unet_cfg)
        schedule = NoiseSchedule(diff_cfg)
    except (KeyError, TypeError, ValueError) as e:
        raise GuardError(f"{folder / CONFIG_NAME}: invalid model config ({e})") from None
    tensors, _ = load_tensors(folder / WEIGHTS_NAME)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise GuardError(f"{folder / WEIGHTS_NAME}: weights do not match config.json ({first})") from None
    if unet_cfg.prediction == "v":  # a distilled student: seen from outside as a noise predictor
        model = VPrediction(model, schedule.sqrt_alphas_cumprod, schedule.sqrt_one_minus_alphas_cumprod)
    if "distill" in cfg:  # a student: generate defaults to its grid and refuses scales it never learned
        d = cfg["distill"]
        model.distilled = Distilled(int(d["steps"]), tuple(d.get("guidance_range", (0.0, float("inf")))))
    model.to(device or default_device()).eval()
    return model, schedule, cfg


@dataclass(frozen=True)
class Fast:
    """`sample --fast`'s configuration (weights/fast.json, written by the time-to-quality bench)."""
    model: torch.nn.Module
    schedule: NoiseSchedule
    sampler: str
    steps: int
    guidance: float
    record: dict  # fast.json as measured: FID, reference FID, speed-up, machine


def load_fast(device: torch.device | str | None = None) -> Fast:
    """The fastest bundled configuration whose FID stays within +5 of the default sampler's, as the
    time-to-quality bench measured it (weights/fast.json)."""
    try:
        rec = json.loads(FAST.read_text())
        folder = FAST.parent / rec["checkpoint"]
        sampler, steps, guidance = str(rec["sampler"]), int(rec["steps"]), float(rec["guidance"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GuardError(f"{FAST}: missing or invalid, so there is no fast configuration ({e})") from None
    model, schedule, _ = load_model(folder, device)
    return Fast(model, schedule, sampler, steps, guidance, rec)
