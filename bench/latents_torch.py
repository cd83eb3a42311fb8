#!/usr/bin/env python3
"""The PyTorch anchor of `bench/latents.sh`: diffusers' AutoencoderKL encoder (posterior mean and std)
and transformers' T5EncoderModel, on CPU with the same thread count as pixforge.

  python bench/latents_torch.py MODELS_DIR PROMPTS_FILE TOKENIZER_JSON THREADS ROUNDS [t5|vae]

MODELS_DIR holds vae/ (the SD VAE architecture) and t5/ (t5-v1_1-base architecture), made by
`bench/latents.sh` with random weights. Prints one JSON object.
"""
import json
import sys
import time

import torch
from diffusers import AutoencoderKL
from transformers import T5EncoderModel, T5TokenizerFast


def best(fn, rounds):
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(models, prompts_file, tokenizer_json, threads, rounds, only=None):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out = {"threads": threads, "torch": torch.__version__}
    vae = AutoencoderKL.from_pretrained(f"{models}/vae").eval()
    with torch.inference_mode():
        for size, n in ([] if only == "t5" else [(256, 4), (512, 2)]):
            x = torch.rand(n, 3, size, size) * 2 - 1

            def enc():
                for i in range(n):  # one image at a time, as the cache feeds it
                    d = vae.encode(x[i:i + 1]).latent_dist
                    _ = (d.mean, d.std)

            out[f"vae_{size}_images_per_s"] = n / best(enc, rounds)

            def enc_batch():
                d = vae.encode(x).latent_dist
                _ = (d.mean, d.std)

            out[f"vae_{size}_batch{n}_images_per_s"] = n / best(enc_batch, rounds)
    if only == "vae":
        print(json.dumps(out))
        return
    t5 = T5EncoderModel.from_pretrained(f"{models}/t5").eval()
    tok = T5TokenizerFast(tokenizer_file=tokenizer_json, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                          extra_ids=0)
    from diffusers import PixArtAlphaPipeline
    clean = PixArtAlphaPipeline.__new__(PixArtAlphaPipeline)._text_preprocessing
    prompts = [p for p in open(prompts_file, encoding="utf-8").read().splitlines() if p.strip()]
    with torch.inference_mode():
        def official(batch=8):
            # As PixArt-α's T5Embedder: cleaned twice, padded to 120, with the attention mask.
            for i in range(0, len(prompts), batch):
                texts = clean(prompts[i:i + batch], clean_caption=True)
                enc = tok(texts, max_length=120, padding="max_length", truncation=True,
                          add_special_tokens=True, return_tensors="pt")
                t5(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state

        out["t5_official_captions_per_s"] = len(prompts) / best(official, rounds)

        def longest(batch=8):
            # A stronger anchor: padded only to the batch's longest caption.
            for i in range(0, len(prompts), batch):
                texts = clean(prompts[i:i + batch], clean_caption=True)
                enc = tok(texts, max_length=120, padding="longest", truncation=True,
                          add_special_tokens=True, return_tensors="pt")
                t5(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state

        out["t5_longest_captions_per_s"] = len(prompts) / best(longest, rounds)
        lengths = [len(tok(t, max_length=120, truncation=True).input_ids) for t in clean(prompts, clean_caption=True)]
        out["t5_tokens_mean"] = sum(lengths) / len(lengths)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), *sys.argv[6:7])
