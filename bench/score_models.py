#!/usr/bin/env python3
"""A random CLIP vision tower of ViT-B/32's shape (224 px, patch 32, hidden 768, 12 layers, 12 heads,
MLP 3072, projection 512) in transformers' CLIPVisionModelWithProjection, exported to ONNX for
`bench/score.sh`. Usage: python bench/score_models.py OUT.onnx   (torch, transformers, onnx)"""
import sys

import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection


class Tower(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, pixel_values):
        return self.m(pixel_values=pixel_values).image_embeds


torch.manual_seed(0)
cfg = CLIPVisionConfig(image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, projection_dim=512)
model = CLIPVisionModelWithProjection(cfg).eval()
x = torch.randn(2, 3, 224, 224)
torch.onnx.export(Tower(model), (x,), sys.argv[1], input_names=["pixel_values"], output_names=["image_embeds"],
                  dynamic_axes={"pixel_values": {0: "N"}, "image_embeds": {0: "N"}}, opset_version=17, dynamo=False)
