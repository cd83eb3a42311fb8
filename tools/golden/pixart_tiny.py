#!/usr/bin/env python3
"""A tiny PixArt-α transformer in the diffusers layout and its forward outputs, for parity tests.

diffusers `PixArtTransformer2DModel` (the reference implementation of the official PixArt code) with a
tiny config (2 blocks, 4 heads of 8, patch 2, 8x8 latents, captions of 6 tokens of 16 channels), every
parameter drawn at random (so zero-initialised layers cannot hide a bug), saved with
`save_pretrained` (config.json + diffusion_pytorch_model.safetensors); then inputs (one caption
padded) and the f32 output in io.safetensors.

Usage: python tools/golden/pixart_tiny.py tests/fixtures/pixart-tiny   (torch, diffusers)
"""
import sys
from pathlib import Path

import torch
from diffusers import PixArtTransformer2DModel
from safetensors.torch import save_file


def main(out: Path):
    torch.manual_seed(0)
    model = PixArtTransformer2DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=32, sample_size=8, patch_size=2, caption_channels=16, interpolation_scale=1,
        use_additional_conditions=False,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    model.save_pretrained(out / "transformer", safe_serialization=True)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    caption = torch.randn(2, 6, 16, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.float32)
    timestep = torch.tensor([999.0, 37.0])
    with torch.no_grad():
        output = model(latents, encoder_hidden_states=caption, timestep=timestep, encoder_attention_mask=mask,
                       added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
    save_file({"latents": latents, "caption": caption, "mask": mask, "timestep": timestep,
               "output": output.contiguous()}, str(out / "io.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
