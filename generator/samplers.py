"""Samplers: DDPM ancestral, DDIM (any step count, any eta), DPM-Solver++(2M), UniPC(2), classifier-free
guidance and DDIM inversion.

The model only predicts noise; these functions own the arithmetic (the diffusers shape). Every
random draw goes through an explicit torch.Generator, drawn on the CPU and then moved, so a seed
gives the same noise on every device.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.schedule import NoiseSchedule

SAMPLERS = ("ddim", "ddpm", "dpmpp2m", "unipc")


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


def timesteps_for(num_timesteps: int, steps: int) -> list[int]:
    """Descending timestep grid with 'trailing' spacing (Lin et al. 2024): it always starts at T-1,
    so even a 5-step sampler begins from pure noise."""
    if not 1 <= steps <= num_timesteps:
        raise GuardError(f"steps must be between 1 and {num_timesteps}, got {steps}")
    grid = torch.round(torch.arange(num_timesteps, 0, -num_timesteps / steps)).long() - 1
    return sorted({int(t) for t in grid.clamp(min=0)}, reverse=True)


def default_steps(schedule: NoiseSchedule, sampler: str, steps: int | None) -> int:
    """None means the sampler's usual length: 50 for DDIM and DPM-Solver++, the full chain T for DDPM."""
    if steps is not None:
        return steps
    return schedule.num_timesteps if sampler == "ddpm" else 50


def native_bf16(device: torch.device) -> bool:
    """Does this device compute bf16 in hardware? CUDA: the GPU says; CPU: AVX-512 BF16 or AMX. On an
    AVX2-only CPU bf16 is emulated and several times slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                    or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    return False


_warned_emulated = False


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 where the device runs it natively, else fp32. A forced bf16 on a device that
    emulates it prints one warning per process."""
    global _warned_emulated
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and not native_bf16(device) and not _warned_emulated:
        import sys

        _warned_emulated = True
        print(f"ddpm-guard: warning: bf16 is emulated on this {device.type} "
              f"({torch.backends.cpu.get_cpu_capability() if device.type == 'cpu' else 'no native bf16'}) "
              "and runs slower than fp32; use --precision auto or fp32", file=sys.stderr)
    return precision


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise GuardError(f"unknown precision {precision!r}; use 'auto', 'fp32' or 'bf16'")


def guided_eps(model: nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None,
               guidance: float | torch.Tensor) -> torch.Tensor:
    """eps_u + s (eps_c - eps_u) (Ho & Salimans 2022): s = 1 is plain conditional, s = 0 unconditional;
    `guidance` is one scale or one per example (B,). Both passes run as one batch, which halves the
    per-step overhead. A guidance-distilled model (config.guidance_embed) takes s as an input and
    needs one pass."""
    if getattr(model.config, "guidance_embed", False):
        return model(x, t, labels, guidance=guidance).float()
    scalar = not torch.is_tensor(guidance)
    if labels is None or (scalar and guidance == 1.0):
        return model(x, t, labels).float()
    null = torch.full_like(labels, model.config.num_classes)
    if scalar and guidance == 0.0:
        return model(x, t, null).float()
    eps_c, eps_u = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).float().chunk(2)
    return eps_u + (guidance if scalar else guidance.view(-1, *[1] * (x.dim() - 1))) * (eps_c - eps_u)


def ddpm_step(eps: torch.Tensor, t: int, t_prev: int, x: torch.Tensor, schedule: NoiseSchedule,
              generator: torch.Generator | None, variance: str = "beta_tilde", clip_x0: bool = True) -> torch.Tensor:
    """One ancestral step t -> t_prev. With t_prev = t - 1 this is Ho et al.'s step; on a shorter grid it
    is the same step for the respaced chain whose betas are 1 - abar_t / abar_prev (Nichol & Dhariwal
    2021, Sec. 4), so DDPM can run in 100 steps as well as 1000."""
    # scalar coefficients in float64: 1 - abar_t / abar_prev is ~1e-4 and float32 would lose it
    ab_t = float(schedule.alphas_cumprod[t])
    ab_prev = float(schedule.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
    beta = 1 - ab_t / ab_prev  # the respaced beta_t (= beta_t itself on the full grid)
    # 1. x_0 from the predicted noise (Ho et al. Eq. 4 inverted); clipping keeps it in the data range
    x0 = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    # 2. posterior mean mu~_t(x_t, x_0) (Eq. 7)
    mean = (math.sqrt(ab_prev) * beta / (1 - ab_t)) * x0 + (math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab_t)) * x
    if t_prev < 0:
        return mean
    # 3. x_{t-1} = mu + sigma_t z with sigma_t^2 = beta_t or beta~_t (Sec. 3.2)
    if variance == "beta":
        var = beta
    elif variance == "beta_tilde":
        var = beta * (1 - ab_prev) / (1 - ab_t)
    else:
        raise GuardError(f"unknown variance {variance!r}; use 'beta' or 'beta_tilde'")
    return mean + math.sqrt(var) * randn(tuple(x.shape), generator, x.device)


