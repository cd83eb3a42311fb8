#!/usr/bin/env python3
"""A tiny random CLIP vision tower (transformers' CLIPVisionModelWithProjection: 32 px images, patch 8,
hidden 32, 2 layers, 2 heads, projection 16) exported to ONNX, with PyTorch's image embeddings of the
bundled photos preprocessed as CLIPImageProcessor does (shortest side → 32 bicubic, center crop 32,
/255, CLIP mean/std). Writes:
  clip_tiny.onnx              input `pixel_values` [N,3,32,32] → output `image_embeds` [N,16]
  clip_tiny_head.onnx         a random Linear(16, 1) score head: `embedding` [N,16] → `score` [N,1]
  pixel_tiny_head.onnx/.json  a random pixel head (conv, pooling, 2 logits) and its preprocessing
  clip_tiny_io.safetensors    `pixel_values` (the processor's output), `image_embeds` (PyTorch's),
                              `head_scores` (the head on those embeddings) and `pixel_head_scores`
                              (softmax probability of the pixel head's second class)
  clip_tiny.json              the preprocessing (size, crop, mean, std) and the photo order
Usage: python tools/golden/clip_tiny.py assets/demo tests/fixtures/golden   (torch, transformers, onnx, pillow)"""
import json
import sys

import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

PHOTOS = ["astronaut.jpg", "camera.jpg", "chelsea.jpg", "coffee.jpg", "hubble_deep_field.jpg", "rocket.jpg"]


def main(photos, out):
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, projection_dim=16)
    model = CLIPVisionModelWithProjection(cfg).eval()
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    images = [Image.open(f"{photos}/{p}").convert("RGB") for p in PHOTOS]
    pixels = proc(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        emb = model(pixel_values=pixels).image_embeds

    class Tower(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m(pixel_values=pixel_values).image_embeds

    torch.onnx.export(Tower(model), (pixels,), f"{out}/clip_tiny.onnx", input_names=["pixel_values"],
                      output_names=["image_embeds"], dynamic_axes={"pixel_values": {0: "N"}, "image_embeds": {0: "N"}},
                      opset_version=17, dynamo=False)
    head = torch.nn.Linear(16, 1)
    torch.onnx.export(head, (emb,), f"{out}/clip_tiny_head.onnx", input_names=["embedding"], output_names=["score"],
                      dynamic_axes={"embedding": {0: "N"}, "score": {0: "N"}}, opset_version=17, dynamo=False)
    with torch.no_grad():
        scores = head(emb)[:, 0]
    # A pixel head (a watermark-classifier stand-in): conv, global pooling, 2 logits.
    pixel_head = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                     torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    torch.onnx.export(pixel_head, (pixels,), f"{out}/pixel_tiny_head.onnx", input_names=["pixel_values"],
                      output_names=["logits"], dynamic_axes={"pixel_values": {0: "N"}, "logits": {0: "N"}},
                      opset_version=17, dynamo=False)
    json.dump({"size": 32, "crop": 32, "mean": proc.image_mean, "std": proc.image_std},
              open(f"{out}/pixel_tiny_head.json", "w"), indent=1)
    with torch.no_grad():
        pixel_scores = pixel_head(pixels).softmax(-1)[:, 1]
    save_file({"pixel_values": pixels.contiguous(), "image_embeds": emb.contiguous(), "head_scores": scores.contiguous(),
               "pixel_head_scores": pixel_scores.contiguous()}, f"{out}/clip_tiny_io.safetensors")
    json.dump({"photos": PHOTOS, "size": 32, "crop": 32, "resample": "bicubic",
               "mean": proc.image_mean, "std": proc.image_std}, open(f"{out}/clip_tiny.json", "w"), indent=1)
    print(emb[:, :4])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
