"""Noise schedules and the closed-form arithmetic of the forward process.

Pure functions of the betas; no nn.Module owns them, so one schedule serves training, sampling
and inversion (the improved-diffusion shape).
"""

from __future__ import annotations

import math

import torch

from ddpm_guard.generator.config import DiffusionConfig


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. (2020): betas linear in t. Endpoints are given for T=1000 and kept as such."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021), Eq. 17: alpha_bar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar(i + 1) / alpha_bar(i), max_beta) for i in range(num_timesteps)]
    return torch.tensor(betas, dtype=torch.float64)


def make_betas(cfg: DiffusionConfig) -> torch.Tensor:
    if cfg.beta_schedule == "linear":
        return linear_betas(cfg.num_timesteps, cfg.beta_start, cfg.beta_end)
    if cfg.beta_schedule == "cosine":
        return cosine_betas(cfg.num_timesteps)
    raise ValueError(f"unknown beta_schedule {cfg.beta_schedule!r}; use 'linear' or 'cosine'")


def _gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] reshaped to broadcast over an image batch like `like`."""
    out = values[t.reshape(-1).long().cpu()].to(like.device, like.dtype)  # move B values, not the table
    return out.reshape(-1, *([1] * (like.dim() - 1)))


class NoiseSchedule:
    """alpha, alpha_bar and the posterior q(x_{t-1} | x_t, x_0), all precomputed in float64."""

    def __init__(self, cfg: DiffusionConfig | None = None, betas: torch.Tensor | None = None):
        self.config = cfg or DiffusionConfig()
        betas = make_betas(self.config) if betas is None else betas.to(torch.float64)
        self.betas = betas
        self.num_timesteps = len(betas)
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self._alpha_bar_from_minus_one = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        # beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)  (Ho et al. Eq. 7)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # mu~_t = c0 x_0 + ct x_t  (Ho et al. Eq. 7)
        self.posterior_mean_coef_x0 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef_xt = (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)  (Ho et al. Eq. 4)."""
        return _gather(self.sqrt_alphas_cumprod, t, x0) * x0 + _gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Invert Eq. 4 for x_0 given the predicted noise."""
        return (x_t - _gather(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / _gather(self.sqrt_alphas_cumprod, t, x_t)

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _gather(self.posterior_mean_coef_x0, t, x_t) * x0 + _gather(self.posterior_mean_coef_xt, t, x_t) * x_t

    def reverse_variance(self, t: torch.Tensor, like: torch.Tensor, kind: str = "beta_tilde") -> torch.Tensor:
        """sigma_t^2 of p(x_{t-1} | x_t): Ho et al. found beta_t and beta~_t give similar samples."""
        if kind == "beta":
            return _gather(self.betas, t, like)
        if kind == "beta_tilde":
            return _gather(self.posterior_variance, t, like)
        raise ValueError(f"unknown variance {kind!r}; use 'beta' or 'beta_tilde'")

    def alpha_bar(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """abar_t with abar_{-1} = 1 (the DDIM convention for the last step)."""
        return _gather(self._alpha_bar_from_minus_one, torch.as_tensor(t).reshape(-1) + 1, like)
