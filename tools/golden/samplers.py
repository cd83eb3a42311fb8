#!/usr/bin/env python3
"""Golden sampling trajectories on the tiny PixArt transformer (tests/fixtures/pixart-tiny), with
classifier-free guidance 4.5 and fixed noise, for tests/sampler.rs:

- dpm_diffusers: the diffusers `PixArtAlphaPipeline` denoising loop (batch [uncond; cond], guidance on
  ε, learned σ dropped) with `DPMSolverMultistepScheduler()` defaults, 20 steps; the null condition is
  an "empty prompt" caption with its own 1-token mask.
- ddim: the same loop with `DDIMScheduler` (linear betas, clip_sample off, eta 0), 10 steps.
- dpm_official: a straight port of the official `dpm_solver.py` (NoiseScheduleVP('discrete'),
  time_uniform, multistep order 2, dpmsolver++) with the official null (`y_embedding`, prompt's mask),
  20 steps.
- iddpm: a straight port of the official `space_timesteps` / `SpacedDiffusion` / `p_sample_loop`
  (learned-range variance, clip_denoised=False), 10 steps, official null, per-step noise saved.

Usage: python tools/golden/samplers.py tests/fixtures   (torch, diffusers; after pixart_tiny.py)
"""
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PixArtTransformer2DModel
from safetensors.torch import save_file

SCALE = 4.5


def guided(model, x, t, cond, cmask, uncond, umask):
    """The pipeline's guided ε: batch [uncond; cond], ε_u + s(ε_c − ε_u), learned σ of the cond half."""
    b = x.shape[0]
    out = model(torch.cat([x, x]), encoder_hidden_states=torch.cat([uncond, cond]),
                timestep=torch.full((2 * b,), float(t)), encoder_attention_mask=torch.cat([umask, cmask]),
                added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
    u, c = out[:b], out[b:]
    eps = u[:, :4] + SCALE * (c[:, :4] - u[:, :4])
    return torch.cat([eps, c[:, 4:]], 1)


def scheduler_loop(model, sched, steps, noise, cond):
    sched.set_timesteps(steps)
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = guided(model, sched.scale_model_input(x, t), t, *cond)[:, :4]
        x = sched.step(eps, t, x).prev_sample
    return x, sched.timesteps.float()


def dpm_official(model, steps, noise, cond):
    """dpm_solver.py: NoiseScheduleVP('discrete') + DPM_Solver(dpmsolver++).sample(order=2, multistep,
    skip_type='time_uniform'); model time input (t − 1/N)·1000."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    log_alphas = 0.5 * torch.log(1 - betas).cumsum(0)
    t_array = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)[1:]

    def log_alpha(t):
        return float(np.interp(t, t_array.numpy(), log_alphas.numpy()))

    def ab(t):
        la = log_alpha(t)
        sigma = np.sqrt(1.0 - np.exp(2 * la))
        return np.exp(la), sigma, la - np.log(sigma)

    ts = np.linspace(1.0, 1.0 / 1000, steps + 1)
    x = noise.double()

    def data_pred(x, t):
        eps = guided(model, x.float(), (t - 1.0 / 1000) * 1000, *cond)[:, :4].double()
        a, s, _ = ab(t)
        return (x - s * eps) / a

    m_prev = [data_pred(x, ts[0])]
    t_prev = [ts[0]]
    # first step: first order
    for step in range(1, steps + 1):
        t = ts[step]
        a_t, s_t, l_t = ab(t)
        _, s_0, l_0 = ab(t_prev[-1])
        h = l_t - l_0
        phi_1 = np.expm1(-h)
        if step == 1:
            x = (s_t / s_0) * x - (a_t * phi_1) * m_prev[-1]
        else:
            _, _, l_1 = ab(t_prev[-2])
            r0 = (l_0 - l_1) / h
            d1 = (1.0 / r0) * (m_prev[-1] - m_prev[-2])
            x = (s_t / s_0) * x - (a_t * phi_1) * m_prev[-1] - 0.5 * (a_t * phi_1) * d1
        if step < steps:
            m_prev.append(data_pred(x, t))
        t_prev.append(t)
    return x.float(), torch.tensor((ts[:-1] - 1.0 / 1000) * 1000)


def iddpm(model, steps, noise, cond, gen):
    """gaussian_diffusion.py + respace.py: space_timesteps(1000, str(steps)), p_sample_loop."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    ac = np.cumprod(1.0 - betas)
    frac_stride = (1000 - 1) / (steps - 1)
    cur, use = 0.0, []
    for _ in range(steps):
        use.append(round(cur))
        cur += frac_stride
    new_betas, last, tmap = [], 1.0, []
    for i, a in enumerate(ac):
        if i in set(use):
            new_betas.append(1 - a / last)
            last = a
            tmap.append(i)
    b = np.array(new_betas)
    a = np.cumprod(1.0 - b)
    a_prev = np.append(1.0, a[:-1])
    post_var = b * (1.0 - a_prev) / (1.0 - a)
    post_log_clipped = np.log(np.append(post_var[1], post_var[1:]))
    coef1 = b * np.sqrt(a_prev) / (1.0 - a)
    coef2 = (1.0 - a_prev) * np.sqrt(1.0 - b) / (1.0 - a)
    x = noise.double()
    noises = []
    for i in reversed(range(steps)):
        out = guided(model, x.float(), tmap[i], *cond).double()
        eps, v = out[:, :4], out[:, 4:]
        frac = (v + 1) / 2
        logvar = frac * np.log(b[i]) + (1 - frac) * post_log_clipped[i]
        x0 = np.sqrt(1.0 / a[i]) * x - np.sqrt(1.0 / a[i] - 1) * eps
        mean = coef1[i] * x0 + coef2[i] * x
        z = torch.randn(x.shape, generator=gen)
        noises.append(z)
        x = mean + (float(i != 0)) * torch.exp(0.5 * logvar) * z.double()
    return x.float(), torch.tensor(tmap, dtype=torch.float64), torch.stack(noises)


def main(fixtures: Path):
    tiny = fixtures / "pixart-tiny"
    model = PixArtTransformer2DModel.from_pretrained(tiny / "transformer").eval()
    null = torch.load(tiny / "official.pth")["state_dict"]["y_embedder.y_embedding"]
    g = torch.Generator().manual_seed(11)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    cond = torch.randn(2, 6, 16, generator=g)
    cmask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.float32)
    empty = torch.randn(1, 6, 16, generator=g).repeat(2, 1, 1)
    emask = torch.tensor([[1, 0, 0, 0, 0, 0]], dtype=torch.float32).repeat(2, 1)
    official_null = null[None].repeat(2, 1, 1)
    t5_null = (cond, cmask, empty, emask)
    off_null = (cond, cmask, official_null, cmask)
    out = {"noise": noise, "cond": cond, "cond_mask": cmask, "empty": empty, "empty_mask": emask}
    with torch.no_grad():
        out["dpm_diffusers"], out["dpm_diffusers_times"] = scheduler_loop(
            model, DPMSolverMultistepScheduler(), 20, noise, t5_null)
        ddim = DDIMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=False,
                             set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
        out["ddim"], out["ddim_times"] = scheduler_loop(model, ddim, 10, noise, t5_null)
        out["dpm_official"], out["dpm_official_times"] = dpm_official(model, 20, noise, off_null)
        out["iddpm"], out["iddpm_times"], out["iddpm_noise"] = iddpm(
            model, 10, noise, off_null, torch.Generator().manual_seed(12))
    save_file({k: v.contiguous().float() for k, v in out.items()}, str(fixtures / "golden" / "samplers.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
