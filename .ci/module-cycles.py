#!/usr/bin/env python3
"""Lists the `crate::` / `super::` edges between the crate's modules (one module per file) and
fails when they form a cycle: a module must not import one that imports it back.

A path like `crate::auth::jwks::KeySet` is an edge to the longest module it names
(`auth::jwks`); `use crate::{a, b::c}` groups are expanded. A parent's `mod child;` is not an
edge; a child naming its parent (`super::X` in a submodule) is. Test modules
(`#[cfg(test)] mod tests`) are skipped: they may use anything. Usage: .ci/module-cycles.py [-v]
"""
import os, re, sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return "::".join(rel)

def strip(text):
    text = re.sub(r"//[^\n]*", "", text)  # comments (also doc comments)
    text = re.sub(r'"(\\.|[^"\\])*"', '""', text)  # string literals
    # drop `#[cfg(test)] mod tests { ... }` (to the end of the file, where they live)
    m = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
    return text[: m.start()] if m else text

def expand(prefix, body):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]"""
    out, depth, cur = [], 0, ""
    for ch in body + ",":
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            cur = cur.strip()
            if cur:
                if "{" in cur:
                    head, rest = cur.split("{", 1)
                    out += expand(prefix + head, rest.rsplit("}", 1)[0])
                else:
                    out.append(prefix + cur)
            cur = ""
        else:
            cur += ch
    return out

def paths(text, me):
    found = []
    for m in re.finditer(r"\b(crate|super)::((?:\w+::)*)(\{|\w+)", text):
        root, mid, last = m.groups()
        base = [] if root == "crate" else me.split("::")[:-1]
        if last == "{":
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            for p in expand("", text[m.end() : i - 1]):
                found.append(base + (mid + p).split("::"))
        else:
            found.append(base + (mid + last).split("::"))
    return found

modules, edges = {}, {}
for d, _, files in os.walk(SRC):
    for f in files:
        # main.rs is the binary, a crate of its own that uses the library from outside.
        if f.endswith(".rs") and os.path.join(d, f) != os.path.join(SRC, "main.rs"):
            p = os.path.join(d, f)
            modules[module_of(p)] = p
for me, p in sorted(modules.items()):
    text = strip(open(p, encoding="utf-8").read())
    for parts in paths(text, me):
        for n in range(len(parts), 0, -1):
            target = "::".join(parts[:n])
            if target in modules:
                break
        else:
            continue
        if target != me:
            edges.setdefault(me, set()).add(target)

if "-v" in sys.argv:
    for m in sorted(edges):
        print(f"{m or '(lib)'} -> {', '.join(sorted(edges[m]))}")

# Cycles: strongly connected components with more than one module (Tarjan).
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
def visit(v):
    index[v] = low[v] = counter[0]; counter[0] += 1
    stack.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(sorted(comp))
sys.setrecursionlimit(10000)
for v in sorted(modules):
    if v not in index:
        visit(v)
for c in sccs:
    print("cycle among:", ", ".join(m or "(lib)" for m in c))
sys.exit(1 if sccs else 0)
