"""Generator families other than the bundled DDPM, trained by the project as fake sources for the detector.

A detector trained on one generator learns that generator's habits; the forger's generator is another one.
So the detector trains on several families and is validated leave-one-family-out. Two families here are
not diffusion models at all, so their traces differ from a DDPM's:

- a VAE (Kingma & Welling 2014): conv encoder/decoder, 16-d latent, Bernoulli likelihood on pixel
  intensities; its samples are smooth and slightly blurred;
- a GAN (DCGAN, Radford et al. 2016; non-saturating loss): transposed-conv generator, whose up-sampling
  leaves the periodic traces NPR looks for.

Both train in a few minutes on one CPU core and save as safetensors + config.json:

    ddpm-guard weights family --kind vae --out detector/weights/families/vae --seed 0
    ddpm-guard weights family --kind gan --out detector/weights/families/gan --seed 0

Second DDPMs (another architecture and schedule) are ordinary `ddpm-guard train` runs; `load_family`
reads either kind, so `detector train --fake-generator DIR` takes any of them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_guard.generator.checkpoint import default_device, load_tensors, read_config, save_json, save_tensors
from ddpm_guard.generator.data import load_dataset
from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.image_io import quantize

FAMILY_FORMAT = "ddpm-guard/family-v1"
KINDS = ("vae", "gan")


@dataclass(frozen=True)
class FamilyConfig:
    kind: str = "vae"  # vae | gan
    latent: int = 16  # VAE latent size (16 is enough for digits); the GAN's noise size is 4x this
    width: int = 32  # channels of the first conv; the second stage doubles it
    image_size: int = 28  # 28 = 7 * 2 * 2: two stride-2 stages above a 7x7 map


def _decoder(cfg: FamilyConfig, z_dim: int, out_act: nn.Module) -> nn.Sequential:
    w = cfg.width
    return nn.Sequential(
        nn.Linear(z_dim, 2 * w * 7 * 7), nn.Unflatten(1, (2 * w, 7, 7)), nn.BatchNorm2d(2 * w), nn.ReLU(),
        nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.BatchNorm2d(w), nn.ReLU(),  # 7 -> 14
        nn.ConvTranspose2d(w, 1, 4, 2, 1), out_act)  # 14 -> 28


def _encoder(cfg: FamilyConfig, out_dim: int, norm: bool) -> nn.Sequential:
    w = cfg.width
    return nn.Sequential(
        nn.Conv2d(1, w, 4, 2, 1), nn.LeakyReLU(0.2),  # 28 -> 14
        nn.Conv2d(w, 2 * w, 4, 2, 1), nn.BatchNorm2d(2 * w) if norm else nn.Identity(), nn.LeakyReLU(0.2),  # -> 7
        nn.Flatten(), nn.Linear(2 * w * 7 * 7, out_dim))


class VAE(nn.Module):
    def __init__(self, cfg: FamilyConfig):
        super().__init__()
        self.config = cfg
        self.enc = _encoder(cfg, 2 * cfg.latent, norm=True)
        self.dec = _decoder(cfg, cfg.latent, nn.Identity())  # logits of the Bernoulli means

    def loss(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Negative ELBO per image: Bernoulli log-likelihood of intensities in [0, 1] + KL to N(0, I)."""
        mu, logvar = self.enc(x).chunk(2, 1)
        z = mu + torch.randn(mu.shape, generator=gen).to(mu) * (0.5 * logvar).exp()
        target = (x + 1) / 2
        rec = F.binary_cross_entropy_with_logits(self.dec(z), target, reduction="none").sum((1, 2, 3))
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return (rec + kl).mean()

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.config.latent, generator=gen)
        return torch.sigmoid(self.dec(z.to(next(self.parameters()).device))) * 2 - 1


class GAN(nn.Module):
    def __init__(self, cfg: FamilyConfig):
        super().__init__()
        self.config = cfg
        self.z_dim = 4 * cfg.latent
        self.gen = _decoder(cfg, self.z_dim, nn.Tanh())
        self.disc = _encoder(cfg, 1, norm=False)

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.z_dim, generator=gen)
        return self.gen(z.to(next(self.parameters()).device))


def build(cfg: FamilyConfig) -> VAE | GAN:
    if cfg.kind not in KINDS:
        raise ValueError(f"unknown family kind {cfg.kind!r}; use one of {', '.join(KINDS)}")
    return VAE(cfg) if cfg.kind == "vae" else GAN(cfg)


def train_family(cfg: FamilyConfig, *, steps: int, seed: int = 0, batch_size: int = 64, lr: float = 2e-4,
                 log=None) -> VAE | GAN:
    """Train on the 4,000 mnist5k training digits (the same digits the detector's reals come from)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = load_dataset("mnist5k", "train").images
    net = build(cfg)
    net.train()
    t0 = time.time()
    if cfg.kind == "vae":
        opt = torch.optim.Adam(net.parameters(), lr=5 * lr)
        for step in range(steps):
            loss = net.loss(x[torch.randint(0, len(x), (batch_size,), generator=gen)], gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if log and (step + 1) % 200 == 0:
                log(f"vae step {step + 1}/{steps} nelbo {loss.item():.1f} ({time.time() - t0:.0f} s)")
    else:  # DCGAN, non-saturating loss, Adam(0.5, 0.999) as in Radford et al.
        opt_g = torch.optim.Adam(net.gen.parameters(), lr=lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(net.disc.parameters(), lr=lr, betas=(0.5, 0.999))
        for step in range(steps):
            real = x[torch.randint(0, len(x), (batch_size,), generator=gen)]
            fake = net.gen(torch.randn(batch_size, net.z_dim, generator=gen))
            d_loss = F.softplus(-net.disc(real)).mean() + F.softplus(net.disc(fake.detach())).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            g_loss = F.softplus(-net.disc(fake)).mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            if log and (step + 1) % 200 == 0:
                log(f"gan step {step + 1}/{steps} d {d_loss.item():.3f} g {g_loss.item():.3f} ({time.time() - t0:.0f} s)")
    return net.eval()


def save_family(net: VAE | GAN, folder: str | Path, meta: dict | None = None) -> None:
    folder = Path(folder)
    state = net.state_dict() if isinstance(net, VAE) else {k: v for k, v in net.state_dict().items() if k.startswith("gen.")}
    save_tensors(state, folder / "model.safetensors")  # the GAN ships its generator only
    save_json({"format": FAMILY_FORMAT, "family": asdict(net.config), **(meta or {})}, folder / "config.json")


def load_family(folder: str | Path, device: torch.device | str | None = None) -> VAE | GAN:
    cfg = read_config(folder, FAMILY_FORMAT)
    try:
        net = build(FamilyConfig(**cfg["family"]))
    except (KeyError, TypeError, ValueError) as e:
        raise GuardError(f"{folder}/config.json: not a valid generator-family config ({e})") from None
    tensors, _ = load_tensors(Path(folder) / "model.safetensors")
    net.load_state_dict(tensors, strict=isinstance(net, VAE))
    return net.to(device or default_device()).eval()


def sample_family(net: VAE | GAN, n: int, seed: int, batch_size: int = 500) -> torch.Tensor:
    """n samples in [-1, 1], 8-bit quantised like every other image the detector sees."""
    gen = torch.Generator().manual_seed(seed)
    return quantize(torch.cat([net.sample(min(batch_size, n - i), gen).cpu() for i in range(0, n, batch_size)]))
