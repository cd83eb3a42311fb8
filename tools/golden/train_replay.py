#!/usr/bin/env python3
"""The reference training loop the trainer is replayed against (tests/train_replay.rs).

PixArt-α's loop in PyTorch, float64, on a tiny PixArtMS (diffusers' `PixArtTransformer2DModel` with
the micro-conditions, every weight drawn at random so that no zero-initialised layer hides a bug):
each step takes a recorded batch (latents, padded captions with their masks, image sizes and aspect
ratios), recorded timesteps and noise and recorded caption-drop flags (a dropped caption becomes the
null caption `y_embedding`, its mask kept, as the official `CaptionEmbedder.token_drop` does), and
runs the IDDPM hybrid loss (the official `GaussianDiffusion.training_losses` with learned sigma:
MSE on the noise + the variational bound with the mean detached, the discretized Gaussian NLL at
t = 0), `loss.backward()`, `clip_grad_norm_`, `torch.optim.AdamW` at the learning rate of diffusers'
`get_constant_schedule_with_warmup`, and the EMA update `ema ← d·ema + (1 − d)·p` of the official
`update_ema`.

The sinusoidal timestep and micro-condition features, which diffusers computes in float32 for
any model, are computed in float64 here (`timestep_embedding_f64`), as pixforge's f64 model does.

Saves everything the replay needs and checks: the initial weights (diffusers names, plus the null
caption as `y_embedder.y_embedding`), every step's inputs and draws, the per-step learning rate,
loss, MSE, VB and gradient norm (before clipping), and the final weights and EMA.

Usage: python tools/golden/train_replay.py tests/fixtures/golden   (torch 2.15, diffusers 0.42.1)
"""
import json
import math
import sys
from pathlib import Path

import diffusers.models.embeddings as embeddings
import numpy as np
import torch
from diffusers import PixArtTransformer2DModel
from safetensors.torch import save_file

STEPS = 20
BATCH = 2
TOKENS = 6
CAPTION_CHANNELS = 16
LR = 2e-3
WARMUP = 5
BETAS = (0.9, 0.999)
EPS = 1e-10
WEIGHT_DECAY = 0.03
MAX_GRAD_NORM = 0.7
EMA_DECAY = 0.9
NULL_CAPTION = "y_embedder.y_embedding"


def timestep_embedding_f64(timesteps, embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=1, scale=1,
                           max_period=10000):
    """diffusers' `get_timestep_embedding` in float64 (it computes in float32 whatever the model's
    type): the replay is float64 throughout, and pixforge's f64 model computes these in f64."""
    half = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float64) / (half - downscale_freq_shift)
    emb = scale * timesteps[:, None].double() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
    return emb


embeddings.get_timestep_embedding = timestep_embedding_f64


