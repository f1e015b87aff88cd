import pytest
import torch

from ddpm_guard.generator.checkpoint import load_model
from ddpm_guard.generator.config import DiffusionConfig
from ddpm_guard.generator.schedule import NoiseSchedule
from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.samplers import ddim_invert, ddim_step, guided_eps, sample, timesteps_for
from ddpm_guard.generator.unet import UNet

from conftest import tiny_unet


def _model(seed=0):
    torch.manual_seed(seed)
    m = UNet(tiny_unet())
    torch.nn.init.normal_(m.conv_out.weight, std=0.05)
    return m.eval()


def test_timestep_grid_trailing():
    assert timesteps_for(1000, 1000) == list(range(999, -1, -1))
    g = timesteps_for(1000, 50)
    assert g[0] == 999 and len(g) == 50 and g == sorted(g, reverse=True)
    assert timesteps_for(1000, 1) == [999]
    with pytest.raises(GuardError):
        timesteps_for(1000, 0)
    with pytest.raises(GuardError):
        timesteps_for(1000, 1001)


@pytest.mark.parametrize("sampler,kw", [("ddim", dict(steps=10, eta=0.0)), ("ddim", dict(steps=10, eta=1.0)),
                                        ("ddpm", dict(variance="beta"))])
def test_seeded_sample_is_deterministic(sampler, kw):
    schedule = NoiseSchedule(DiffusionConfig(num_timesteps=50))  # short chain: the test is about seeding
    m = _model()
    run = lambda seed: sample(m, schedule, (3, 1, 8, 8), labels=torch.tensor([0, 1, 2]), guidance=2.0,  # noqa: E731
                              sampler=sampler, generator=torch.Generator().manual_seed(seed), **kw)
    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_ddpm_variances_differ():
    schedule = NoiseSchedule(DiffusionConfig(num_timesteps=50))
    m = _model()
    run = lambda v: sample(m, schedule, (2, 1, 8, 8), sampler="ddpm", variance=v,  # noqa: E731
                           generator=torch.Generator().manual_seed(0))
    assert not torch.equal(run("beta"), run("beta_tilde"))


def test_x_T_hook_is_used(schedule):
    m = _model()
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    a = sample(m, schedule, (2, 1, 8, 8), x_T=x_T, steps=5, generator=torch.Generator().manual_seed(0))
    b = sample(m, schedule, (2, 1, 8, 8), x_T=x_T, steps=5, generator=torch.Generator().manual_seed(99))
    assert torch.equal(a, b)  # eta = 0: the image is a function of x_T alone


