#!/usr/bin/env python3
"""The crate's import graph between files, from its `crate::`, `super::` and `self::` paths (and
`pixforge::` in the binary), checked for the two rules of the layout (docs/architecture.md):

1. no cycle between files (a file that reaches itself through other files' imports);
2. no arrow from a lower floor to a higher one (floor 1: the shared layer; floor 2: the stages;
   floor 3: the pipeline, the demo and the CLI).

Imports between two stages (peers on floor 2) are listed as warnings; `--strict` makes them errors.

Usage: python3 tools/import-graph.py [--strict] [--dot FILE] [--quiet]
Prints every violation and exits 1 if there is one; `--dot` writes the module-level graph for graphviz.
Only the standard library is needed. Paths inside comments and string literals are ignored, and so
are unit-test modules (`#[cfg(test)] mod … { … }`): a test may build its fixture with a sibling.
"""
import os
import re
import sys
from collections import defaultdict

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

# The floor of each top-level module of `src/` (the crate root, `lib.rs`, declares them).
FLOORS = {
    "shards": 1, "config": 1, "store": 1, "image": 1, "nn": 1, "hub": 1, "rng": 1, "device": 1,
    "ingest": 2, "caption": 2, "density": 2, "latents": 2, "score": 2, "train": 2, "browse": 2,
    "models": 3, "bench": 3, "pipeline": 3, "demo": 3, "main": 3,
}
STAGES = {m for m, f in FLOORS.items() if f == 2}


def module_of_file(path):
    """`src/a/b.rs` -> ["a", "b"]; `src/a/mod.rs` -> ["a"]; `src/lib.rs` -> []."""
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] == "mod" or rel == ["lib"]:
        rel = rel[:-1]
    return rel


def file_of_module(parts):
    """The file that defines module `parts`, or None."""
    if not parts:
        return os.path.join(ROOT, "lib.rs")
    for cand in (os.path.join(ROOT, *parts) + ".rs", os.path.join(ROOT, *parts, "mod.rs")):
        if os.path.isfile(cand):
            return cand
    return None


def strip_comments_and_strings(text):
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == "r" and re.match(r'r#*"', text[i:i + 8]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r"r(#*)\"", text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            i = n if end < 0 else end + 1 + len(hashes)
            out.append('""')
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]):
            m = re.match(r"'(\\.|[^\\'])'", text[i:i + 4])
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def strip_test_modules(text):
    """The text without the bodies of `#[cfg(test)] mod name { ... }` blocks."""
    out, pos = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < pos:
            continue
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        out.append(text[pos:m.start()])
        pos = i
    out.append(text[pos:])
    return "".join(out)


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ["a::b", "a::c::d", "a::c::e"]."""
    tree = re.sub(r"\s+", "", tree)
    depth, start = 0, None
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                prefix, inner, rest = tree[:start], tree[start + 1:i], tree[i + 1:]
                items, d, cur = [], 0, ""
                for c2 in inner:
                    if c2 == "," and d == 0:
                        items.append(cur)
                        cur = ""
                        continue
                    d += c2 == "{"
                    d -= c2 == "}"
                    cur += c2
                items.append(cur)
                res = []
                for it in items:
                    if it:
                        res.extend(expand_use(prefix + it + rest))
                return res
    return [tree.split(" as ")[0]]


def resolve(path, here):
    """The file a path like `crate::a::b::Item` names, as seen from module `here`."""
    parts = [p for p in re.split(r"::", path) if p]
    if not parts:
        return None
    if parts[0] in ("crate", "pixforge"):
        base, parts = [], parts[1:]
    elif parts[0] in ("super", "self"):
        base = list(here)
        while parts and parts[0] in ("super", "self"):
            if parts[0] == "super":
                base = base[:-1]
            parts = parts[1:]
    else:
        return None
    parts = [p.split(" as ")[0] for p in parts if p not in ("*",)]
    for k in range(len(parts), -1, -1):
        f = file_of_module(base + parts[:k])
        if f:
            return f
    return None


def edges():
    graph = defaultdict(set)
    files = []
    for d, _, names in os.walk(ROOT):
        files += [os.path.join(d, n) for n in names if n.endswith(".rs")]
    for f in sorted(files):
        text = strip_test_modules(strip_comments_and_strings(open(f, encoding="utf-8").read()))
        here = module_of_file(f)
        if os.path.basename(f) == "main.rs":
            here = ["main"]
        paths = []
        for m in re.finditer(r"\buse\s+([^;]+);", text):
            paths += expand_use(m.group(1))
        for m in re.finditer(r"(?<![\w:])((?:crate|super|self|pixforge)(?:::\w+)+)", text):
            paths.append(m.group(1))
        for p in paths:
            target = resolve(p, here)
            if target and os.path.abspath(target) != os.path.abspath(f):
                graph[os.path.abspath(f)].add(os.path.abspath(target))
    return graph


def top(f):
    m = module_of_file(f)
    if os.path.basename(f) == "main.rs":
        return "main"
    return m[0] if m else "lib"


def cycles(graph):
    """Strongly connected components of more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def main():
    args = sys.argv[1:]
    graph = edges()
    rel = lambda f: os.path.relpath(f, os.path.join(ROOT, ".."))
    problems, peers = [], []
    for comp in cycles(graph):
        problems.append("cycle between files: " + " <-> ".join(rel(f) for f in comp))
    for a, targets in sorted(graph.items()):
        for b in sorted(targets):
            ta, tb = top(a), top(b)
            if ta == "lib" or tb == "lib" or ta == tb:
                continue
            fa, fb = FLOORS.get(ta), FLOORS.get(tb)
            if fa is None or fb is None:
                problems.append(f"{rel(a)} -> {rel(b)}: module {ta if fa is None else tb} has no floor in tools/import-graph.py")
            elif fb > fa:
                problems.append(f"upward import (floor {fa} -> {fb}): {rel(a)} -> {rel(b)}")
            elif fa == 2 and fb == 2:
                peers.append(f"stage imports another stage: {rel(a)} -> {rel(b)}")
    if "--dot" in args:
        path = args[args.index("--dot") + 1]
        mods = defaultdict(set)
        for a, targets in graph.items():
            for b in targets:
                if top(a) != top(b) and "lib" not in (top(a), top(b)):
                    mods[top(a)].add(top(b))
        with open(path, "w") as fh:
            fh.write("digraph pixforge {\n  rankdir=TB;\n")
            for a in sorted(mods):
                for b in sorted(mods[a]):
                    fh.write(f'  "{a}" -> "{b}";\n')
            fh.write("}\n")
    if "--strict" in args:
        problems += peers
    else:
        for p in peers:
            print("warning: " + p)
    for p in problems:
        print(p)
    n_edges = sum(len(t) for t in graph.values())
    if "--quiet" not in args or problems:
        print(f"{len(graph)} files with imports, {n_edges} edges between files: {len(problems)} problem(s), "
              f"{0 if '--strict' in args else len(peers)} warning(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
