"""The guided mark's network and training configurations: plain dataclasses with no torch import, so the command
line can offer their fields without loading the networks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DecoderConfig:
    bits: int = 72  # codeword length: 32 keyed zero-bit chips + 32 payload bits + an 8-bit keyed tag
    width: int = 32  # channels at full resolution (x2, x4 after each stride): ~22 M multiply-adds per image
    image_size: int = 28
    channels: int = 1
    # moment normalisation before the CNN (Alghoniemy & Tewfik 2000): centroid to the centre, principal
    # axis upright, radius of gyration fixed, heavier end down. Rotation, crop and rescale then move the
    # digit's own frame along with the mark, so the CNN sees the mark where it was put.
    canonical: bool = False


@dataclass
class TrainConfig:
    steps: int = 6000
    batch_size: int = 64
    lr: float = 1e-3
    strength: float = 0.25  # the encoder's residual bound, in [-1, 1] pixel units
    image_weight: float = 2.0  # weight of the residual's mean square in the encoder's loss
    identity_share: float = 0.15  # share of each batch shown unattacked
    seed: int = 0
    max_minutes: float | None = None
