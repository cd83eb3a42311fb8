#!/usr/bin/env python3
"""A tiny PixArt-α pipeline in the diffusers folder layout and its output, for `pixforge sample` parity.

Writes tests/fixtures/pixart-pipeline/:
- text_encoder/: a transformers `T5EncoderModel` (T5 v1.1 layout: gated-GELU, no tied embeddings;
  2 layers, d_model 16 = the tiny transformer's caption channels, vocabulary 600), random weights;
- tokenizer/tokenizer.json: the tiny T5-layout tokenizer of tests/fixtures/t5;
- vae/: a diffusers `AutoencoderKL` (2 blocks of 8 and 16 channels: 2x downscale), random weights;
- transformer/: a copy of tests/fixtures/pixart-tiny/transformer (8x8 latents: 16x16 pixels);
- golden.safetensors: the initial noise, the prompt embedding and mask, the final latents and the
  decoded image (float, [0, 1], HWC) of `PixArtAlphaPipeline` with DPMSolverMultistepScheduler, 20
  steps, guidance 4.5, negative prompt "" and no caption cleaning / resolution binning.

Usage: python tools/golden/pixart_pipeline.py tests/fixtures   (torch, transformers, diffusers)
"""
import shutil
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel, T5TokenizerFast

PROMPT = "A small red fox sitting in tall grass at sunset, soft light, watercolor style"


def main(fixtures: Path):
    out = fixtures / "pixart-pipeline"
    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(vocab_size=600, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                                 feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                 relative_attention_num_buckets=32, relative_attention_max_distance=128)).eval()
    with torch.no_grad():
        for p in t5.parameters():
            p.normal_(0.0, 0.3)
    t5.save_pretrained(out / "text_encoder", safe_serialization=True)
    t5 = T5EncoderModel.from_pretrained(out / "text_encoder").eval()  # exactly what was saved
    (out / "tokenizer").mkdir(parents=True, exist_ok=True)
    shutil.copy(fixtures / "t5" / "tokenizer.json", out / "tokenizer" / "tokenizer.json")
    tokenizer = T5TokenizerFast(tokenizer_file=str(out / "tokenizer" / "tokenizer.json"), eos_token="</s>",
                                pad_token="<pad>", unk_token="<unk>", extra_ids=0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.normal_(0.0, 0.2)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    vae = AutoencoderKL.from_pretrained(out / "vae").eval()
    if (out / "transformer").exists():
        shutil.rmtree(out / "transformer")
    shutil.copytree(fixtures / "pixart-tiny" / "transformer", out / "transformer")
    transformer = PixArtTransformer2DModel.from_pretrained(out / "transformer").eval()
    pipe = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=t5, vae=vae, transformer=transformer,
                               scheduler=DPMSolverMultistepScheduler())
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        emb, mask, _, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, clean_caption=False)
        kw = dict(prompt=PROMPT, num_inference_steps=20, guidance_scale=4.5, height=16, width=16,
                  latents=noise.clone(), clean_caption=False, use_resolution_binning=False)
        latents = pipe(output_type="latent", **kw).images
        image = pipe(output_type="np", **kw).images
    n = int(mask.sum())
    save_file({"noise": noise, "prompt_embeds": emb[0, :n].contiguous(), "latents": latents.contiguous(),
               "image": torch.from_numpy(image[0]).contiguous()}, str(out / "golden.safetensors"))
    (out / "prompt.txt").write_text(PROMPT + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
