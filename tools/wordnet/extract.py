#!/usr/bin/env python3
"""Derives pixforge's embedded WordNet data from Debian's `wordnet-base` package (WordNet 3.0).

Usage:  apt-get download wordnet-base && dpkg-deb -x wordnet-base_*.deb wn
        python3 tools/wordnet/extract.py wn/usr/share assets/wordnet

Writes (all UTF-8, sorted, reproducible):
  lemmas.tsv      one single-word lemma per line: `lemma<TAB>pos letters`, the parts of speech it has
                  in WordNet (n, v, a, r) ordered by tagged-sense count, most frequent first (ties: more
                  synsets first, then n, v, a, r); collocations (with `_`) are left out.
  exceptions.tsv  `pos<TAB>inflected<TAB>base [base…]` from noun.exc, verb.exc, adj.exc, adv.exc.
  LICENSE         the WordNet 3.0 licence, which must accompany every copy.
"""
import re
import sys
from pathlib import Path

ORDER = "nvar"


def main(share: Path, out: Path) -> None:
    wn = share / "wordnet"
    senses: dict[str, dict[str, tuple[int, int]]] = {}
    for pos, name in zip(ORDER, ["noun", "verb", "adj", "adv"]):
        for line in (wn / f"index.{name}").read_text(encoding="latin-1").splitlines():
            if line.startswith(" "):
                continue  # licence header
            f = line.split()
            lemma, p_cnt = f[0], int(f[3])
            if "_" in lemma:
                continue
            sense_cnt, tagsense_cnt = int(f[4 + p_cnt]), int(f[5 + p_cnt])
            senses.setdefault(lemma, {})[pos] = (tagsense_cnt, sense_cnt)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "lemmas.tsv", "w", encoding="utf-8", newline="\n") as f:
        for lemma in sorted(senses):
            by = senses[lemma]
            letters = sorted(by, key=lambda p: (-by[p][0], -by[p][1], ORDER.index(p)))
            f.write(f"{lemma}\t{''.join(letters)}\n")
    with open(out / "exceptions.tsv", "w", encoding="utf-8", newline="\n") as f:
        for pos, name in zip(ORDER, ["noun", "verb", "adj", "adv"]):
            for line in sorted((wn / f"{name}.exc").read_text(encoding="latin-1").splitlines()):
                words = line.split()
                if len(words) >= 2 and not any("_" in w for w in words):
                    f.write(f"{pos}\t{words[0]}\t{' '.join(words[1:])}\n")
    copyright = (share / "doc/wordnet-base/copyright").read_text(encoding="utf-8")
    m = re.search(r"License: WordNet3.0\n(.*?)\n\n", copyright, re.S)
    body = "\n".join(l[1:] if l.startswith(" ") else l for l in m.group(1).splitlines()).replace("\n.\n", "\n\n")
    (out / "LICENSE").write_text(
        "The files in this folder are derived from WordNet 3.0 (Debian package wordnet-base 1:3.0-37)\n"
        "by tools/wordnet/extract.py. WordNet licence:\n\n" + body.strip() + "\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