def ddim_step(eps: torch.Tensor, t: int | torch.Tensor, t_prev: int | torch.Tensor, x: torch.Tensor,
              schedule: NoiseSchedule, eta: float = 0.0, generator: torch.Generator | None = None,
              clip_x0: bool = False) -> torch.Tensor:
    """One DDIM step t -> t_prev (t_prev = -1: the clean image). t and t_prev may be (B,) tensors, one
    timestep per example (the distillation's teacher steps)."""
    ab_t = schedule.alpha_bar(t, x)
    ab_prev = schedule.alpha_bar(t_prev, x)  # t_prev = -1 means abar = 1: the clean image
    # 1. predicted x_0 (Song et al. Eq. 12, first term)
    x0 = (x - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = (x - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
    # 2. sigma_t(eta) (Eq. 16); eta = 1 is DDPM-like, eta = 0 deterministic
    sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)).sqrt()
    # 3. direction pointing to x_t, then x_{t-1} = sqrt(abar_prev) x_0 + dir + sigma z (Eq. 12)
    x_prev = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
    if eta > 0:
        x_prev = x_prev + sigma * randn(tuple(x.shape), generator, x.device)
    return x_prev


def _lambda(ab: float) -> float:
    """log-SNR half: lambda_t = log(alpha_t / sigma_t) with alpha_t^2 = abar_t, sigma_t^2 = 1 - abar_t."""
    return 0.5 * (math.log(ab) - math.log1p(-ab))


