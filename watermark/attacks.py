"""The robustness suite: Tree-Ring's six attacks (Wen et al. 2023) scaled to small images, plus
resize x0.5 and a 3x3 median filter. The image operations live in generator.perturb (the detector
uses them too); this module names the suite.

Every attack takes a batch (B, C, H, W) in [-1, 1] and a torch.Generator and returns a batch in
[-1, 1] of the same shape.
"""

from __future__ import annotations

from typing import Callable

import torch

from generator.perturb import (gaussian_blur, gaussian_noise, jpeg, median_filter, random_brightness,
                               random_resized_crop, resize_and_back, rotate)

Attack = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

ATTACKS: dict[str, Attack] = {
    "clean": lambda x, g: x,
    "rotate15": lambda x, g: rotate(x, 15),
    "rotate45": lambda x, g: rotate(x, 45),
    "rotate75": lambda x, g: rotate(x, 75),
    "jpeg25": lambda x, g: jpeg(x, 25),
    "crop0.75": random_resized_crop,
    "blur1": lambda x, g: gaussian_blur(x, 1.0),
    "noise0.1": gaussian_noise,
    "brightness0-6": random_brightness,
    "resize0.5": lambda x, g: resize_and_back(x, 0.5),
    "median3": lambda x, g: median_filter(x, 3),
}
# Tree-Ring's six attacks (rotation at 75 degrees, its setting), for the headline average
TREE_RING_SIX = ("rotate75", "jpeg25", "crop0.75", "blur1", "noise0.1", "brightness0-6")
