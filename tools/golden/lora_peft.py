#!/usr/bin/env python3
"""LoRA and DoRA adapters made by peft on the tiny PixArt-α transformer (tests/fixtures/pixart-tiny),
in peft's own format, with the outputs pixforge must reproduce (tests/lora.rs).

For each of `lora` and `dora`: `get_peft_model(transformer, LoraConfig(r=4, lora_alpha=8,
target_modules=[self- and cross-attention q/k/v/out, the feed-forward, the caption projection, the
adaLN linear], use_dora=...))`, every lora_B (zero at initialisation) and DoRA magnitude drawn at
random so the adapter changes the output, then `save_pretrained` (adapter_config.json +
adapter_model.safetensors, the keys `get_peft_model_state_dict` gives), the adapted model's output on
the inputs of tests/fixtures/pixart-tiny/io.safetensors, and `merge_and_unload()`'s weights.

Writes tests/fixtures/lora/{lora,dora}/ (the adapter folders), tests/fixtures/lora/{lora,dora}.safetensors
(`output`, and `merged.{name}` for each weight an adapter changes).
Usage: /tmp/torchvenv/bin/python tools/golden/lora_peft.py   (torch 2.15, diffusers 0.42.1, peft 0.21.2)
"""
from pathlib import Path

import torch
from diffusers import PixArtTransformer2DModel
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests/fixtures/pixart-tiny"
OUT = ROOT / "tests/fixtures/lora"
TARGETS = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
           "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "caption_projection.linear_1",
           "caption_projection.linear_2", "adaln_single.linear"]

io = load_file(str(TINY / "io.safetensors"))
for name, dora in [("lora", False), ("dora", True)]:
    torch.manual_seed(21 if dora else 20)
    base = PixArtTransformer2DModel.from_pretrained(TINY / "transformer").eval()
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, use_dora=dora, lora_dropout=0.0)
    model = get_peft_model(base, config)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.2)
            elif "lora_magnitude_vector" in n:
                p.mul_(1.0 + 0.3 * torch.rand_like(p))
    model.save_pretrained(OUT / name)
    (OUT / name / "README.md").unlink(missing_ok=True)  # peft's model-card template
    with torch.no_grad():
        output = model(io["latents"], encoder_hidden_states=io["caption"], timestep=io["timestep"],
                       encoder_attention_mask=io["mask"], added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                       return_dict=False)[0]
    merged = model.merge_and_unload()
    plain = PixArtTransformer2DModel.from_pretrained(TINY / "transformer").state_dict()
    out = {"output": output.contiguous()}
    for k, v in merged.state_dict().items():
        if not torch.equal(v, plain[k]):
            out[f"merged.{k}"] = v.contiguous()
    save_file(out, str(OUT / f"{name}.safetensors"))
    print(name, len(out) - 1, "merged weights;", sorted(load_file(str(OUT / name / "adapter_model.safetensors")))[:3])
