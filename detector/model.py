"""The detector network: a timm ResNet adapted to small images (stride-free stem), optionally on an NPR residual input.

- No early striding: timm's ResNet stem (7x7 stride-2 conv + stride-2 max-pool) divides a 28x28 image
  by 4 before the first block and averages away the high frequencies where generator traces live
  (Corvi et al. 2023 remove it for this reason). We use timm's deep 3x3 stem at stride 1 and no pool.
- NPR input (Tan et al., CVPR 2024): x - up(down(x)) with nearest-neighbour resampling by 2. It keeps
  only the local pixel correlations that up-sampling layers leave behind, and trains from scratch.
- input "both" stacks the image and its residual as channels.
- background_floor: the near-black background is flattened before any of this (see the config).
- stats: a second branch, late-fused: the stroke statistics of detector.stats (the level histogram at the top
  of the range, the flatness of the stroke cores; of the image and of its 3x3 median) through a small MLP, concatenated with the CNN's pooled
  features before the last linear layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ddpm_guard.generator.perturb import tidy
from ddpm_guard.detector.stats import N_STATS, branch_statistics

INPUTS = ("raw", "npr", "both")


@dataclass(frozen=True)
class DetectorConfig:
    arch: str = "resnet18"  # a timm ResNet name; `layers` and `channels` below override its depth and width
    layers: tuple[int, ...] = (1, 1, 1, 1)  # blocks per stage: shallow, for 28x28 digits and a 2-core CPU
    channels: tuple[int, ...] = (16, 32, 64, 128)  # stage widths: ~0.7 M parameters
    input: str = "raw"  # raw | npr | both (see the module docstring); raw held up best leaving a family out (BENCHMARKS.md)
    in_chans: int = 1  # image channels (1 grey, 3 colour); "both" doubles what the network sees
    image_size: int = 28  # images are fitted to this size before scoring
    # pixels at or below this many 8-bit levels are set to black before the network sees them, in training and
    # in use: a generator's faint grey background (and a forger's tidying of it, or a real scan's faint noise)
    # then carries no evidence either way, so the verdict has to rest on the strokes. 0 turns it off.
    background_floor: int = 0
    stats: bool = False  # late-fuse the stroke-statistics branch (detector.stats) with the CNN

    @classmethod
    def from_dict(cls, d: dict) -> "DetectorConfig":
        d = dict(d)
        for k in ("layers", "channels"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def npr(x: torch.Tensor) -> torch.Tensor:
    """x - up(down(x)), nearest-neighbour by a factor of 2 (odd sizes round down, then back up)."""
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, h // 2), max(1, w // 2)), mode="nearest")
    return x - F.interpolate(small, size=(h, w), mode="nearest")


class DetectorNet(nn.Module):
    """(B, C, H, W) in [-1, 1] -> (B,) logit of 'synthetic'."""

    def __init__(self, cfg: DetectorConfig = DetectorConfig()):
        super().__init__()
        if cfg.input not in INPUTS:
            raise ValueError(f"unknown detector input {cfg.input!r}; use one of {', '.join(INPUTS)}")
        self.config = cfg
        chans = cfg.in_chans * (2 if cfg.input == "both" else 1)
        # timm's 'deep' stem: three 3x3 convs of widths w/2, w/2, w (ResNet-C), w = the first stage's width
        net = timm.create_model(cfg.arch, pretrained=False, num_classes=1, in_chans=chans, layers=cfg.layers,
                                channels=cfg.channels, stem_type="deep", stem_width=max(1, cfg.channels[0] // 2))
        # no early striding: the stem's stride-2 conv becomes stride 1, and the max-pool goes
        net.conv1[0].stride = (1, 1)
        net.maxpool = nn.Identity()
        if cfg.stats:  # the last layer sees the CNN's pooled features and the statistics branch's
            n = 2 * cfg.in_chans * N_STATS
            self.stats_mlp = nn.Sequential(nn.BatchNorm1d(n), nn.Linear(n, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
            net.fc = nn.Linear(net.num_features + 64, 1)
        self.net = net

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """What the CNN sees of an image whose background is already floored."""
        if self.config.input == "npr":
            return npr(x) * 4  # the residual is small; x4 keeps its scale near the image's
        if self.config.input == "both":
            return torch.cat([x, npr(x) * 4], 1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]

    def forward_with_features(self, x: torch.Tensor, with_stats: bool = False) -> tuple[torch.Tensor, ...]:
        """(logit, the last layer's input[, the stroke statistics of the floored image]) in one pass: the features
        also feed the out-of-domain score, the statistics the edit router (detector.calibrate.EditRouter)."""
        if self.config.background_floor:
            x = tidy(x, self.config.background_floor)
        feats = self.net.forward_head(self.net.forward_features(self._inputs(x)), pre_logits=True)
        stats = branch_statistics(x) if self.config.stats or with_stats else None
        if self.config.stats:
            feats = torch.cat([feats, self.stats_mlp(stats)], 1)
        out = (self.net.fc(feats).squeeze(1), feats)
        return (*out, stats) if with_stats else out
