#!/usr/bin/env python3
"""A tiny PixArt-α transformer in the diffusers layout and its forward outputs, for parity tests.

diffusers `PixArtTransformer2DModel` (the reference implementation of the official PixArt code) with a
tiny config (2 blocks, 4 heads of 8, patch 2, 8x8 latents, captions of 6 tokens of 16 channels), every
parameter drawn at random (so zero-initialised layers cannot hide a bug), saved with
`save_pretrained` (config.json + diffusion_pytorch_model.safetensors); then inputs (one caption
padded) and the f32 output in io.safetensors.

Usage: python tools/golden/pixart_tiny.py tests/fixtures/pixart-tiny              (torch, diffusers)
       python tools/golden/pixart_tiny.py tests/fixtures/pixart-tiny --official   (official.pth from it)
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


def main_ms(out: Path):
    """PixArtMS: micro-conditions (image size, aspect ratio) and a non-square 8x12 latent."""
    torch.manual_seed(3)
    model = PixArtTransformer2DModel(
        num_attention_heads=3, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=24, sample_size=8, patch_size=2, caption_channels=16, interpolation_scale=1,
        use_additional_conditions=True,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    model.save_pretrained(out / "transformer-ms", safe_serialization=True)
    g = torch.Generator().manual_seed(4)
    latents = torch.randn(2, 4, 8, 12, generator=g)
    caption = torch.randn(2, 5, 16, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.float32)
    timestep = torch.tensor([500.0, 3.0])
    resolution = torch.tensor([[512.0, 768.0], [1024.0, 1536.0]])
    aspect_ratio = torch.tensor([[1.5], [1.5]])
    with torch.no_grad():
        output = model(latents, encoder_hidden_states=caption, timestep=timestep, encoder_attention_mask=mask,
                       added_cond_kwargs={"resolution": resolution, "aspect_ratio": aspect_ratio},
                       return_dict=False)[0]
    save_file({"latents": latents, "caption": caption, "mask": mask, "timestep": timestep,
               "resolution": resolution, "aspect_ratio": aspect_ratio, "output": output.contiguous()},
              str(out / "io-ms.safetensors"))


if __name__ == "__main__" and len(sys.argv) == 2:
    main(Path(sys.argv[1]))
    main_ms(Path(sys.argv[1]))


def to_official(sd, num_layers):
    """The inverse of diffusers' convert_pixart_alpha_to_diffusers.py key mapping (qkv and kv fused)."""
    o = {
        "x_embedder.proj.weight": sd["pos_embed.proj.weight"], "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
        "t_embedder.mlp.0.weight": sd["adaln_single.emb.timestep_embedder.linear_1.weight"],
        "t_embedder.mlp.0.bias": sd["adaln_single.emb.timestep_embedder.linear_1.bias"],
        "t_embedder.mlp.2.weight": sd["adaln_single.emb.timestep_embedder.linear_2.weight"],
        "t_embedder.mlp.2.bias": sd["adaln_single.emb.timestep_embedder.linear_2.bias"],
        "t_block.1.weight": sd["adaln_single.linear.weight"], "t_block.1.bias": sd["adaln_single.linear.bias"],
        "y_embedder.y_proj.fc1.weight": sd["caption_projection.linear_1.weight"],
        "y_embedder.y_proj.fc1.bias": sd["caption_projection.linear_1.bias"],
        "y_embedder.y_proj.fc2.weight": sd["caption_projection.linear_2.weight"],
        "y_embedder.y_proj.fc2.bias": sd["caption_projection.linear_2.bias"],
        "final_layer.linear.weight": sd["proj_out.weight"], "final_layer.linear.bias": sd["proj_out.bias"],
        "final_layer.scale_shift_table": sd["scale_shift_table"],
    }
    for i in range(num_layers):
        b, d = f"blocks.{i}.", f"transformer_blocks.{i}."
        o[b + "scale_shift_table"] = sd[d + "scale_shift_table"]
        for kind in ["weight", "bias"]:
            o[b + f"attn.qkv.{kind}"] = torch.cat([sd[d + f"attn1.to_{n}.{kind}"] for n in "qkv"])
            o[b + f"attn.proj.{kind}"] = sd[d + f"attn1.to_out.0.{kind}"]
            o[b + f"cross_attn.q_linear.{kind}"] = sd[d + f"attn2.to_q.{kind}"]
            o[b + f"cross_attn.kv_linear.{kind}"] = torch.cat([sd[d + f"attn2.to_{n}.{kind}"] for n in "kv"])
            o[b + f"cross_attn.proj.{kind}"] = sd[d + f"attn2.to_out.0.{kind}"]
            o[b + f"mlp.fc1.{kind}"] = sd[d + f"ff.net.0.proj.{kind}"]
            o[b + f"mlp.fc2.{kind}"] = sd[d + f"ff.net.2.{kind}"]
    return o


def write_official(out: Path):
    model = PixArtTransformer2DModel.from_pretrained(out / "transformer")
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    official = to_official(sd, model.config.num_layers)
    g = torch.Generator().manual_seed(2)
    official["y_embedder.y_embedding"] = torch.randn(6, 16, generator=g) / 4.0  # the CFG null caption buffer
    official["pos_embed"] = torch.zeros(1, 16, 32)  # a stale buffer: the loader must recompute it
    torch.save({"state_dict": official}, out / "official.pth")


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[2] == "--official":
    write_official(Path(sys.argv[1]))