def tables(T=1000):
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    ac = np.cumprod(1.0 - betas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    t = lambda a: torch.from_numpy(a)
    return {"betas": t(betas), "sqrt_ac": t(np.sqrt(ac)), "sqrt_1m_ac": t(np.sqrt(1 - ac)),
            "sqrt_recip_ac": t(np.sqrt(1 / ac)), "sqrt_recipm1_ac": t(np.sqrt(1 / ac - 1)),
            "log_var": t(np.log(np.append(post_var[1], post_var[1:]))),
            "coef1": t(betas * np.sqrt(ac_prev) / (1 - ac)), "coef2": t((1 - ac_prev) * np.sqrt(1 - betas) / (1 - ac))}


def ex(a, t):
    return a[t][:, None, None, None]


def approx_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def losses(tb, out, x0, x_t, t, noise):
    """The official hybrid loss per sample: (mse, vb)."""
    c = x0.shape[1]
    eps, v = out[:, :c], out[:, c:]
    frozen = eps.detach()
    true_mean = ex(tb["coef1"], t) * x0 + ex(tb["coef2"], t) * x_t
    true_lv = ex(tb["log_var"], t)
    frac = (v + 1) / 2
    lv = frac * ex(torch.log(tb["betas"]), t) + (1 - frac) * true_lv
    pred_x0 = ex(tb["sqrt_recip_ac"], t) * x_t - ex(tb["sqrt_recipm1_ac"], t) * frozen
    mean = ex(tb["coef1"], t) * pred_x0 + ex(tb["coef2"], t) * x_t
    kl = 0.5 * (-1.0 + lv - true_lv + torch.exp(true_lv - lv) + (true_mean - mean) ** 2 * torch.exp(-lv))
    kl = kl.mean(dim=(1, 2, 3)) / math.log(2.0)
    centered, inv = x0 - mean, torch.exp(-0.5 * lv)
    cdf_p, cdf_m = approx_cdf(inv * (centered + 1 / 255)), approx_cdf(inv * (centered - 1 / 255))
    ll = torch.where(x0 < -0.999, torch.log(cdf_p.clamp(min=1e-12)),
                     torch.where(x0 > 0.999, torch.log((1 - cdf_m).clamp(min=1e-12)),
                                 torch.log((cdf_p - cdf_m).clamp(min=1e-12))))
    nll = (-ll).mean(dim=(1, 2, 3)) / math.log(2.0)
    vb = torch.where(t == 0, nll, kl)
    mse = ((noise - eps) ** 2).mean(dim=(1, 2, 3))
    return mse, vb


def main(out: Path):
    torch.manual_seed(0)
    model = PixArtTransformer2DModel(
        num_attention_heads=3, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=24, sample_size=8, patch_size=2, caption_channels=CAPTION_CHANNELS,
        interpolation_scale=1, use_additional_conditions=True,
    ).double().train()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.08)
    null = torch.randn(TOKENS, CAPTION_CHANNELS, dtype=torch.float64) / CAPTION_CHANNELS ** 0.5
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    fixture = {f"init.{n}": p.detach().clone().contiguous() for n, p in model.named_parameters()}
    fixture[f"init.{NULL_CAPTION}"] = null.clone()
    opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / WARMUP) if WARMUP else 1.0)
    ema = [p.detach().clone() for p in params]
    tb = tables()
    g = torch.Generator().manual_seed(1)
    record = {"lr": [], "loss": [], "mse": [], "vb": [], "grad_norm": []}
    for step in range(STEPS):
        x0 = torch.randn(BATCH, 4, 8, 8, generator=g, dtype=torch.float64)
        caption = torch.randn(BATCH, TOKENS, CAPTION_CHANNELS, generator=g, dtype=torch.float64)
        lengths = [TOKENS, 1 + step % TOKENS]
        mask = torch.tensor([[1.0 if i < n else 0.0 for i in range(TOKENS)] for n in lengths], dtype=torch.float64)
        caption = caption * mask[:, :, None]  # padding as the caches pad: zeros
        img_hw = torch.tensor([[256.0, 256.0], [384.0 + 64 * (step % 3), 512.0]], dtype=torch.float64)
        aspect = (img_hw[:, 0] / img_hw[:, 1])[:, None]
        t = torch.randint(0, 1000, (BATCH,), generator=g)
        if step in (3, 11):
            t[1] = 0  # the discretized-likelihood branch
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        drop = torch.rand(BATCH, generator=g) < 0.3
        if step == 2:
            drop[:] = True
        cap_in = torch.where(drop[:, None, None], null[None], caption)
        x_t = ex(tb["sqrt_ac"], t) * x0 + ex(tb["sqrt_1m_ac"], t) * noise
        pred = model(x_t, encoder_hidden_states=cap_in, timestep=t.double(), encoder_attention_mask=mask,
                    added_cond_kwargs={"resolution": img_hw, "aspect_ratio": aspect}, return_dict=False)[0]
        mse, vb = losses(tb, pred, x0, x_t, t, noise)
        loss = (mse + vb).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        record["lr"].append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.mul_(EMA_DECAY).add_(p.detach(), alpha=1 - EMA_DECAY)
        record["loss"].append(loss.item())
        record["mse"].append(mse.mean().item())
        record["vb"].append(vb.mean().item())
        record["grad_norm"].append(norm.item())
        s = f"step{step:02}"
        fixture.update({f"{s}.latents": x0, f"{s}.caption": caption, f"{s}.mask": mask, f"{s}.img_hw": img_hw,
                        f"{s}.aspect_ratio": aspect, f"{s}.t": t.double(), f"{s}.noise": noise,
                        f"{s}.drop": drop.double()})
    for n, p, e in zip(names, params, ema):
        fixture[f"final.{n}"] = p.detach().clone().contiguous()
        fixture[f"ema.{n}"] = e.contiguous()
    for k, v in record.items():
        fixture[f"record.{k}"] = torch.tensor(v, dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in fixture.items()}, str(out / "train_replay.safetensors"))
    config = {"steps": STEPS, "lr": LR, "warmup_steps": WARMUP, "betas": BETAS, "eps": EPS,
              "weight_decay": WEIGHT_DECAY, "max_grad_norm": MAX_GRAD_NORM, "ema_decay": EMA_DECAY,
              "model": {"num_attention_heads": 3, "attention_head_dim": 8, "in_channels": 4, "out_channels": 8,
                        "num_layers": 2, "sample_size": 8, "patch_size": 2, "caption_channels": CAPTION_CHANNELS,
                        "interpolation_scale": 1.0},
              "torch": torch.__version__, "clipped_steps": sum(n > MAX_GRAD_NORM for n in record["grad_norm"])}
    (out / "train_replay.json").write_text(json.dumps(config, indent=1) + "\n")
    print(json.dumps({"loss": record["loss"], "grad_norm": record["grad_norm"], **config}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
