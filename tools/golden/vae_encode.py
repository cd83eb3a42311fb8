#!/usr/bin/env python3
"""The posterior of diffusers' `AutoencoderKL` for fixed pixels, on the tiny VAE of
tests/fixtures/pixart-pipeline/vae (made by pixart_pipeline.py): `latent_dist.mean` and `.std` of two
16x24 images in [-1, 1], and the decoded images of the means, for tests/vae.rs.

Usage: python tools/golden/vae_encode.py tests/fixtures   (torch, diffusers)
"""
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file


def main(fixtures: Path):
    vae = AutoencoderKL.from_pretrained(fixtures / "pixart-pipeline" / "vae").eval()
    pixels = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        dist = vae.encode(pixels).latent_dist
        decoded = vae.decode(dist.mean * vae.config.scaling_factor / vae.config.scaling_factor).sample
    save_file({"pixels": pixels, "mean": dist.mean.contiguous(), "std": dist.std.contiguous(),
               "decoded": decoded.contiguous()},
              str(fixtures / "golden" / "vae_encode.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
