#!/usr/bin/env python3
"""A tiny PixArt-Σ transformer in the diffusers layout, its official-key checkpoint, and its
forward outputs, for parity tests (tests/model.rs).

PixArt-Σ's released transformers (PixArt-Sigma-XL-2-512-MS, -1024-MS, -2K-MS) are diffusers
`PixArtTransformer2DModel`s without micro-conditions (`use_additional_conditions: false`), with
`interpolation_scale` sample_size / 64 (1, 2, 4) and captions of up to 300 T5 tokens. This one keeps
those traits at a tiny width: 2 blocks, 3 heads of 8, the 1024 px model's sample_size 128 and
interpolation_scale 2 (they lay out the positions; no weight depends on them), a non-square 12×20 latent, and captions padded to 300 tokens (7 and
12 of them valid). Every parameter is drawn at random (no zero-initialised layer hides a bug).

Writes DIR/transformer/ (save_pretrained), DIR/io.safetensors (latents, timestep, caption, mask,
output), DIR/official.safetensors (the official Σ keys, with the null caption `y_embedder.y_embedding`
of 300 rows, as the official checkpoints carry it).
Usage: /tmp/torchvenv/bin/python tools/golden/pixart_sigma.py tests/fixtures/pixart-sigma
       (torch 2.15, diffusers 0.42.1)
"""
import sys
from pathlib import Path

import torch
from diffusers import PixArtTransformer2DModel
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pixart_tiny import to_official  # noqa: E402

TOKENS = 300


def main(out: Path):
    torch.manual_seed(11)
    model = PixArtTransformer2DModel(
        num_attention_heads=3, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=24, sample_size=128, patch_size=2, caption_channels=16, interpolation_scale=2,
        use_additional_conditions=False,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    model.save_pretrained(out / "transformer", safe_serialization=True)
    g = torch.Generator().manual_seed(12)
    latents = torch.randn(2, 4, 12, 20, generator=g)
    caption = torch.randn(2, TOKENS, 16, generator=g)
    mask = torch.zeros(2, TOKENS)
    mask[0, :7] = 1
    mask[1, :12] = 1
    caption = caption * mask[:, :, None]  # T5 rows past the caption are padding
    timestep = torch.tensor([801.0, 64.0])
    with torch.no_grad():
        output = model(latents, encoder_hidden_states=caption, timestep=timestep, encoder_attention_mask=mask,
                       added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
    save_file({"latents": latents, "caption": caption, "mask": mask, "timestep": timestep,
               "output": output.contiguous()}, str(out / "io.safetensors"))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    official = to_official(sd, model.config.num_layers)
    official["y_embedder.y_embedding"] = torch.randn(TOKENS, 16, generator=g) / 4.0
    save_file({k: v.contiguous() for k, v in official.items()}, str(out / "official.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