def test_batched_guidance_equals_two_passes():
    m = _model()
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([400, 400]), torch.tensor([3, 4])
    with torch.no_grad():
        eps_c, eps_u = m(x, t, y), m(x, t, None)
        got = guided_eps(m, x, t, y, 3.0)
    assert torch.allclose(got, eps_u + 3.0 * (eps_c - eps_u), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(guided_eps(m, x, t, y, 1.0), eps_c, atol=1e-6)


def test_ddim_step_with_true_noise_recovers_x0(schedule):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 1, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    xt = schedule.add_noise(x0, eps, torch.tensor([600, 600]))
    assert torch.allclose(ddim_step(eps, 600, -1, xt, schedule), x0, atol=1e-4)


def test_bad_sampler_arguments(schedule):
    m = _model()
    with pytest.raises(GuardError):
        sample(m, schedule, (1, 1, 8, 8), sampler="euler")
    with pytest.raises(GuardError):
        sample(m, schedule, (1, 1, 8, 8), labels=torch.tensor([10]))
    with pytest.raises(GuardError):
        sample(m, schedule, (1, 1, 8, 8), eta=-1.0)


def test_ddim_inversion_round_trip(trained_tiny, digits):
    out, _ = trained_tiny
    model, schedule, _ = load_model(out, device="cpu")
    x0 = digits.images[:16]
    x_T = ddim_invert(model, schedule, x0, steps=50)
    # the inverted latent looks like Gaussian noise ...
    assert abs(x_T.std().item() - 1) < 0.35
    # ... and regenerating from it over the same grid gives the image back
    rec = sample(model, schedule, tuple(x0.shape), x_T=x_T, steps=50, clip_x0=False)
    err = (rec - x0).pow(2).mean().item()
    assert err < 0.05 * x0.var().item(), err


def test_ddpm_step_on_the_full_grid_is_ho_et_al(schedule):
    """With t_prev = t - 1 the respaced step reduces to the precomputed posterior (Eq. 7) and sigma^2."""
    from ddpm_guard.generator.samplers import ddpm_step

    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for t in (999, 500, 1):
        tt = torch.full((3,), t)
        x0 = schedule.predict_x0(x, eps, tt).clamp(-1, 1)
        for v in ("beta", "beta_tilde"):
            got = ddpm_step(eps, t, t - 1, x, schedule, torch.Generator().manual_seed(5), v)
            z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
            want = schedule.posterior_mean(x0, x, tt) + schedule.reverse_variance(tt, x, v).sqrt() * z
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.allclose(ddpm_step(eps, 0, -1, x, schedule, None), schedule.predict_x0(x, eps, torch.zeros(3, dtype=torch.long)).clamp(-1, 1), atol=1e-5)


def test_respaced_ddpm_calls_the_model_steps_times(schedule):
    m = _model()
    calls = []
    m.register_forward_hook(lambda *a: calls.append(1))
    sample(m, schedule, (2, 1, 8, 8), sampler="ddpm", steps=7, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 7


def test_denoise_from_shape_bounds_and_range_check(schedule):
    from ddpm_guard.generator.samplers import denoise_from

    m = _model()
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    x_t = schedule.add_noise(x0, torch.randn_like(x0), torch.full((2,), 20))
    out = denoise_from(m, schedule, x_t, 20, steps=4)
    assert out.shape == x0.shape and out.min() >= -1 and out.max() <= 1
    with pytest.raises(GuardError):
        denoise_from(m, schedule, x_t, 1000)


@pytest.fixture(scope="module")
def ode(trained_tiny):
    """The tiny model from one x_T: `run(sampler, steps)` (memoised, so the solver tests share their
    runs), DDIM-500's solution as the reference, the schedule, and a random (x, eps) for one step."""
    import functools

    m, sch, _ = load_model(trained_tiny[0], device="cpu")
    x_T = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(8) % 10

    @functools.lru_cache(maxsize=None)
    def run(smp: str, n: int) -> torch.Tensor:
        return sample(m, sch, (8, 1, 8, 8), x_T=x_T, labels=labels, sampler=smp, steps=n, clip_x0=False, guidance=1.0)

    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    return run, run("ddim", 500), sch, (x, eps)


def test_dpmpp2m_first_step_is_ddim_and_converges_to_the_same_ode_solution(ode):
    """DPM-Solver++(2M) and DDIM solve the same probability-flow ODE: at many steps they agree closely;
    at few steps the second-order solver is nearer to the many-step solution than DDIM is."""
    from ddpm_guard.generator.samplers import dpmpp2m_step

    run, ref, sch, (x, eps) = ode
    assert (run("dpmpp2m", 200) - ref).abs().mean() < 0.01
    err_ddim, err_dpm = (run("ddim", 10) - ref).abs().mean(), (run("dpmpp2m", 10) - ref).abs().mean()
    assert err_dpm < err_ddim
    # the first step has no history: it is exactly a DDIM step
    first, _, _ = dpmpp2m_step(eps, 999, 899, x, sch, None, None)
    assert torch.allclose(first, ddim_step(eps, 999, 899, x, sch), atol=1e-5)


def test_unipc_converges_to_the_ode_solution_and_beats_ddim_at_few_steps(ode):
    """UniPC (bh2, order 2) solves the same ODE: at many steps it lands on DDIM's many-step solution;
    at 10 steps it is nearer to it than DDIM-10. Its predictor alone is DPM-Solver++(2M), so with the
    corrector it must differ from DPM-Solver++ (the corrector is doing something)."""
    from ddpm_guard.generator.samplers import unipc_step

    run, ref, sch, (x, eps) = ode
    assert (run("unipc", 200) - ref).abs().mean() < 0.01
    uni10 = run("unipc", 10)
    assert (uni10 - ref).abs().mean() < (run("ddim", 10) - ref).abs().mean()
    assert (uni10 - run("dpmpp2m", 10)).abs().max() > 1e-4
    # the first step has no history and no correction: exactly DDIM
    first, state = unipc_step(eps, 999, 899, x, sch, None, 5)
    assert torch.allclose(first, ddim_step(eps, 999, 899, x, sch), atol=1e-5) and state.order == 1


def test_ddim_inversion_round_trips_a_dpmpp2m_sample(trained_tiny, digits):
    """Invert a real image over the DDIM grid, regenerate it with DPM-Solver++(2M) on the same grid:
    both integrate one ODE, so the image comes back (as in the DDIM round trip above)."""
    from ddpm_guard.generator.checkpoint import load_model

    m, sch, _ = load_model(trained_tiny[0], device="cpu")
    x0 = digits.images[:16]
    x_T = ddim_invert(m, sch, x0, steps=50)
    rec = sample(m, sch, tuple(x0.shape), x_T=x_T, sampler="dpmpp2m", steps=50, clip_x0=False)
    err = (rec - x0).pow(2).mean().item()
    assert err < 0.05 * x0.var().item(), err


def test_precision_auto_picks_bf16_only_where_native(monkeypatch, capsys):
    import ddpm_guard.generator.samplers as smp

    cpu = torch.device("cpu")
    monkeypatch.setattr(smp, "_warned_emulated", False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert smp.resolve_precision("auto", cpu) == "fp32"
    assert smp.resolve_precision("bf16", cpu) == "bf16" and smp.resolve_precision("bf16", cpu) == "bf16"
    assert capsys.readouterr().err.count("emulated") == 1  # one warning per process
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert smp.resolve_precision("auto", cpu) == "bf16"
    with pytest.raises(GuardError, match="unknown precision"):
        smp.autocast_for(cpu, "fp8")
