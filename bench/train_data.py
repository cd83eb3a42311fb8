#!/usr/bin/env python3
"""Inputs of `bench/train.sh`.

`t5 OUT TOKENIZER`: a T5 encoder of T5-v1.1-XXL's width (d_model 4096; 1 layer, 64 heads of 64, d_ff 256,
random weights) in transformers' layout with the repository's T5 tokenizer, so that `pixforge cache t5`
writes 4096-wide caption embeddings as the real XXL would.
`photos OUT IMAGES PROMPTS`: 24 distinct photos (6 shared photos in 4 orientations) with a prompt each."""
import shutil
import sys


def t5(out, tokenizer):
    import torch
    from transformers import T5Config, T5EncoderModel
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=600, d_model=4096, d_kv=64, d_ff=256, num_layers=1, num_heads=64,
                   feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                   relative_attention_max_distance=128, is_encoder_decoder=False, use_cache=False,
                   tie_word_embeddings=False)
    T5EncoderModel(cfg).save_pretrained(out)
    shutil.copy(tokenizer, f"{out}/tokenizer.json")


def photos(out, images, prompts):
    import os
    from PIL import Image
    os.makedirs(out, exist_ok=True)
    lines = [l.strip() for l in open(prompts) if l.strip()]
    names = ["astronaut.png", "chelsea.png", "coffee.png", "camera.png", "rocket.jpg", "hubble_deep_field.jpg"]
    ops = [lambda im: im, lambda im: im.transpose(Image.FLIP_LEFT_RIGHT),
           lambda im: im.transpose(Image.FLIP_TOP_BOTTOM), lambda im: im.transpose(Image.ROTATE_180)]
    i = 0
    for n in names:
        im = Image.open(f"{images}/{n}").convert("RGB")
        for op in ops:
            op(im).save(f"{out}/img_{i:02d}.png")
            open(f"{out}/img_{i:02d}.txt", "w").write(lines[i % len(lines)])
            i += 1


if __name__ == "__main__":
    {"t5": t5, "photos": photos}[sys.argv[1]](*sys.argv[2:])
