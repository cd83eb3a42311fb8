#!/usr/bin/env python3
"""Golden values for initialising PixArt from DiT ImageNet weights (PixArt-α §2.3, re-parameterisation
at t = 500): a tiny DiT with the state-dict layout of facebookresearch/DiT's `models.py` (x_embedder,
t_embedder, y_embedder, blocks.*.{attn,mlp,adaLN_modulation}, final_layer), random weights, and its
output at t = 500 with the condition c = t_embedder(t) alone (no class embedding) — the function a
re-parameterised PixArt must reproduce whatever its caption (its cross-attention output starts at 0).
The DiT forward is a port of DiT's DiTBlock / FinalLayer / unpatchify.
Usage: python tools/golden/dit_tiny.py tests/fixtures/golden/dit_tiny.safetensors   (torch, safetensors)"""
import math
import sys

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

H, HEADS, DEPTH, P, C, GRID = 48, 2, 2, 2, 4, 4  # hidden, heads, depth, patch, latent channels, patches a side


def timestep_embedding(t, dim=256, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def pos_embed(dim, grid):
    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    gh, gw = np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)
    g = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, grid, grid)
    return torch.from_numpy(np.concatenate([one(dim // 2, g[0]), one(dim // 2, g[1])], axis=1)).float()


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def ln(x):
    return nn.functional.layer_norm(x, (x.shape[-1],), eps=1e-6)


def attention(w, x):
    b, n, _ = x.shape
    qkv = nn.functional.linear(x, w["qkv.weight"], w["qkv.bias"]).reshape(b, n, 3, HEADS, H // HEADS).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = ((q @ k.transpose(-2, -1)) * (H // HEADS) ** -0.5).softmax(-1)
    return nn.functional.linear((a @ v).transpose(1, 2).reshape(b, n, H), w["proj.weight"], w["proj.bias"])


def forward(sd, x, t):
    lin = lambda x, k: nn.functional.linear(x, sd[f"{k}.weight"], sd[f"{k}.bias"])
    x = nn.functional.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=P)
    x = x.flatten(2).transpose(1, 2) + pos_embed(H, GRID)[None]
    c = lin(nn.functional.silu(lin(timestep_embedding(t), "t_embedder.mlp.0")), "t_embedder.mlp.2")
    for i in range(DEPTH):
        b = f"blocks.{i}"
        mods = lin(nn.functional.silu(c), f"{b}.adaLN_modulation.1").chunk(6, dim=1)
        sm, cm, gm, sf, cf, gf = mods
        attn_w = {k: sd[f"{b}.attn.{k}"] for k in ["qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]}
        x = x + gm.unsqueeze(1) * attention(attn_w, modulate(ln(x), sm, cm))
        h = nn.functional.gelu(lin(modulate(ln(x), sf, cf), f"{b}.mlp.fc1"), approximate="tanh")
        x = x + gf.unsqueeze(1) * lin(h, f"{b}.mlp.fc2")
    shift, scale = lin(nn.functional.silu(c), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    x = lin(modulate(ln(x), shift, scale), "final_layer.linear")
    x = x.reshape(x.shape[0], GRID, GRID, P, P, 2 * C)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], 2 * C, GRID * P, GRID * P)


def main(out):
    g = torch.Generator().manual_seed(2310)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1
    sd = {"x_embedder.proj.weight": r(H, C, P, P), "x_embedder.proj.bias": r(H),
          "t_embedder.mlp.0.weight": r(H, 256), "t_embedder.mlp.0.bias": r(H),
          "t_embedder.mlp.2.weight": r(H, H), "t_embedder.mlp.2.bias": r(H),
          "y_embedder.embedding_table.weight": r(11, H), "pos_embed": pos_embed(H, GRID)[None],
          "final_layer.linear.weight": r(P * P * 2 * C, H), "final_layer.linear.bias": r(P * P * 2 * C),
          "final_layer.adaLN_modulation.1.weight": r(2 * H, H), "final_layer.adaLN_modulation.1.bias": r(2 * H)}
    for i in range(DEPTH):
        b = f"blocks.{i}"
        sd.update({f"{b}.attn.qkv.weight": r(3 * H, H), f"{b}.attn.qkv.bias": r(3 * H),
                   f"{b}.attn.proj.weight": r(H, H), f"{b}.attn.proj.bias": r(H),
                   f"{b}.mlp.fc1.weight": r(4 * H, H), f"{b}.mlp.fc1.bias": r(4 * H),
                   f"{b}.mlp.fc2.weight": r(H, 4 * H), f"{b}.mlp.fc2.bias": r(H),
                   f"{b}.adaLN_modulation.1.weight": r(6 * H, H), f"{b}.adaLN_modulation.1.bias": r(6 * H)})
    x = torch.randn(2, C, GRID * P, GRID * P, generator=g)
    t = torch.tensor([500.0, 500.0])
    with torch.no_grad():
        y = forward(sd, x, t)
    tensors = {k: v.contiguous() for k, v in sd.items()}
    save_file(tensors, out)
    save_file({"x": x, "output": y.contiguous()}, out.replace(".safetensors", "_io.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
