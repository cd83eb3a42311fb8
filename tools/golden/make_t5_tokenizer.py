#!/usr/bin/env python3
"""Makes a tiny T5-layout tokenizer.json and golden token counts for the density report's T5 statistics.

The real T5 v1.1 tokenizer (google/t5-v1_1-xxl, used by PixArt-α) is a SentencePiece Unigram model
saved by `transformers` as tokenizer.json with: a Metaspace pre-tokenizer (replacement "▁", prepend
scheme "always") after whitespace splitting, a TemplateProcessing post-processor that appends "</s>",
and the special tokens <pad>=0, </s>=1, <unk>=2. We cannot download it, so this script trains a
Unigram model of the same layout on the bundled COCO captions (vocabulary 600) with the Python
`tokenizers` library (the reference implementation) and records its token counts.

Usage:  python3 -m venv /tmp/t5venv && /tmp/t5venv/bin/pip install tokenizers==0.22.1
        /tmp/t5venv/bin/python tools/golden/make_t5_tokenizer.py assets/demo tests/fixtures/t5
"""
import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers, Regex


def main(captions_dir: Path, out: Path) -> None:
    coco = json.loads((captions_dir / "coco_val2014_captions_1000.json").read_text())
    texts = [c["caption"] for c in coco]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=600, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", shrinking_factor=0.75
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    # Golden counts: with the end-of-sequence token, as PixArt-α's T5 call sees them.
    long = " ".join(texts[:40])  # one long caption, past the 120-token limit
    samples = texts[:50] + [long, "", "A caf\u00e9 with 東京 signs and emoji 😀."]
    golden = [{"text": t, "tokens": len(tok.encode(t).ids)} for t in samples]
    (out / "golden_counts.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
