#!/usr/bin/env python3
"""Golden caption cleaning and T5 token ids, as PixArt-α's T5Embedder computes them.

Adds T5's 100 sentinel tokens (`<extra_id_0>` … `<extra_id_99>`, highest id first, as in the real
vocabulary) to the tiny T5-layout tokenizer of tests/fixtures/t5 (made by make_t5_tokenizer.py;
Unigram, <pad>=0, </s>=1, <unk>=2), then, for every prompt of PixArt-α's sample list and a set of
hostile strings: the text after diffusers' `PixArtAlphaPipeline._text_preprocessing(clean_caption=True)`
(DeepFloyd IF's clean_caption applied twice, exactly PixArt-α's T5Embedder.text_preprocessing), and
the token ids T5TokenizerFast gives when called as PixArt-α calls it (max_length=120,
padding='max_length', truncation=True, add_special_tokens=True), unpadded by the attention mask.

Usage:  /tmp/torchvenv/bin/pip install torch transformers diffusers ftfy beautifulsoup4
        /tmp/torchvenv/bin/python tools/golden/t5_prompts.py tests/data/prompts/pixart_alpha_samples.txt
"""
import json
import sys
from pathlib import Path

from diffusers import PixArtAlphaPipeline
from tokenizers import AddedToken, Tokenizer
from transformers import T5TokenizerFast

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = [
    "Check https://example.com/page?id=3 and www.site.org/x for <b>Deals</b> &amp; more!",
    "<person> standing by a car",
    "@john_doe posted: a photo of 東京タワー at night ㈱ ㍿ 㐀",
    "A “quoted” ‘text’ — with – dashes ― and «guillemets» `back` ´acute´ ¨",
    "Item #123 and #123456, code 1234567, file holiday_photo.jpg and IMG.PNG",
    "this-is-my-cute-cat_photo_here",
    "Free shipping worldwide! Click for details. Download free PNG images page 12",
    "jc6640 jc6640vc 6640vc231 j2d1a2a 1920x1080 3.5×2 10х20",
    "ＬＯＵＤ　ＮＯＩＳＥＳ ﬁne ﬂowers ｶﾀｶﾅ",
    "192.168.0.1 server at 12:30   ",
    "A%20cat+on%20a+mat %E2%9C%93 %ZZ %C3",
    "'quoted caption'",
    "...and then. . . it ended,finally.ok/yes",
    "***SALE*** {50%} [new] (old) | x \\ y / z ~ § ¿ ¡ ® © ™ • · º ½",
    "line one\\nline two",
    "tom &amp;amp; jerry &quot;hi&quot; &lt;3 &copy; &eacute;t&eacute; &#233; &#x27;x&#x27; &notit;",
    "a caption with 'single' and \"double\" quotes",
    "",
    "   ",
    "Ⅻ century manuscript, naïve café, Straße, İstanbul, ΣΊΣΥΦΟΣ",
    "\tTabs\tand\nnewlines\r\nhere",
    ".hidden",
    "-leading dash and trailing comma,",
    "<script>alert(1)</script>a dog <!-- note --> on a <a href=\"x>y\">rug</a>",
    "emoji 😀 party 🎉 with a 🐱",
    "price: 5 : 10, ratio 3:4 , a , b .c",
    "x < y and y > z, a<3 b",
    "<extra_id_0> sentinel <extra_id_99> tokens",
    "a\x00b\x07c\x1b[31mred\x1b[0m \ufeffbom \u2028sep \x85nel \x93smart\x94",
]


def main(prompts_file: Path) -> None:
    base = Tokenizer.from_file(str(ROOT / "tests/fixtures/t5/tokenizer.json"))
    if base.token_to_id("<extra_id_0>") is None:
        base.add_special_tokens([AddedToken(f"<extra_id_{i}>", special=True) for i in reversed(range(100))])
    out = ROOT / "assets/t5"
    out.mkdir(parents=True, exist_ok=True)
    base.save(str(out / "tokenizer.json"))
    tok = T5TokenizerFast(tokenizer_file=str(out / "tokenizer.json"), eos_token="</s>", pad_token="<pad>",
                          unk_token="<unk>", extra_ids=0)
    assert tok.convert_tokens_to_ids("<extra_id_0>") == base.get_vocab_size() - 1
    pipe = PixArtAlphaPipeline.__new__(PixArtAlphaPipeline)
    prompts = [p for p in prompts_file.read_text(encoding="utf-8").splitlines() if p.strip()]
    long = " ".join(prompts[:6])  # past 120 tokens
    golden = []
    for text in prompts + HOSTILE + [long]:
        cleaned = pipe._text_preprocessing(text, clean_caption=True)[0]
        enc = tok(cleaned, max_length=120, padding="max_length", truncation=True, return_attention_mask=True,
                  add_special_tokens=True)
        assert len(enc["input_ids"]) == 120
        ids = [i for i, m in zip(enc["input_ids"], enc["attention_mask"]) if m == 1]
        golden.append({"text": text, "cleaned": cleaned, "ids": ids})
    path = ROOT / "tests/fixtures/golden/t5_prompts.json"
    path.write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{len(golden)} captions -> {path}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
