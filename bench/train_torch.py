#!/usr/bin/env python3
"""The PyTorch anchor of `bench/train.sh`: PixArt-α's training loop over the same pixforge caches with
diffusers' PixArtTransformer2DModel on CPU, as the official `train_scripts/train.py` runs it: single-
bucket batches, a posterior draw `(mean + std·ε)·0.18215`, captions padded to 120 with their mask, 10%
caption drop to the null caption, uniform timesteps, the IDDPM hybrid loss (MSE + VB with the mean
detached, discretized Gaussian NLL at t = 0), torch.optim.AdamW (2e-5, wd 0.03, eps 1e-10),
clip_grad_norm_(0.01), EMA 0.9999. With a rank R, LoRA adapters of rank R (alpha R) on the attention's
q, k, v and output projections made by peft's `get_peft_model` are trained instead of the whole
model (the optimizer, clipping and EMA over the adapters). Prints JSON: seconds per step, images/s,
peak RSS (MiB).
Usage: python bench/train_torch.py T5_CACHE VAE_CACHE STEPS BATCH [R]   (torch, diffusers, safetensors, peft)"""
import json
import math
import os
import random
import resource
import sys
import time

import numpy as np
import torch
from diffusers import PixArtTransformer2DModel
from safetensors.torch import load_file


def cache(dir_):
    shards = sorted(f[:-len("_stats.json")] for f in os.listdir(dir_) if f.endswith("_stats.json"))
    out = {}
    for s in shards:
        index = json.load(open(f"{dir_}/{s}.index.json"))
        tensors = load_file(f"{dir_}/{s}.safetensors")
        for e in index:
            if e["status"] == "success":
                out[e["key"]] = (e, tensors)
    return out


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
    return a[t].float()[:, None, None, None]


def approx_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def losses(tb, out, x0, x_t, t, noise):
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
    return (mse + vb).mean()


def main(t5_dir, vae_dir, steps, batch, rank=0):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    random.seed(0)
    t5, vae = cache(t5_dir), cache(vae_dir)
    keys = sorted(set(t5) & set(vae))
    buckets = {}
    for k in keys:
        buckets.setdefault(vae[k][0]["bucket"], []).append(k)
    model = PixArtTransformer2DModel(
        num_attention_heads=6, attention_head_dim=64, in_channels=4, out_channels=8, num_layers=4,
        cross_attention_dim=384, sample_size=32, patch_size=2, caption_channels=4096, interpolation_scale=1,
        use_additional_conditions=False).train()
    null = torch.randn(120, 4096) / 4096 ** 0.5
    if rank:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-5, betas=(0.9, 0.999), eps=1e-10, weight_decay=0.03)
    ema = [p.detach().clone() for p in params]
    tb = tables()
    times = []

    def batches():
        while True:
            order = keys[:]
            random.shuffle(order)
            pending = {}
            for k in order:
                b = vae[k][0]["bucket"]
                pending.setdefault(b, []).append(k)
                if len(pending[b]) == batch:
                    yield pending.pop(b)

    it = batches()
    for step in range(steps + 1):
        start = time.perf_counter()
        ks = next(it)
        lat, cap, mask = [], [], []
        for k in ks:
            e, tens = vae[k]
            b = e["bucket"]
            m, s = tens[f"mean.{b}"][e["row"]].float(), tens[f"std.{b}"][e["row"]].float()
            lat.append((m + s * torch.randn_like(m)) * 0.18215)
            te, tt = t5[k]
            emb = tt["embeddings"][te["row"]:te["row"] + te["tokens"]].float()
            if random.random() < 0.1:
                emb = null[:emb.shape[0]]
            pad = torch.zeros(120, 4096)
            pad[:emb.shape[0]] = emb
            cap.append(pad)
            mask.append((torch.arange(120) < emb.shape[0]).float())
        x0, caption, mask = torch.stack(lat), torch.stack(cap), torch.stack(mask)
        t = torch.randint(0, 1000, (x0.shape[0],))
        noise = torch.randn_like(x0)
        x_t = ex(tb["sqrt_ac"], t) * x0 + ex(tb["sqrt_1m_ac"], t) * noise
        out = model(x_t, encoder_hidden_states=caption, timestep=t, encoder_attention_mask=mask,
                    added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
        loss = losses(tb, out, x0, x_t, t, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.01)
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.mul_(0.9999).add_(p.detach(), alpha=0.0001)
        if step > 0:
            times.append(time.perf_counter() - start)
    med = sorted(times)[len(times) // 2]
    print(json.dumps({"seconds_per_step": med, "images_per_s": batch / med, "steps": times,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 0)
