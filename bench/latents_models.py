#!/usr/bin/env python3
"""Random-weight models in the real architectures for `bench/latents.sh`: the SD VAE (sd-vae-ft-ema's
config: 4 blocks of 128/256/512/512 channels, 2 layers each, 32 groups) in diffusers' layout, and a T5
v1.1 encoder at t5-v1_1-base size (12 layers, d_model 768, 12 heads, d_ff 2048, gated GELU) in
transformers' layout. Usage: python bench/latents_models.py OUT_DIR"""
import sys

import torch
from diffusers import AutoencoderKL
from transformers import T5Config, T5EncoderModel

out = sys.argv[1]
torch.manual_seed(0)
AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4,
              norm_num_groups=32, sample_size=512).save_pretrained(f"{out}/vae")
cfg = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12,
               feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
               relative_attention_max_distance=128, is_encoder_decoder=False, use_cache=False,
               tie_word_embeddings=False)
T5EncoderModel(cfg).save_pretrained(f"{out}/t5")
