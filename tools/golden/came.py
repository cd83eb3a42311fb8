#!/usr/bin/env python3
"""Golden CAME steps as PixArt-Σ trains with them (`came_pytorch.CAME`, the optimizer the official
Σ code's `CAMEWrapper` subclasses unchanged; its configs: lr 2e-5, betas (0.9, 0.999, 0.9999), eps
(1e-30, 1e-16), weight decay 0): 5 steps in float64 over parameters of the shapes a PixArt
transformer has (a linear weight, a bias, the patch embedding's 4-D convolution weight), with fixed
gradients, then 3 more with weight decay 0.03, clip threshold 0.5 and a changing learning rate.

Writes tests/fixtures/golden/came.safetensors: p{i}_init, g{s}_{i} (gradient of step s), lr{s},
p{i}_after5 (after the first 5 steps), p{i}_final, and the optimizer state after the last step
(state{i}_{name}: exp_avg, exp_avg_sq_row/col and exp_avg_res_row/col, or exp_avg_sq).
Usage: /tmp/torchvenv/bin/python tools/golden/came.py   (torch 2.15, came-pytorch 0.1.3)
"""
from pathlib import Path

import torch
from came_pytorch import CAME
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
torch.manual_seed(0)
shapes = [(6, 5), (7,), (4, 3, 2, 2)]
params = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in shapes]
out = {f"p{i}_init": p.detach().clone() for i, p in enumerate(params)}
opt = CAME(params, lr=2e-5, weight_decay=0.0, betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16))
for s in range(8):
    if s == 5:
        for i, p in enumerate(params):
            out[f"p{i}_after5"] = p.detach().clone()
        for group in opt.param_groups:
            group["weight_decay"] = 0.03
            group["clip_threshold"] = 0.5
    lr = 2e-5 if s < 5 else 1e-3 * (s - 4)
    for group in opt.param_groups:
        group["lr"] = lr
    out[f"lr{s}"] = torch.tensor([lr], dtype=torch.float64)
    for i, p in enumerate(params):
        p.grad = torch.randn(p.shape, dtype=torch.float64) * (0.1 if s % 2 else 1.0)
        out[f"g{s}_{i}"] = p.grad.clone()
    opt.step()
for i, p in enumerate(params):
    out[f"p{i}_final"] = p.detach().clone()
    for name, t in opt.state[p].items():
        if torch.is_tensor(t) and name != "RMS":
            out[f"state{i}_{name}"] = t.clone()
save_file({k: v.contiguous() for k, v in out.items()}, str(ROOT / "tests/fixtures/golden/came.safetensors"))
print(sorted(out))
