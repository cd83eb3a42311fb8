#!/usr/bin/env python3
"""Golden trajectory of diffusers' DPMSolverMultistepScheduler (defaults: linear betas 1e-4..0.02,
1000 steps, order 2, dpmsolver++, epsilon, timestep_spacing "linspace", lower_order_final) over 20
steps, as PixArt-α's inference runs it, with fixed noise and an analytic stand-in for the model,
eps(x, t) = 0.3 * x * t / 1000 + 0.05 * sin(3 x), that the Rust test evaluates identically.

Usage: python tools/golden/dpm_solver.py tests/fixtures/golden/dpm_solver.json   (torch, diffusers)
"""
import json
import sys

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler


def eps(x, t):
    return 0.3 * x * (float(t) / 1000.0) + 0.05 * torch.sin(3.0 * x)


def main(out):
    sched = DPMSolverMultistepScheduler()
    sched.set_timesteps(20)
    noise = np.random.default_rng(7).standard_normal((1, 4, 8, 8)).astype(np.float32)
    x = torch.from_numpy(noise) * sched.init_noise_sigma
    steps = []
    for t in sched.timesteps:
        x = sched.step(eps(x, t), t, x).prev_sample
        steps.append(x.flatten().tolist())
    json.dump({
        "config": {k: (v if isinstance(v, (int, str, bool, type(None))) or (isinstance(v, float) and np.isfinite(v))
                       else str(v)) for k, v in sched.config.items()},
        "timesteps": [int(t) for t in sched.timesteps],
        "sigmas": [float(s) for s in sched.sigmas],
        "noise": noise.flatten().tolist(),
        "shape": [1, 4, 8, 8],
        "steps": steps[:2] + steps[-1:],  # after steps 1, 2 (first and second order) and 20
    }, open(out, "w"), indent=0)


if __name__ == "__main__":
    main(sys.argv[1])
