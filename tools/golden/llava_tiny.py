#!/usr/bin/env python3
"""A tiny random LLaVA-1.5 (and, with --next, LLaVA-1.6 / LLaVA-NeXT) in the llava-hf layout (transformers' LlavaForConditionalGeneration saved by
save_pretrained: config.json, model.safetensors, tokenizer.json + tokenizer_config.json,
preprocessor_config.json, processor_config.json / chat_template), and transformers' outputs for one
bundled photo and the paper's prompt.

The real llava-hf tokenizer (Llama's SentencePiece BPE) cannot be downloaded here, so this script trains a
BPE of the same layout (Metaspace "▁" prepended to the first word, `<s>` prepended by the post-processor,
`<unk>`/`<s>`/`</s>` = 0/1/2, `<image>` and `<pad>` added as special tokens) on the bundled COCO captions.

Model: CLIP ViT (56 px, patch 14 → 16 image tokens, hidden 32, 3 layers), projector 32→48→48 (GELU),
Llama (hidden 48, 2 layers, 4 heads, 2 KV heads, intermediate 96), vision_feature_layer −2, strategy
"default" (CLS dropped), as llava-1.5-7b-hf has them.

--next: LlavaNextForConditionalGeneration with the same parts plus `image_newline`, any-resolution tiling
over pinpoints scaled to the 56 px tower ([[56,112],[112,56],[112,112],[168,56],[56,168]]) and
LlavaNextImageProcessor; files are named llava_next_tiny*, `pixel_values` is [1, patches, 3, 56, 56] and
`image_sizes` [1, 2] is added.

Writes into OUT:
  llava_tiny/                 the model folder
  llava_tiny_io.safetensors   `input_ids` [1, L] (the processor's, image tokens expanded), `pixel_values`
                              [1, 3, 56, 56] (CLIPImageProcessor's, PIL bicubic), `logits` [1, V] (the
                              first generated position), `greedy` [20] (20 argmax tokens, EOS not special)
  llava_tiny.json             the prompt text, the photo and the greedy tokens' text
Usage: python tools/golden/llava_tiny.py assets/demo assets/demo tests/fixtures/golden [--next]
       (torch, transformers 5, tokenizers, pillow)"""
import json
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration, LlavaNextConfig, LlavaNextForConditionalGeneration,
                          LlavaNextImageProcessor, LlavaNextProcessor, LlavaProcessor, PreTrainedTokenizerFast)

PROMPT = "USER: <image>\nDescribe this image and its style in a very detailed manner ASSISTANT:"
PHOTO = "chelsea.jpg"


def tokenizer(captions: Path) -> PreTrainedTokenizerFast:
    coco = json.loads((captions / "coco_val2014_captions_1000.json").read_text())
    texts = [c["caption"] for c in coco] + [PROMPT.replace("<image>", "")] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens(["<image>", "<pad>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", model_max_length=4096)


PINPOINTS = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]


def main(captions: Path, photos: Path, out: Path, nxt: bool) -> None:
    torch.manual_seed(0)
    tok = tokenizer(captions)
    image_token = tok.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(image_size=56, patch_size=14, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=3, num_attention_heads=4, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       bos_token_id=1, eos_token_id=2, pad_token_id=tok.pad_token_id)
    common = dict(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=image_token,
                  vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu")
    if nxt:
        cfg = LlavaNextConfig(image_grid_pinpoints=PINPOINTS, **common)
        model = LlavaNextForConditionalGeneration(cfg).eval()
    else:
        cfg = LlavaConfig(image_seq_length=16, **common)
        model = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # larger than the default init so that the logits are not all alike
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.08)
        if nxt:
            model.model.image_newline.normal_(0.0, 0.5)
    sizes = dict(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    if nxt:
        image_processor = LlavaNextImageProcessor(image_grid_pinpoints=PINPOINTS, **sizes)
        processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                                       vision_feature_select_strategy="default", num_additional_image_tokens=1)
    else:
        image_processor = CLIPImageProcessor(**sizes)
        processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1)
    name = "llava_next_tiny" if nxt else "llava_tiny"
    folder = out / name
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    image = Image.open(photos / PHOTO).convert("RGB")
    inputs = processor(images=image, text=PROMPT, return_tensors="pt")
    ids, pixels = inputs["input_ids"], inputs["pixel_values"]
    extra = {"image_sizes": inputs["image_sizes"]} if nxt else {}
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels, **extra).logits[:, -1].float()
        seq, greedy = ids, []
        for _ in range(20):
            token = model(input_ids=seq, pixel_values=pixels, **extra).logits[0, -1].argmax().item()
            greedy.append(token)
            seq = torch.cat([seq, torch.tensor([[token]])], dim=1)
    tensors = {"input_ids": ids.to(torch.int64).contiguous(), "pixel_values": pixels.contiguous(),
               "logits": logits.contiguous(), "greedy": torch.tensor(greedy, dtype=torch.int64)}
    if nxt:
        tensors["image_sizes"] = inputs["image_sizes"].to(torch.int64).contiguous()
    save_file(tensors, str(out / f"{name}_io.safetensors"))
    meta = {"prompt": PROMPT, "photo": PHOTO, "greedy_text": tok.decode(greedy),
            "input_ids": ids[0].tolist()}
    (out / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), "--next" in sys.argv[4:])
