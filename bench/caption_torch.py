#!/usr/bin/env python3
"""The anchor of the local captioning benchmark: transformers' LlavaForConditionalGeneration.generate on
CPU (2 threads, f32, greedy, exactly NEW tokens: min_new_tokens = max_new_tokens) on one image with the
paper's prompt, BATCH copies, best of ROUNDS after a warm-up. Prints JSON like `pixforge bench
caption-local`. Usage: caption_torch.py MODEL_DIR IMAGE BATCH NEW ROUNDS"""
import json
import sys
import time

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

PROMPT = "USER: <image>\nDescribe this image and its style in a very detailed manner ASSISTANT:"


def main(model_dir, image, batch, new, rounds):
    torch.set_num_threads(2)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    proc = AutoProcessor.from_pretrained(model_dir)
    img = Image.open(image).convert("RGB")
    inputs = proc(images=[img] * batch, text=[PROMPT] * batch, return_tensors="pt")
    best = float("inf")
    with torch.inference_mode():
        for r in range(rounds + 1):
            t0 = time.perf_counter()
            out = model.generate(**inputs, do_sample=False, max_new_tokens=new, min_new_tokens=new)
            dt = time.perf_counter() - t0
            assert out.shape[1] - inputs["input_ids"].shape[1] == new
            if r > 0:
                best = min(best, dt)
    print(json.dumps({"batch": batch, "new_tokens": new, "prompt_tokens": inputs["input_ids"].shape[1],
                      "seconds": best, "tokens_per_second": batch * new / best}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
