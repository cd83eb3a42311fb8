#!/usr/bin/env python3
"""A T5 encoder of T5-v1.1-XXL's width (d_model 4096; 1 layer, 64 heads of 64, d_ff 256, random
weights) in transformers' layout, with the repository's T5 tokenizer, so that `pixforge cache t5` writes
4096-wide caption embeddings as the real XXL would for `bench/train.sh`.
Usage: python bench/train_data.py OUT_DIR TOKENIZER_JSON"""
import shutil
import sys

import torch
from transformers import T5Config, T5EncoderModel

out, tokenizer = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
cfg = T5Config(vocab_size=600, d_model=4096, d_kv=64, d_ff=256, num_layers=1, num_heads=64,
               feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
               relative_attention_max_distance=128, is_encoder_decoder=False, use_cache=False,
               tie_word_embeddings=False)
T5EncoderModel(cfg).save_pretrained(out)
shutil.copy(tokenizer, f"{out}/tokenizer.json")
