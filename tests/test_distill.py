"""The distilled student: v-parameterisation, the guidance input, the distillation target, a round that
learns, and the saved student (safetensors, deterministic under a seed, its guidance range enforced)."""

from __future__ import annotations

import pytest
import torch

from ddpm_guard.generator.checkpoint import WEIGHTS_NAME, load_model
from ddpm_guard.generator.distill import (DistillConfig, consistency_loss, distill, distill_loss, distill_target, make_student,
                               pseudo_huber)
from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.pipeline import generate
from ddpm_guard.generator.samplers import ddim_step, guided_eps, timesteps_for
from ddpm_guard.generator.unet import UNet, VPrediction
from tests.conftest import tiny_unet


@pytest.fixture(scope="module")
def teacher(trained_tiny):
    model, schedule, _ = load_model(trained_tiny[0], device="cpu")
    return model, schedule


def test_vprediction_is_a_noise_predictor_whose_x0_is_alpha_x_minus_sigma_v(schedule):
    torch.manual_seed(0)
    unet = UNet(tiny_unet(prediction="v"))
    for p in unet.parameters():  # a non-trivial v
        p.data.normal_(0, 0.05)
    model = VPrediction(unet, schedule.sqrt_alphas_cumprod, schedule.sqrt_one_minus_alphas_cumprod)
    x = torch.randn(4, 1, 8, 8)
    for t in (999, 500, 3):
        tt = torch.full((4,), t)
        v = unet(x, tt)
        a, s = float(schedule.sqrt_alphas_cumprod[t]), float(schedule.sqrt_one_minus_alphas_cumprod[t])
        eps = model(x, tt)
        torch.testing.assert_close(eps, s * x + a * v, atol=1e-5, rtol=1e-5)
        x0 = (x - s * eps) / a  # what every sampler computes from eps
        torch.testing.assert_close(x0, a * x - s * v, atol=2e-3 if t == 999 else 1e-4, rtol=1e-4)


def test_guidance_input_starts_neutral_and_is_refused_by_a_plain_model():
    torch.manual_seed(0)
    plain, emb = UNet(tiny_unet()), UNet(tiny_unet(guidance_embed=True))
    emb.load_state_dict(plain.state_dict(), strict=False)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10, 900]), torch.tensor([3, 7])
    for p in plain.parameters():
        p.data.normal_(0, 0.05)
    emb.load_state_dict(plain.state_dict(), strict=False)
    torch.testing.assert_close(emb(x, t, y, guidance=2.5), plain(x, t, y))  # the guidance MLP is zero at init
    torch.nn.init.normal_(emb.guidance_mlp[2].weight, 0, 0.1)
    assert not torch.allclose(emb(x, t, y, guidance=1.0), emb(x, t, y, guidance=3.0))
    with pytest.raises(ValueError, match="no guidance input"):
        plain(x, t, y, guidance=2.0)


def test_one_teacher_step_target_is_the_teachers_clipped_x0(teacher):
    """With as many student as teacher steps, Algorithm 2's target reduces to the teacher's own x0."""
    model, schedule = teacher
    cfg = DistillConfig(steps=4, teacher_steps=4, precision="fp32")
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(6, 1, 8, 8, generator=gen)
    i = torch.tensor([0, 1, 2, 3, 1, 2])
    labels, w = torch.tensor([0, 1, 2, 10, 4, 5]), torch.tensor([1.0, 1.5, 2.0, 2.0, 3.0, 1.0])
    target, s = distill_target(model, schedule, z, i, labels, w, cfg)
    grid = timesteps_for(1000, 4)
    for b in range(6):
        t = grid[int(i[b])]
        eps = guided_eps(model, z[b:b + 1], torch.tensor([t]), labels[b:b + 1], w[b:b + 1])
        ab = float(schedule.alphas_cumprod[t])
        x0 = ((z[b:b + 1] - (1 - ab) ** 0.5 * eps) / ab ** 0.5).clamp(-1, 1)
        torch.testing.assert_close(target[b:b + 1], x0, atol=2e-4, rtol=1e-4)
    assert s.tolist() == [grid[1], grid[2], grid[3], -1, grid[2], grid[3]]


