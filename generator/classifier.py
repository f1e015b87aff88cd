"""The project's own digit classifier: the feature network for offline quality metrics.

Inception weights cannot be downloaded here and suit 28x28 digits badly, so FID/KID/precision/
recall are computed on the penultimate features of this small CNN, trained on the 4,000 training
digits only (never on the 1,000 held-out ones, which serve as the reference set).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_guard.generator.checkpoint import load_tensors, read_config, save_json, save_tensors
from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.train import fit_supervised

CLASSIFIER_FORMAT = "ddpm-guard/digit-classifier-v1"
BUNDLED_CLASSIFIER = Path(__file__).parent / "weights" / "digit_classifier"


class DigitNet(nn.Module):
    """conv-conv-pool x2, then a 128-d feature layer (the metric space) and a linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feat_dim: int = 128):
        super().__init__()
        self.config = dict(in_channels=in_channels, num_classes=num_classes, width=width, feat_dim=feat_dim)
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(2 * w * 7 * 7, feat_dim), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(feat_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 28:
            x = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels: cheap, label-preserving."""
    pad = F.pad(x, (2, 2, 2, 2), value=-1.0)
    out = torch.empty_like(x)
    offs = torch.randint(0, 5, (len(x), 2), generator=gen)
    for i, (dy, dx) in enumerate(offs.tolist()):
        out[i] = pad[i, :, dy:dy + 28, dx:dx + 28]
    return out


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, epochs: int = 15, batch_size: int = 128,
                     lr: float = 2e-3, seed: int = 0, log=None) -> DigitNet:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = DigitNet()
    return fit_supervised(net, images, labels, F.cross_entropy, augment=_augment, gen=gen, epochs=epochs,
                          batch_size=batch_size, lr=lr, log=log)


def save_classifier(net: DigitNet, folder: str | Path, extra: dict | None = None) -> None:
    folder = Path(folder)
    save_tensors(net.state_dict(), folder / "model.safetensors")
    save_json({"format": CLASSIFIER_FORMAT, "model": net.config, **(extra or {})}, folder / "config.json")


def load_classifier(folder: str | Path | None = None, device: str | torch.device = "cpu") -> DigitNet:
    folder = Path(folder) if folder is not None else BUNDLED_CLASSIFIER
    cfg = read_config(folder, CLASSIFIER_FORMAT)
    net = DigitNet(**cfg["model"])
    tensors, _ = load_tensors(folder / "model.safetensors")
    try:
        net.load_state_dict(tensors)
    except RuntimeError as e:
        raise GuardError(f"{folder}: classifier weights do not match its config ({str(e).splitlines()[0]})") from None
    return net.to(device).eval()


@torch.inference_mode()
def predict(net: DigitNet, images: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, 128), logits (N, 10)) for images in [-1, 1]."""
    dev = next(net.parameters()).device
    feats, logits = [], []
    for i in range(0, len(images), batch_size):
        f = net.features(images[i:i + batch_size].to(dev))
        feats.append(f.cpu())
        logits.append(net.head(f).cpu())
    return torch.cat(feats), torch.cat(logits)


def rebuild_classifier(out: str | Path = BUNDLED_CLASSIFIER, log=None) -> float:
    """Train the bundled digit classifier again (mnist5k train, 15 epochs, seed 0) into `out`; returns its
    held-out accuracy."""
    from ddpm_guard.generator.data import load_dataset

    tr, held = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "heldout")
    net = train_classifier(tr.images, tr.labels, log=log or (lambda s: None))
    _, logits = predict(net, held.images)
    acc = (logits.argmax(1) == held.labels).float().mean().item()
    save_classifier(net, out, {"heldout_accuracy": acc, "train": {"data": "mnist5k train (4000)", "epochs": 15, "seed": 0}})
    return acc
