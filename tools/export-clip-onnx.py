#!/usr/bin/env python3
"""Exports a Hugging Face CLIP checkpoint's two towers to ONNX for `pixforge score clip`:

  OUT/vision_model.onnx   `pixel_values` [N, 3, S, S] -> `image_embeds` [N, D]   (--tower)
  OUT/text_model.onnx     `input_ids`, `attention_mask` [N, 77] -> `text_embeds` [N, D]   (--text-tower)
  OUT/tokenizer.json      the checkpoint's CLIP tokenizer (read by --text-tower from beside it)
  OUT/preprocess.json     the image processor's size, crop, mean and std (pass them as --size,
                          --crop, --mean, --std)

The towers are transformers' CLIPVisionModelWithProjection / CLIPTextModelWithProjection, so their
outputs are the projected embeddings CLIP compares (LAION's aesthetic heads read the ViT-L/14 ones).

Usage (on a machine with the weights, e.g. openai/clip-vit-large-patch14 downloaded by the hub):
  python tools/export-clip-onnx.py openai/clip-vit-large-patch14 models/clip-vit-l-14
  pixforge score clip --tower models/clip-vit-l-14/vision_model.onnx \\
      --text-tower models/clip-vit-l-14/text_model.onnx --input shards/ --out scores/
Needs torch, transformers and onnx (this machine's tests use tools/golden/clip_*_tiny.py instead).
"""
import json
import sys
from pathlib import Path

import torch
from transformers import CLIPImageProcessor, CLIPTextModelWithProjection, CLIPTokenizerFast, CLIPVisionModelWithProjection


class Vision(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, pixel_values):
        return self.m(pixel_values=pixel_values).image_embeds


class Text(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask):
        return self.m(input_ids=input_ids, attention_mask=attention_mask).text_embeds


def main(checkpoint: str, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    proc = CLIPImageProcessor.from_pretrained(checkpoint)
    tok = CLIPTokenizerFast.from_pretrained(checkpoint)
    vision = CLIPVisionModelWithProjection.from_pretrained(checkpoint).eval()
    text = CLIPTextModelWithProjection.from_pretrained(checkpoint).eval()
    size = proc.crop_size["height"]
    pixels = torch.zeros(1, 3, size, size)
    torch.onnx.export(Vision(vision), (pixels,), str(out / "vision_model.onnx"), input_names=["pixel_values"],
                      output_names=["image_embeds"], dynamic_axes={"pixel_values": {0: "N"}, "image_embeds": {0: "N"}},
                      opset_version=17, dynamo=False)
    enc = tok(["a photo of a cat"], padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    torch.onnx.export(Text(text), (enc["input_ids"], enc["attention_mask"]), str(out / "text_model.onnx"),
                      input_names=["input_ids", "attention_mask"], output_names=["text_embeds"],
                      dynamic_axes={"input_ids": {0: "N"}, "attention_mask": {0: "N"}, "text_embeds": {0: "N"}},
                      opset_version=17, dynamo=False)
    tok.backend_tokenizer.save(str(out / "tokenizer.json"))
    json.dump({"size": proc.size.get("shortest_edge", size), "crop": size, "mean": proc.image_mean,
               "std": proc.image_std}, open(out / "preprocess.json", "w"), indent=1)
    print(f"wrote {out}/vision_model.onnx, text_model.onnx, tokenizer.json, preprocess.json")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
