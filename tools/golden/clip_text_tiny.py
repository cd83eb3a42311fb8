#!/usr/bin/env python3
"""A tiny random CLIP text tower (transformers' CLIPTextModelWithProjection: hidden 32, 2 layers,
2 heads, 77 positions, projection 16) with a tiny CLIP-format tokenizer, exported to ONNX, and
PyTorch's text embeddings of the demo's alt-texts and of two longer captions, for tests/score.rs.

The tokenizer is a byte-level BPE in the layout of CLIP's `tokenizer.json` (NFC, whitespace folded,
lower-cased; CLIP's split pattern; `</w>` word ends; `<|startoftext|>` … `<|endoftext|>` around each
text; `<|endoftext|>` also the padding), trained on the COCO captions the demo bundles (600 tokens),
so the model's vocabulary stays small. Texts are tokenised by `CLIPTokenizerFast` over it (padding to
77, truncation at 77 with `<|endoftext|>` kept last) and embedded by the model, which pools at the
first `<|endoftext|>`.

Writes tests/fixtures/golden/clip_text_tiny/{tokenizer.json,text_model.onnx} and
tests/fixtures/golden/clip_text_tiny_io.safetensors (`input_ids`, `attention_mask`, `text_embeds`, and
`demo_cosine`: each demo photo's image embedding from clip_tiny_io.safetensors against its alt-text's)
with clip_text_tiny_io.json (the texts, in order).
Usage: /tmp/torchvenv/bin/python tools/golden/clip_text_tiny.py   (torch 2.15, transformers, tokenizers, onnx)
"""
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizerFast

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/golden"
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

coco = json.load(open(ROOT / "assets/demo/coco_val2014_captions_1000.json"))
corpus = [a["caption"] for a in coco]
tok = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
tok.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
    pre_tokenizers.ByteLevel(add_prefix_space=False),
])
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|startoftext|>", "<|endoftext|>"],
                              end_of_word_suffix="</w>", initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(corpus, trainer)
bos, eos = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
tok.post_processor = processors.RobertaProcessing(("<|endoftext|>", eos), ("<|startoftext|>", bos),
                                                  add_prefix_space=False, trim_offsets=False)
(OUT / "clip_text_tiny").mkdir(parents=True, exist_ok=True)
tok.save(str(OUT / "clip_text_tiny/tokenizer.json"))
fast = CLIPTokenizerFast(tokenizer_file=str(OUT / "clip_text_tiny/tokenizer.json"), bos_token="<|startoftext|>",
                         eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>",
                         model_max_length=77)

texts = [line.split("\t", 1)[1].strip() for line in open(ROOT / "assets/demo/captions.txt") if "\t" in line]
texts.append(" ".join(corpus[:12]))  # longer than 77 tokens: truncated with <|endoftext|> last
texts.append("A  Cat,  SITTING on a Sofa!")  # case and spacing folded
enc = fast(texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")

torch.manual_seed(0)
cfg = CLIPTextConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=77, projection_dim=16,
                     bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
model = CLIPTextModelWithProjection(cfg).eval()
with torch.no_grad():
    emb = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).text_embeds


class Tower(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask):
        return self.m(input_ids=input_ids, attention_mask=attention_mask).text_embeds


torch.onnx.export(Tower(model), (enc["input_ids"], enc["attention_mask"]), str(OUT / "clip_text_tiny/text_model.onnx"),
                  input_names=["input_ids", "attention_mask"], output_names=["text_embeds"],
                  dynamic_axes={"input_ids": {0: "N"}, "attention_mask": {0: "N"}, "text_embeds": {0: "N"}},
                  opset_version=17, dynamo=False)
# The image–text agreement of each demo photo (the vision tower of clip_tiny.py, on the image
# processor's pixels) with its alt-text, as PyTorch computes it.
from safetensors.torch import load_file  # noqa: E402

images = load_file(str(OUT / "clip_tiny_io.safetensors"))["image_embeds"]
demo_cosine = torch.nn.functional.cosine_similarity(images, emb[:6], dim=-1)
save_file({"input_ids": enc["input_ids"].contiguous(), "attention_mask": enc["attention_mask"].contiguous(),
           "text_embeds": emb.contiguous(), "demo_cosine": demo_cosine.contiguous()},
          str(OUT / "clip_text_tiny_io.safetensors"))
json.dump({"texts": texts, "max_tokens": 77}, open(OUT / "clip_text_tiny_io.json", "w"), indent=1)
print(enc["input_ids"][:2, :12], enc["attention_mask"].sum(1), emb[:, :3])