def test_two_teacher_steps_target_lands_where_the_teacher_lands(teacher):
    """One DDIM step t -> s that predicts the target reproduces the teacher's two steps exactly."""
    model, schedule = teacher
    cfg = DistillConfig(steps=2, teacher_steps=4, precision="fp32")
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(3, 1, 8, 8, generator=gen)
    labels, w = torch.tensor([2, 5, 10]), torch.tensor([1.5, 2.0, 1.0])
    grid = timesteps_for(1000, 4) + [-1]
    target, s = distill_target(model, schedule, z, torch.tensor([0, 0, 0]), labels, w, cfg)
    x = z
    for j in range(2):  # the teacher's own two steps through the sampler's code path
        eps = guided_eps(model, x, torch.full((3,), grid[j]), labels, w)
        x = ddim_step(eps, grid[j], grid[j + 1], x, schedule, clip_x0=True)
    ab_t, ab_s = float(schedule.alphas_cumprod[grid[0]]), float(schedule.alphas_cumprod[grid[2]])
    eps_student = (z - ab_t ** 0.5 * target) / (1 - ab_t) ** 0.5
    landed = ab_s ** 0.5 * target + (1 - ab_s) ** 0.5 * eps_student
    torch.testing.assert_close(landed, x, atol=1e-4, rtol=1e-4)
    assert s.tolist() == [grid[2]] * 3


def test_a_round_of_distillation_lowers_the_loss(teacher, digits):
    model, schedule = teacher
    student = make_student(model, schedule).train()
    cfg = DistillConfig(steps=2, teacher_steps=4, precision="fp32", batch_size=32)
    x, y = digits.images[:32], digits.labels[:32]

    def held_loss() -> float:
        with torch.no_grad():
            return distill_loss(student, model, schedule, x, y, cfg, torch.Generator().manual_seed(123)).item()

    before = held_loss()
    opt = torch.optim.Adam(student.unet.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(0, len(digits), (32,), generator=gen)
        loss = distill_loss(student, model, schedule, digits.images[idx], digits.labels[idx], cfg, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held_loss() < 0.5 * before


def test_consistency_loss_is_zero_when_student_and_target_agree_with_the_ode():
    """The consistency target at the last pair is the teacher's own clean step (the boundary f(x, 0) = x),
    and the distance is the pseudo-Huber one: 0 at 0, L2-like near it, linear far out."""
    d = torch.zeros(3, 1, 8, 8)
    assert torch.allclose(pseudo_huber(d), torch.zeros(3))
    d[1, 0, 0, 0], d[2] = 1e-4, 10.0
    h = pseudo_huber(d)
    c = 0.00054 * 8
    assert h[1] == pytest.approx(1e-8 / (2 * c), rel=1e-2) and h[2] == pytest.approx(80 - c, rel=1e-3)


def test_consistency_distillation_lowers_its_loss(teacher, digits):
    model, schedule = teacher
    student = make_student(model, schedule).train()
    target = make_student(model, schedule).requires_grad_(False)
    cfg = DistillConfig(method="consistency", steps=2, teacher_steps=8, precision="fp32", batch_size=32)
    x, y = digits.images[:64], digits.labels[:64]

    def held_loss() -> float:
        with torch.no_grad():
            return consistency_loss(student, target, model, schedule, x, y, cfg, torch.Generator().manual_seed(7)).item()

    before = held_loss()
    opt = torch.optim.Adam(student.unet.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(0, len(digits), (32,), generator=gen)
        loss = consistency_loss(student, target, model, schedule, digits.images[idx], digits.labels[idx], cfg, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p_t, p in zip(target.unet.parameters(), student.unet.parameters()):
                p_t.lerp_(p, 1 - cfg.target_decay)
    assert held_loss() < 0.7 * before


def test_saved_student_loads_from_safetensors_and_samples_deterministically(trained_tiny, tmp_path):
    out = distill(trained_tiny[0], tmp_path / "student",
                  DistillConfig(steps=2, teacher_steps=4, dataset="digits", precision="fp32", batch_size=16,
                                max_steps=4, checkpoint_every=2, eval_n=0, guidance_min=1.0, guidance_max=2.0),
                  log=lambda s: None)
    raw = (out / WEIGHTS_NAME).read_bytes()  # safetensors: an 8-byte header length, then a JSON header
    assert raw[8:9] == b"{" and int.from_bytes(raw[:8], "little") < len(raw)
    student, schedule, cfg = load_model(out, device="cpu")
    assert isinstance(student, VPrediction) and student.config.guidance_embed
    assert cfg["distill"]["steps"] == 2 and [r["step"] for r in cfg["distill"]["history"]] == [2, 4]
    a, la = generate(student, schedule, 6, steps=2, seed=7, guidance=1.5)
    b, lb = generate(student, schedule, 6, steps=2, seed=7, guidance=1.5)
    assert torch.equal(a, b) and torch.equal(la, lb)
    c, _ = generate(student, schedule, 6, steps=2, seed=7, guidance=1.5, batch_size=4)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=0)  # the noise is drawn up front: batching changes nothing
    d, _ = generate(student, schedule, 6, steps=2, seed=8, guidance=1.5)
    assert (a - d).abs().mean() > 0.1
    with pytest.raises(GuardError, match="guidance scales 1 to 2"):
        generate(student, schedule, 2, steps=2, guidance=3.0)
