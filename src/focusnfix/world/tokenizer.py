"""A CLIP-BPE-format tokenizer for the world's grammar, built in code (no download).

Writes ``vocab.json`` and ``merges.txt`` in the format of OpenAI CLIP's tokenizer:

* vocab: the 256 byte-level unicode symbols, the same 256 with ``</w>`` (end of word), one
  entry per learned merge, then ``<|startoftext|>`` and ``<|endoftext|>``;
* merges: ``#version`` header, then one ``left right`` pair per line, in rank order.

Merges are learned by classic BPE on the grammar's words until each word is one token, so every
grammar word maps to a single id, while unknown words still tokenize into byte symbols.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .data import words as grammar_words

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 16  # tokens, including BOS and EOS; matches the text encoder's positions


def bytes_to_unicode() -> dict[int, str]:
    """CLIP / GPT-2 byte -> printable unicode character table (256 entries)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _symbols(word: str, table: dict[int, str]) -> tuple[str, ...]:
    chars = [table[b] for b in word.encode("utf-8")]
    chars[-1] = chars[-1] + "</w>"
    return tuple(chars)


def learn_merges(word_list: list[str]) -> list[tuple[str, str]]:
    """Classic BPE on ``word_list`` (each word once) until every word is a single symbol."""
    table = bytes_to_unicode()
    corpus = {w: _symbols(w, table) for w in word_list}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for syms in corpus.values():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] += 1
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent, ties alphabetical
        merges.append(best)
        for w, syms in corpus.items():
            out: list[str] = []
            i = 0
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(syms[i] + syms[i + 1])
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            corpus[w] = tuple(out)


def build_vocab(word_list: list[str] | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` in CLIP layout for ``word_list`` (default: the grammar's words)."""
    word_list = grammar_words() if word_list is None else word_list
    base = list(bytes_to_unicode().values())
    tokens = base + [c + "</w>" for c in base]
    merges = learn_merges(word_list)
    tokens += ["".join(m) for m in merges]
    tokens += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return vocab, merges


def write_tokenizer_files(out_dir: str | Path, word_list: list[str] | None = None) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(word_list)
    vocab_path, merges_path = out / "vocab.json", out / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2 - focusnfix world tokenizer"] + [f"{a} {b}" for a, b in merges]
    merges_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vocab_path, merges_path


def build_tokenizer(out_dir: str | Path, word_list: list[str] | None = None):
    """A ``transformers.CLIPTokenizer`` over freshly written files (``model_max_length=16``)."""
    from transformers import CLIPTokenizer

    vocab_path, merges_path = write_tokenizer_files(out_dir, word_list)
    return CLIPTokenizer(str(vocab_path), str(merges_path), model_max_length=MAX_LENGTH)
