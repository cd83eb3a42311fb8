#!/usr/bin/env python3
"""The PyTorch anchor of `pixforge bench pixart-step`: the same PixArt transformer step in diffusers.

depth 4, hidden 384 (6 heads of 64), patch 2, 32x32 latents, 120 caption tokens of 4096 channels,
batch 4, f32, 2 threads; loss = mean of the squared output; forward + backward; median of N steps after
one warm-up. Prints JSON with seconds_per_step and peak RSS (MiB).

Usage: python bench/pixart_step.py [N]   (torch, diffusers)
"""
import json
import resource
import sys
import time

import torch
from diffusers import PixArtTransformer2DModel


def main(iters):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = PixArtTransformer2DModel(
        num_attention_heads=6, attention_head_dim=64, in_channels=4, out_channels=8, num_layers=4,
        cross_attention_dim=384, sample_size=32, patch_size=2, caption_channels=4096, interpolation_scale=1,
        use_additional_conditions=False,
    ).train()
    latents = torch.randn(4, 4, 32, 32)
    caption = torch.randn(4, 120, 4096)
    mask = torch.ones(4, 120)
    t = torch.tensor([999.0, 500.0, 100.0, 1.0])
    steps = []
    for i in range(iters + 1):
        start = time.perf_counter()
        out = model(latents, encoder_hidden_states=caption, timestep=t, encoder_attention_mask=mask,
                    added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
        out.square().mean().backward()
        model.zero_grad(set_to_none=True)
        if i > 0:
            steps.append(time.perf_counter() - start)
    print(json.dumps({"seconds_per_step": sorted(steps)[len(steps) // 2], "steps": steps,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
