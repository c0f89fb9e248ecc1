"""Synthetic tokenizer variants: pipeline features the four real tokenizers do not use (Metaspace
pre-tokenizer schemes, unk/fuse_unk, added-token flags, Split behaviours, subword prefix/suffix,
no decoder, RobertaProcessing).

Each variant is a JSON merge patch (RFC 7386) over a committed real tokenizer.json, or a complete
tiny tokenizer.json. They are written to tests/data/tokenizers/variants.json; the C++ test applies
the same patch (nlohmann merge_patch) and compares with the references made here.
"""
import copy
import random

MS = "\u2581"
METASPACE_DECODER = {"type": "Sequence", "decoders": [{"type": "Metaspace", "replacement": MS, "prepend_scheme": "always", "split": True}, {"type": "ByteFallback"}]}


def metaspace(scheme, split):
    return {"type": "Metaspace", "replacement": MS, "prepend_scheme": scheme, "split": split}


def added(id_, content, special, normalized, lstrip=False, rstrip=False, single_word=False):
    return {"id": id_, "content": content, "single_word": single_word, "lstrip": lstrip, "rstrip": rstrip,
            "normalized": normalized, "special": special}


MISTRAL_ADDED = [added(0, "<unk>", True, False), added(1, "<s>", True, False), added(2, "</s>", True, False)]


def tiny_tokenizer():
    """A hand-made BPE with continuing_subword_prefix, end_of_word_suffix, unk and fuse_unk."""
    vocab = {"<unk>": 0, "[CLS]": 1, "[SEP]": 2}
    for c in "abcd":
        for form in (c, "##" + c, c + "</w>", "##" + c + "</w>"):
            vocab[form] = len(vocab)
    merges = [("a", "##b"), ("ab", "##c"), ("##c", "##d</w>"), ("b", "##a"), ("##a", "##b</w>"), ("##b", "##c"),
              ("c", "##d</w>"), ("##a", "##a"), ("##aa", "##a</w>"), ("d", "##d")]
    for a, b in merges:
        vocab.setdefault(a + b[2:], len(vocab))
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(1, "[CLS]", True, False), added(2, "[SEP]", True, False)],
        "normalizer": None,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Removed", "invert": False},
        "post_processor": {"type": "RobertaProcessing", "sep": ["[SEP]", 2], "cls": ["[CLS]", 1], "trim_offsets": True, "add_prefix_space": False},
        "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": "##",
                  "end_of_word_suffix": "</w>", "fuse_unk": True, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [[a, b] for a, b in merges]},
    }


VARIANTS = [
    {"name": "metaspace_first", "base": "mistral",
     "patch": {"normalizer": None, "pre_tokenizer": metaspace("first", False)}},
    {"name": "metaspace_always_split", "base": "mistral",
     "patch": {"normalizer": None, "pre_tokenizer": metaspace("always", True), "decoder": METASPACE_DECODER}},
    {"name": "metaspace_never", "base": "mistral",
     "patch": {"normalizer": None, "pre_tokenizer": metaspace("never", True),
               "decoder": {"type": "Metaspace", "replacement": MS, "prepend_scheme": "never", "split": True}}},
    {"name": "unk_fused", "base": "mistral", "patch": {"model": {"byte_fallback": False, "fuse_unk": True}}},
    {"name": "unk_unfused", "base": "mistral", "patch": {"model": {"byte_fallback": False, "fuse_unk": False}}},
    {"name": "added_flags", "base": "mistral",
     "patch": {"normalizer": {"type": "Sequence", "normalizers": [
                   {"type": "NFC"}, {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                   {"type": "Strip", "strip_left": False, "strip_right": True}]},
               "pre_tokenizer": metaspace("always", True), "decoder": METASPACE_DECODER,
               "added_tokens": MISTRAL_ADDED + [
                   added(32000, "<mask>", True, False, lstrip=True, rstrip=True),
                   added(32001, "hello", False, True, single_word=True),
                   added(32002, "cafe\u0301", False, True),
                   added(32003, "<tool>", False, False),
                   added(32004, "<tool>x", True, False),
                   added(32005, " spaced", False, False, rstrip=True)]}},
    {"name": "split_behaviors", "base": "qwen3",
     "patch": {"normalizer": None, "model": {"ignore_merges": True},
               "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                   {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithNext", "invert": False},
                   {"type": "Split", "pattern": {"Regex": "\\p{N}"}, "behavior": "Contiguous", "invert": False},
                   {"type": "Split", "pattern": {"Regex": "[aeiou]"}, "behavior": "MergedWithPrevious", "invert": True},
                   {"type": "Split", "pattern": {"String": "x"}, "behavior": "Removed", "invert": False},
                   {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}]}}},
    {"name": "tiny_prefix_suffix", "full": tiny_tokenizer()},
]

EXTRA_TEXTS = [
    "hello world", "say hello", "hellothere", "hello_world", "hello\u0301 x", "<mask> x", "a   <mask>   b",
    "x<mask>y", "caf\u00e9 cafe\u0301 cafe", "<tool>x <tool> <tool>y <tool>", " spaced  spaced x spaced",
    "trailing   ", "  two  spaces  ", "1 22 333 4444 a1b2", "axe ox xx box", "aaa eee iii", "<s>x</s> y",
]


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch, as nlohmann::json::merge_patch implements it."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def tiny_texts(rng):
    out = ["", "a", "ab", "abc", "abcd", "ba", "bab", "aaa", "dd", "x", "xyz", "ae", "eee", "abc abd bca"]
    for _ in range(120):
        out.append("".join(rng.choice("abcdabcdxe  ") for _ in range(rng.randint(0, 24))))
    return out


def variant_texts(variant, corpus, rng):
    if variant["name"] == "tiny_prefix_suffix":
        return [{"name": "tiny %d" % i, "text": t} for i, t in enumerate(tiny_texts(rng))]
    return corpus + [{"name": "extra %d" % i, "text": t} for i, t in enumerate(EXTRA_TEXTS)]