def dpmpp2m_step(eps: torch.Tensor, t: int, t_prev: int, x: torch.Tensor, schedule: NoiseSchedule,
                 x0_last: torch.Tensor | None, h_last: float | None, clip_x0: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """One DPM-Solver++(2M) step t -> t_prev (Lu et al. 2022, Alg. 2): a second-order multistep solver
    of the diffusion ODE in data prediction. Returns (x_{t_prev}, x0 at t, h) for the next step.

    The first step is first order (it is exactly DDIM), and so is the last one, to abar = 1, where
    lambda is infinite and the solution is the data prediction itself ("lower order final")."""
    ab_t = float(schedule.alphas_cumprod[t])
    # 1. data prediction x0 = (x_t - sigma_t eps) / alpha_t
    x0 = (x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    if t_prev < 0:
        return x0, x0, None
    ab_s = float(schedule.alphas_cumprod[t_prev])
    h = _lambda(ab_s) - _lambda(ab_t)
    # 2. D = x0 (first order) or the multistep extrapolation (1 + 1/2r) x0_t - 1/2r x0_{t_last}, r = h_last / h
    if x0_last is None or h_last is None:
        d = x0
    else:
        r = h_last / h
        d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_last
    # 3. x_{t_prev} = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D  (Lu et al. 2022, Eq. 10)
    x_prev = math.sqrt((1 - ab_s) / (1 - ab_t)) * x - math.sqrt(ab_s) * math.expm1(-h) * d
    return x_prev, x0, h


@dataclass
class UniPCState:
    """What UniPC carries between steps: the previous point (before its correction is known) and the
    data predictions and log-SNRs of the last two steps."""
    x_last: torch.Tensor  # x at the previous timestep, as corrected
    lam_last: float
    m_last: torch.Tensor  # the data prediction at the previous timestep
    lam_older: float | None = None
    m_older: torch.Tensor | None = None
    order: int = 1  # the order of the predictor that produced the current point


def _unipc_coeffs(h: float, r1: float | None) -> tuple[float, float]:
    """UniC's weights (rho_1, rho_t) for B(h) = e^{-h} - 1 ("bh2", data prediction): with one earlier
    point the 2x2 system of Zhao et al. 2023 (Eq. 9, Alg. 2); with none, rho_t = 1/2."""
    if r1 is None:
        return 0.0, 0.5
    hh = -h
    b_h = math.expm1(hh)
    phi1 = math.expm1(hh) / hh - 1  # h phi_2-type terms of the exponential integrator
    phi2 = phi1 / hh - 0.5
    b = (phi1 / b_h, 2 * phi2 / b_h)
    # solve [[1, 1], [r1, 1]] @ (rho_1, rho_t) = b
    det = 1 - r1
    return (b[0] - b[1]) / det, (b[1] - r1 * b[0]) / det


def unipc_step(eps: torch.Tensor, t: int, t_prev: int, x: torch.Tensor, schedule: NoiseSchedule,
               state: UniPCState | None, remaining: int) -> tuple[torch.Tensor, UniPCState | None]:
    """One UniPC step (Zhao et al. 2023, "UniPC", bh2 variant, order 2, data prediction): first the
    corrector UniC refines the current point with the model output just computed (no extra network
    call), then the predictor UniP-2 moves to t_prev. UniP-2 with B(h) = e^{-h} - 1 is exactly
    DPM-Solver++(2M); the corrector is what UniPC adds. The first step is first order; the last one
    (to abar = 1, `remaining` == 0) returns the data prediction."""
    ab_t = float(schedule.alphas_cumprod[t])
    lam_t, a_t, s_t = _lambda(ab_t), math.sqrt(ab_t), math.sqrt(1 - ab_t)
    # 1. data prediction at the current (uncorrected) point
    m_t = (x - s_t * eps) / a_t
    if t_prev < 0:
        return m_t, None
    # 2. UniC: redo the last move from x_last with the new data prediction as an extra node (Alg. 2)
    if state is not None:
        h = lam_t - state.lam_last
        r1 = (state.lam_older - state.lam_last) / h if state.order == 2 and state.lam_older is not None else None
        rho_1, rho_t = _unipc_coeffs(h, r1)
        ab_l = _ab_from_lambda(state.lam_last)
        b_h = math.expm1(-h)
        x = math.sqrt((1 - ab_t) / (1 - ab_l)) * state.x_last - a_t * b_h * state.m_last
        corr = rho_t * (m_t - state.m_last)
        if r1 is not None:
            corr = corr + rho_1 * (state.m_older - state.m_last) / r1
        x = x - a_t * b_h * corr
    # 3. UniP: order 2 once there is an earlier node (the last step, to abar = 1, returned above)
    order = 2 if state is not None and remaining >= 1 else 1
    ab_s = float(schedule.alphas_cumprod[t_prev])
    h = _lambda(ab_s) - lam_t
    b_h = math.expm1(-h)
    x_prev = math.sqrt((1 - ab_s) / (1 - ab_t)) * x - math.sqrt(ab_s) * b_h * m_t
    if order == 2:
        r1 = (state.lam_last - lam_t) / h
        x_prev = x_prev - math.sqrt(ab_s) * b_h * 0.5 * (state.m_last - m_t) / r1
    new = UniPCState(x_last=x, lam_last=lam_t, m_last=m_t, order=order,
                     lam_older=state.lam_last if state is not None else None,
                     m_older=state.m_last if state is not None else None)
    return x_prev, new


def _ab_from_lambda(lam: float) -> float:
    """abar from lambda = log(alpha / sigma): abar = sigmoid(2 lambda)."""
    return 1 / (1 + math.exp(-2 * lam))


def _check_labels(model: nn.Module, labels: torch.Tensor | None) -> None:
    if labels is None:
        return
    k = getattr(model.config, "num_classes", None)
    if not k:
        raise GuardError("this model is unconditional; do not pass a label")
    if labels.numel() and (labels.min() < 0 or labels.max() >= k):
        raise GuardError(f"labels must be between 0 and {k - 1}")


@torch.inference_mode()
def sample(model: nn.Module, schedule: NoiseSchedule, shape: tuple[int, ...], *,
           labels: torch.Tensor | None = None, guidance: float = 1.0, x_T: torch.Tensor | None = None,
           sampler: str = "ddim", steps: int | None = None, eta: float = 0.0, variance: str = "beta_tilde",
           clip_x0: bool = True, generator: torch.Generator | None = None, precision: str = "fp32",
           progress: bool = False, callback: Callable[[int, torch.Tensor], None] | None = None,
           x0_hook: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> torch.Tensor:
    """Draw images in [-1, 1] of `shape` (B, C, H, W).

    `x_T` replaces the initial noise (the watermark's hook). `labels` (B,) selects classes; None is
    unconditional. `steps` defaults to 50 for DDIM and DPM-Solver++(2M) and to all T for DDPM
    (ancestral; fewer steps run the respaced chain). `eta` applies to DDIM only. DDIM and
    DPM-Solver++ are deterministic and solve the same ODE, so `ddim_invert` inverts both (on the
    same grid, DDIM exactly; DPM-Solver++ up to its second-order correction).

    `x0_hook(x0, t)` (DDIM only) edits the clean estimate at each step, which the step then continues
    from: the guided watermark's hook. It runs outside inference mode's restrictions when it asks.
    """
    if sampler not in SAMPLERS:
        raise GuardError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
    if eta < 0:
        raise GuardError(f"eta must be >= 0, got {eta}")
    if x0_hook is not None and sampler != "ddim":
        raise GuardError("an x0 hook (the guided watermark) needs the DDIM sampler")
    _check_labels(model, labels)
    device = next(model.parameters()).device
    model.eval()
    if x_T is None:
        x = randn(shape, generator, device)
    else:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
        x = x_T.to(device, torch.float32)
    labels = labels.to(device) if labels is not None else None
    grid = timesteps_for(schedule.num_timesteps, default_steps(schedule, sampler, steps))
    x0_last, h_last = None, None  # DPM-Solver++'s memory of the previous step
    uni = None  # UniPC's
    with autocast_for(device, precision):
        for i, t in enumerate(tqdm(grid, disable=not progress, desc=f"{sampler} sampling", leave=False)):
            tt = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
            eps = guided_eps(model, x, tt, labels, guidance)
            t_prev = grid[i + 1] if i + 1 < len(grid) else -1
            if x0_hook is not None:  # 1. x0 (clipped), edited by the hook; 2. the eps that agrees with it
                ab = schedule.alpha_bar(tt, x)
                x0 = x0_hook(((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1), t)
                eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
            if sampler == "ddpm":
                x = ddpm_step(eps, t, t_prev, x, schedule, generator, variance, clip_x0)
            elif sampler == "dpmpp2m":
                x, x0_last, h_last = dpmpp2m_step(eps, t, t_prev, x, schedule, x0_last, h_last)
            elif sampler == "unipc":
                x, uni = unipc_step(eps, t, t_prev, x, schedule, uni, len(grid) - i - 1)
            else:
                x = ddim_step(eps, t, t_prev, x, schedule, eta, generator, clip_x0)
            if callback is not None:
                callback(t, x)
    return x.clamp(-1, 1)


@torch.inference_mode()
def ddim_invert(model: nn.Module, schedule: NoiseSchedule, x0: torch.Tensor, steps: int = 50, *,
                labels: torch.Tensor | None = None, guidance: float = 1.0, precision: str = "fp32",
                progress: bool = False) -> torch.Tensor:
    """Deterministic DDIM inversion image -> x_T over the same timestep grid as `sample`.

    Each sampling step t -> t_prev uses eps(x_t, t); the inverse step t_prev -> t reuses the
    same timestep's noise prediction, evaluated at the point we have (x_{t_prev}), with the two
    alpha_bars swapped. Unconditional (null class) unless `labels` is given.
    """
    _check_labels(model, labels)
    device = next(model.parameters()).device
    model.eval()
    x = x0.to(device, torch.float32)
    labels = labels.to(device) if labels is not None else None
    grid = timesteps_for(schedule.num_timesteps, steps)
    pairs = [(t, grid[i + 1] if i + 1 < len(grid) else -1) for i, t in enumerate(grid)]
    with autocast_for(device, precision):
        for t, t_prev in tqdm(list(reversed(pairs)), disable=not progress, desc="ddim inversion", leave=False):
            tt = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
            eps = guided_eps(model, x, tt, labels, guidance)
            ab_t, ab_prev = schedule.alpha_bar(t, x), schedule.alpha_bar(t_prev, x)
            x0_pred = (x - (1 - ab_prev).sqrt() * eps) / ab_prev.sqrt()
            x = ab_t.sqrt() * x0_pred + (1 - ab_t).sqrt() * eps
    return x


@torch.inference_mode()
def denoise_from(model: nn.Module, schedule: NoiseSchedule, x_t: torch.Tensor, t_start: int, steps: int = 10, *,
                 labels: torch.Tensor | None = None, guidance: float = 1.0, precision: str = "fp32") -> torch.Tensor:
    """Deterministic DDIM from x_t at timestep t_start down to a clean image (SDEdit, Meng et al. 2022).

    With x_t = add_noise(real, noise, t_start) this gives an image that keeps the real one's layout but
    carries the generator's traces: the 'aligned' fakes a detector trains on."""
    if not 0 <= t_start < schedule.num_timesteps:
        raise GuardError(f"t_start must be between 0 and {schedule.num_timesteps - 1}, got {t_start}")
    _check_labels(model, labels)
    device = next(model.parameters()).device
    model.eval()
    x = x_t.to(device, torch.float32)
    labels = labels.to(device) if labels is not None else None
    grid = timesteps_for(t_start + 1, min(steps, t_start + 1))  # the same trailing grid over [0, t_start]
    with autocast_for(device, precision):
        for i, t in enumerate(grid):
            tt = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
            eps = guided_eps(model, x, tt, labels, guidance)
            x = ddim_step(eps, t, grid[i + 1] if i + 1 < len(grid) else -1, x, schedule, clip_x0=True)
    return x.clamp(-1, 1)
