import math

import pytest
import torch

from ddpm_guard.generator.config import DiffusionConfig
from ddpm_guard.generator.schedule import NoiseSchedule, cosine_betas, linear_betas


def test_linear_betas_match_ho_et_al():
    b = linear_betas(1000)
    assert b[0].item() == pytest.approx(1e-4)
    assert b[-1].item() == pytest.approx(0.02)
    assert torch.allclose(b[1:] - b[:-1], torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))


def test_alphas_cumprod_is_the_product():
    s = NoiseSchedule(DiffusionConfig())
    t = 417
    assert s.alphas_cumprod[t].item() == pytest.approx(math.prod(1 - s.betas[i].item() for i in range(t + 1)), rel=1e-10)
    # Ho et al.'s schedule ends almost at pure noise: abar_T ~ 4e-5
    assert 1e-5 < s.alphas_cumprod[-1].item() < 1e-4


def test_cosine_alpha_bar_closed_form():
    T, sh = 1000, 0.008
    s = NoiseSchedule(DiffusionConfig(beta_schedule="cosine"))
    f = lambda t: math.cos((t / T + sh) / (1 + sh) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):
        assert s.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-6)
    assert cosine_betas(T).max().item() <= 0.999


def test_posterior_variance_closed_form():
    s = NoiseSchedule(DiffusionConfig())
    t = 250
    expected = s.betas[t] * (1 - s.alphas_cumprod[t - 1]) / (1 - s.alphas_cumprod[t])
    assert s.posterior_variance[t].item() == pytest.approx(expected.item())
    assert s.posterior_variance[0].item() == 0.0  # beta~_1 = 0: the last step adds no noise
    x = torch.zeros(1, 1, 2, 2)
    tt = torch.tensor([t])
    assert s.reverse_variance(tt, x, "beta").flatten()[0].item() == pytest.approx(s.betas[t].item(), rel=1e-6)
    with pytest.raises(ValueError):
        s.reverse_variance(tt, x, "learned")


def test_unknown_schedule_raises():
    with pytest.raises(ValueError):
        NoiseSchedule(DiffusionConfig(beta_schedule="quadratic"))


@pytest.mark.parametrize("t", [0, 100, 999])
def test_q_sample_statistics(t):
    s = NoiseSchedule(DiffusionConfig())
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1, 1, 1), 0.7)
    noise = torch.randn(x0.shape, generator=g)
    xt = s.add_noise(x0, noise, torch.full((20000,), t))
    ab = s.alphas_cumprod[t].item()
    assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=0.03)
    assert xt.var().item() == pytest.approx(1 - ab, rel=0.05, abs=2e-5)


def test_predict_x0_inverts_add_noise():
    s = NoiseSchedule(DiffusionConfig())
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand((4, 1, 8, 8), generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    assert torch.allclose(s.predict_x0(s.add_noise(x0, eps, t), eps, t), x0, atol=1e-3)
