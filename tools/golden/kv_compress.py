#!/usr/bin/env python3
"""Golden outputs of the official PixArt-Σ self-attention with KV-token compression
(`AttentionKVCompress` of diffusion/model/nets/PixArt_blocks.py, imported from a checkout of
github.com/PixArt-alpha/PixArt-sigma) for tests/model.rs.

The official class runs its attention through xformers' `memory_efficient_attention`, which has no
CPU build; a stand-in module computes the same softmax(q kᵀ / √d) v with PyTorch's
`scaled_dot_product_attention`. One attention per sampling mode (`conv` with its depthwise
convolution and LayerNorm drawn at random, `ave`, `uniform`, `uniform_every`), scale factor 2, 3 heads
of 8, on a non-square 6×10 token grid, float64.

Writes tests/fixtures/golden/kv_compress.safetensors: x, and per mode `{mode}.qkv.weight|bias`,
`{mode}.proj.weight|bias` (and for conv `conv.sr.weight|bias`, `conv.norm.weight|bias`), `{mode}.out`.
Usage: /tmp/torchvenv/bin/python tools/golden/kv_compress.py PATH/TO/PixArt-sigma   (torch 2.15, timm, einops)
"""
import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file


def memory_efficient_attention(q, k, v, p=0.0, attn_bias=None):
    assert attn_bias is None and p == 0.0
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, N, d]
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)


xformers = types.ModuleType("xformers")
xformers.ops = types.ModuleType("xformers.ops")
xformers.ops.memory_efficient_attention = memory_efficient_attention
sys.modules["xformers"], sys.modules["xformers.ops"] = xformers, xformers.ops

ROOT = Path(__file__).resolve().parents[2]
# The file alone: the package's __init__ files pull in mmcv and the whole training stack.
blocks = Path(sys.argv[1]) / "diffusion/model/nets/PixArt_blocks.py"
spec = importlib.util.spec_from_file_location("PixArt_blocks", blocks)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
AttentionKVCompress = module.AttentionKVCompress

torch.manual_seed(5)
B, H, W, C, HEADS = 2, 6, 10, 24, 3
x = torch.randn(B, H * W, C, dtype=torch.float64)
out = {"x": x}
for mode in ["conv", "ave", "uniform", "uniform_every"]:
    attn = AttentionKVCompress(C, num_heads=HEADS, qkv_bias=True, sampling=mode, sr_ratio=2).double().eval()
    with torch.no_grad():
        for name, p in attn.named_parameters():
            p.copy_(torch.randn_like(p) * (0.2 if "weight" in name else 0.1))
            if name == "norm.weight":
                p.add_(1.0)
            out[f"{mode}.{name}"] = p.detach().clone()
        out[f"{mode}.out"] = attn(x, HW=(H, W))
save_file({k: v.contiguous() for k, v in out.items()}, str(ROOT / "tests/fixtures/golden/kv_compress.safetensors"))
print(sorted(out))
