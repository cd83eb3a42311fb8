#!/usr/bin/env python3
"""Golden AdamW, gradient clipping and EMA steps as PixArt-α's training runs them (torch.optim.AdamW
with lr 2e-5, betas (0.9, 0.999), eps 1e-10, weight decay 0.03; clip_grad_norm_ to 0.01; EMA 0.9999),
on two small parameters over 5 steps with fixed gradients.

Writes tests/fixtures/golden/adamw.safetensors: p{i}_init, g{s}_{i} (gradient of step s), p{i}_final,
ema{i}_final, norm{s} (the total gradient norm before clipping, as clip_grad_norm_ returns it).
Usage: /tmp/torchvenv/bin/python tools/golden/adamw.py
"""
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
torch.manual_seed(0)
shapes = [(3, 5), (7,)]
params = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in shapes]
out = {f"p{i}_init": p.detach().clone() for i, p in enumerate(params)}
ema = [p.detach().clone() for p in params]
opt = torch.optim.AdamW(params, lr=2e-5, betas=(0.9, 0.999), eps=1e-10, weight_decay=0.03)
for s in range(5):
    for i, p in enumerate(params):
        # Step 2's gradients are small, so clipping leaves them alone there.
        scale = 1e-4 if s == 2 else 1.0
        p.grad = torch.randn(p.shape, dtype=torch.float64) * scale
        out[f"g{s}_{i}"] = p.grad.clone()
    out[f"norm{s}"] = torch.nn.utils.clip_grad_norm_(params, 0.01).reshape(1)
    opt.step()
    with torch.no_grad():
        for e, p in zip(ema, params):
            e.mul_(0.9999).add_(p, alpha=1 - 0.9999)
for i, (p, e) in enumerate(zip(params, ema)):
    out[f"p{i}_final"] = p.detach().clone()
    out[f"ema{i}_final"] = e
save_file({k: v.contiguous() for k, v in out.items()}, str(ROOT / "tests/fixtures/golden/adamw.safetensors"))
print(sorted(out))
