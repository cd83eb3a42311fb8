#!/usr/bin/env python3
"""Golden values for the IDDPM hybrid loss (PixArt-α training objective), by a straight numpy port of
the official functions (PixArt-alpha `diffusion/model/gaussian_diffusion.py`, `diffusion_utils.py`,
inherited from openai/improved-diffusion): linear betas 1e-4..0.02, T=1000, float64 tables, epsilon
prediction with LEARNED_RANGE variance, loss = MSE(eps) + VB, the VB term computed on a copy of the
model output whose mean half is detached, and the discretized Gaussian decoder NLL at t = 0.

Usage: python3 tools/golden/iddpm_loss.py tests/fixtures/golden/iddpm_loss.json   (needs numpy)
"""
import json
import sys

import numpy as np

T = 1000


def tables():
    scale = 1000 / T
    betas = np.linspace(scale * 0.0001, scale * 0.02, T, dtype=np.float64)
    alphas = 1.0 - betas
    ac = np.cumprod(alphas, axis=0)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    return {
        "betas": betas,
        "sqrt_ac": np.sqrt(ac),
        "sqrt_1m_ac": np.sqrt(1.0 - ac),
        "sqrt_recip_ac": np.sqrt(1.0 / ac),
        "sqrt_recipm1_ac": np.sqrt(1.0 / ac - 1),
        "post_log_var_clipped": np.log(np.append(post_var[1], post_var[1:])),
        "coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
    }


def ex(arr, t):  # _extract_into_tensor
    return arr[t][:, None, None, None]


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + np.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * np.exp(-logvar2))


def approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * np.power(x, 3))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    centered_x = x - means
    inv_stdv = np.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered_x + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered_x - 1.0 / 255.0))
    log_cdf_plus = np.log(np.clip(cdf_plus, 1e-12, None))
    log_one_minus_cdf_min = np.log(np.clip(1.0 - cdf_min, 1e-12, None))
    cdf_delta = cdf_plus - cdf_min
    return np.where(x < -0.999, log_cdf_plus,
                    np.where(x > 0.999, log_one_minus_cdf_min, np.log(np.clip(cdf_delta, 1e-12, None))))


def mean_flat(x):
    return x.mean(axis=tuple(range(1, x.ndim)))


def training_losses(tb, x0, t, noise, model_output):
    c = x0.shape[1]
    x_t = ex(tb["sqrt_ac"], t) * x0 + ex(tb["sqrt_1m_ac"], t) * noise
    eps, var_values = model_output[:, :c], model_output[:, c:]
    # _vb_terms_bpd with frozen_out = cat(eps.detach(), var_values)
    true_mean = ex(tb["coef1"], t) * x0 + ex(tb["coef2"], t) * x_t
    true_logvar = ex(tb["post_log_var_clipped"], t)
    min_log = ex(tb["post_log_var_clipped"], t)
    max_log = ex(np.log(tb["betas"]), t)
    frac = (var_values + 1) / 2
    model_logvar = frac * max_log + (1 - frac) * min_log
    pred_x0 = ex(tb["sqrt_recip_ac"], t) * x_t - ex(tb["sqrt_recipm1_ac"], t) * eps
    model_mean = ex(tb["coef1"], t) * pred_x0 + ex(tb["coef2"], t) * x_t
    kl = mean_flat(normal_kl(true_mean, true_logvar, model_mean, model_logvar)) / np.log(2.0)
    nll = mean_flat(-discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)) / np.log(2.0)
    vb = np.where(t == 0, nll, kl)
    mse = mean_flat((noise - eps) ** 2)
    return {"x_t": x_t, "mse": mse, "vb": vb, "loss": mse + vb}


def main(out):
    rng = np.random.default_rng(20231004)
    b, c, h, w = 5, 4, 4, 4
    x0 = np.clip(rng.standard_normal((b, c, h, w)) * 0.6, -1.2, 1.2)  # some values past ±0.999 (edge bins)
    noise = rng.standard_normal((b, c, h, w))
    model_output = rng.standard_normal((b, 2 * c, h, w)) * 0.8
    t = np.array([0, 0, 1, 500, 999])
    tb = tables()
    r = training_losses(tb, x0, t, noise, model_output)
    json.dump({
        "shape": [b, c, h, w], "t": t.tolist(),
        "x0": x0.ravel().tolist(), "noise": noise.ravel().tolist(), "model_output": model_output.ravel().tolist(),
        "x_t": r["x_t"].ravel().tolist(), "mse": r["mse"].tolist(), "vb": r["vb"].tolist(), "loss": r["loss"].tolist(),
        "tables_at": {"t": [0, 1, 999], "betas": tb["betas"][[0, 1, 999]].tolist(),
                      "post_log_var_clipped": tb["post_log_var_clipped"][[0, 1, 999]].tolist(),
                      "coef1": tb["coef1"][[0, 1, 999]].tolist(), "coef2": tb["coef2"][[0, 1, 999]].tolist()},
    }, open(out, "w"), indent=0)


if __name__ == "__main__":
    main(sys.argv[1])
