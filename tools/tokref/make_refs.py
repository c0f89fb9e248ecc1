#!/usr/bin/env python3
"""Reference outputs for nibble's tokenizer tests, produced by Hugging Face `tokenizers` (PyPI).

For each real tokenizer (qwen3, llama3, deepseek_v3, mistral) it writes
tests/data/tokenizers/refs/<name>.json with, for every corpus text:
  ids_with_special              encode(text, add_special_tokens=True), special tokens parsed
  ids_without_special_handling  encode(text, add_special_tokens=False) with
                                encode_special_tokens=True (HF split_special_tokens: special
                                added tokens are plain text; non-special added tokens still match)
  decoded / decoded_skip_special  decode(ids_with_special, skip_special_tokens=False/True)
plus "decode_cases": seeded random id sequences (many of them byte tokens, so invalid UTF-8)
with their decodes. It also writes nfc.json (NFC of hard strings and of every code point that
NFC changes) and unicode_classes.json (the code points Oniguruma puts in \\s, \\p{L}, ...).

BOS/EOS rule (the one nibble implements): the tokenizer.json post-processor is used, except when
tokenizer_config.json's tokenizer_class is a Llama class; then it is replaced by
[bos if add_bos_token (default true)] $A [eos if add_eos_token (default false)], exactly what
transformers 4.x LlamaTokenizerFast.update_post_processor() does. It gives DeepSeek-V3 its BOS.
(transformers 5.x differs: no BOS for DeepSeek-V3, and it rebuilds the Mistral tokenizer with a
non-legacy Metaspace; these references follow the files.)

Usage: make_refs.py [--data DIR_WITH_TOKENIZER_FOLDERS] [--out OUT_DIR]
"""
import argparse
import hashlib
import json
import os
import random
import sys
import unicodedata

import tokenizers
from tokenizers import Tokenizer, normalizers, processors

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import jsonfmt  # noqa: E402
import variants  # noqa: E402
from unicode_classes import CLASSES, COMPOUND, all_code_points, oniguruma_members, to_ranges  # noqa: E402

NAMES = ["qwen3", "llama3", "deepseek_v3", "mistral"]
LLAMA_CLASSES = {"LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", "CodeLlamaTokenizerFast"}
LICENSE_TEXTS = [("Apache-2.0", None), ("GPL-3", 150), ("BSD", None)]  # (file, max lines)


def token_content(v):
    return v.get("content") if isinstance(v, dict) else v


def apply_config_rule(tk, cfg):
    """transformers 4.x LlamaTokenizerFast.update_post_processor(), for Llama tokenizer classes."""
    if cfg.get("tokenizer_class") not in LLAMA_CLASSES:
        return "post-processor of tokenizer.json"
    bos, eos = token_content(cfg.get("bos_token")), token_content(cfg.get("eos_token"))
    add_bos, add_eos = cfg.get("add_bos_token", True), cfg.get("add_eos_token", False)
    single = ("%s:0 " % bos if add_bos else "") + "$A:0" + (" %s:0" % eos if add_eos else "")
    pair = single + (" %s:1" % bos if add_bos else "") + " $B:1" + (" %s:1" % eos if add_eos else "")
    specials = [(t, tk.token_to_id(t)) for t, on in ((bos, add_bos), (eos, add_eos)) if on]
    tk.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    return "Llama class rule: %s" % single


def license_chunks():
    out = []
    for name, max_lines in LICENSE_TEXTS:
        path = os.path.join("/usr/share/common-licenses", name)
        lines = open(path, encoding="utf-8").read().split("\n")[:max_lines]
        for i in range(0, len(lines), 10):
            out.append({"name": "license_%s_%d" % (name, i), "text": "\n".join(lines[i:i + 10]) + "\n"})
    return out


def added_token_cases(data):
    out, contents = [], [t["content"] for t in data["added_tokens"]]
    for i, t in enumerate(contents):
        out.append({"name": "added " + t, "text": "x%sy" % t})
        if len(contents) < 100 or i % 8 == 0:  # DeepSeek-V3 has 818, most of them placeholders
            out.append({"name": "added spaced " + t, "text": " %s \n" % t})
    out.append({"name": "all added tokens", "text": "".join(contents)})
    return out


def encode_case(tk, case):
    text = case["text"]
    tk.encode_special_tokens = False
    with_special = tk.encode(text, add_special_tokens=True).ids
    tk.encode_special_tokens = True
    without = tk.encode(text, add_special_tokens=False).ids
    tk.encode_special_tokens = False
    return {"name": case["name"], "text": text, "ids_with_special": with_special, "ids_without_special_handling": without,
            "decoded": tk.decode(with_special, skip_special_tokens=False),
            "decoded_skip_special": tk.decode(with_special, skip_special_tokens=True)}


def byte_token_ids(tk, data):
    """Ids of the 256 single-byte tokens: <0xXX> with byte fallback, else byte-level characters."""
    vocab = data["model"]["vocab"]
    fallback = [vocab.get("<0x%02X>" % b) for b in range(256)]
    if all(i is not None for i in fallback):
        return fallback
    from tokenizers.pre_tokenizers import ByteLevel
    return [vocab[c] for c in sorted(ByteLevel.alphabet()) if c in vocab]


def decode_cases(tk, data, rng):
    ids = sorted(set(data["model"]["vocab"].values()) | {t["id"] for t in data["added_tokens"]})
    byte_ids = byte_token_ids(tk, data)
    out = []
    for i in range(80):
        n = rng.randint(1, 12)
        pool = byte_ids if i % 2 else ids
        seq = [rng.choice(pool) if rng.random() < 0.85 else rng.choice(ids) for _ in range(n)]
        out.append({"ids": seq, "decoded": tk.decode(seq, skip_special_tokens=False),
                    "decoded_skip_special": tk.decode(seq, skip_special_tokens=True)})
    return out


def write_ref(path, header, cases, dcases):
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n")
        for k, v in header.items():
            f.write("%s: %s,\n" % (json.dumps(k), jsonfmt.dumps_value(v)))
        f.write('"cases": ')
        jsonfmt.dump_list(cases, f)
        f.write(',\n"decode_cases": ')
        jsonfmt.dump_list(dcases, f)
        f.write("}\n")


def make_tokenizer_refs(name, data_dir, out_dir, corpus):
    d = os.path.join(data_dir, name)
    raw = open(os.path.join(d, "tokenizer.json"), "rb").read()
    data = json.loads(raw)
    cfg = json.load(open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8"))
    tk = Tokenizer.from_str(raw.decode("utf-8"))
    rule = apply_config_rule(tk, cfg)
    texts = corpus + license_chunks() + added_token_cases(data)
    cases = [encode_case(tk, c) for c in texts]
    header = {"tokenizer": name, "tokenizers_version": tokenizers.__version__,
              "tokenizer_json_sha256": hashlib.sha256(raw).hexdigest(), "bos_eos_rule": rule}
    write_ref(os.path.join(out_dir, name + ".json"), header, cases, decode_cases(tk, data, random.Random(1234)))
    print("%s: %d cases (%s)" % (name, len(cases), rule))


def make_variant_refs(repo, out_dir, corpus):
    """The synthetic variants of variants.py over the committed Qwen3 / Mistral files."""
    data_dir = os.path.join(repo, "tests", "data", "tokenizers")
    os.makedirs(os.path.join(out_dir, "variants"), exist_ok=True)
    with open(os.path.join(data_dir, "variants.json"), "w", encoding="utf-8") as f:
        jsonfmt.dump_list(variants.VARIANTS, f)
    rng = random.Random(99)
    for v in variants.VARIANTS:
        if "full" in v:
            data, cfg = v["full"], {}
        else:
            base = os.path.join(data_dir, v["base"])
            data = variants.merge_patch(json.load(open(os.path.join(base, "tokenizer.json"), encoding="utf-8")), v["patch"])
            cfg = json.load(open(os.path.join(base, "tokenizer_config.json"), encoding="utf-8"))
        tk = Tokenizer.from_str(json.dumps(data))
        rule = apply_config_rule(tk, cfg)
        cases = [encode_case(tk, c) for c in variants.variant_texts(v, corpus, rng)]
        header = {"variant": v["name"], "tokenizers_version": tokenizers.__version__, "bos_eos_rule": rule}
        write_ref(os.path.join(out_dir, "variants", v["name"] + ".json"), header, cases, decode_cases(tk, data, rng))
        print("variant %s: %d cases" % (v["name"], len(cases)))


def nfc_refs(out_dir, rng):
    """NFC as HF computes it: for every code point NFC changes, and for random mark soups."""
    nfc = normalizers.NFC()
    changed = []
    for c in all_code_points():
        s = chr(c)
        n = nfc.normalize_str(s)
        if n != s:
            changed.append([c, n])
    marks = [c for c in range(0x300, 0x1E950) if unicodedata.combining(chr(c))]
    bases = list("aeiouAEOUnszcgqxyw") + ["\u03b1", "\u03c9", "\u0438", "\u0435", "\u1100", "\u1161", "\u11a8", "\uac00", "\u212b", "\u2126", "\u00c5"]
    strings = []
    for _ in range(400):
        s = "".join(rng.choice(bases) if rng.random() < 0.4 else chr(rng.choice(marks)) for _ in range(rng.randint(1, 8)))
        strings.append({"input": s, "nfc": nfc.normalize_str(s)})
    with open(os.path.join(out_dir, "nfc.json"), "w", encoding="utf-8") as f:
        f.write('{"tokenizers_version": %s,\n"changed_code_points": ' % json.dumps(tokenizers.__version__))
        jsonfmt.dump_list(changed, f)
        f.write(',\n"strings": ')
        jsonfmt.dump_list(strings, f)
        f.write("}\n")
    print("nfc: %d code points change, %d strings" % (len(changed), len(strings)))


def class_refs(out_dir):
    cps = all_code_points()
    out = {"tokenizers_version": tokenizers.__version__,
           "classes": {cls: to_ranges(oniguruma_members(cls, cps)) for cls in CLASSES + COMPOUND}}
    with open(os.path.join(out_dir, "unicode_classes.json"), "w") as f:
        f.write('{"tokenizers_version": %s,\n"classes": {\n' % json.dumps(out["tokenizers_version"]))
        items = list(out["classes"].items())
        for i, (cls, ranges) in enumerate(items):
            f.write("%s: %s%s\n" % (json.dumps(cls), json.dumps(ranges), "," if i + 1 < len(items) else ""))
        f.write("}}\n")
    print("unicode classes: " + ", ".join("%s %d ranges" % (k, len(v)) for k, v in out["classes"].items()))


def main():
    repo = os.path.abspath(os.path.join(HERE, "..", ".."))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(repo, "..", "shared", "data", "tokenizers"))
    ap.add_argument("--out", default=os.path.join(repo, "tests", "data", "tokenizers", "refs"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    corpus = json.load(open(os.path.join(HERE, "corpus.json"), encoding="utf-8"))
    for name in NAMES:
        make_tokenizer_refs(name, args.data, args.out, corpus)
    make_variant_refs(repo, args.out, corpus)
    nfc_refs(args.out, random.Random(4321))
    class_refs(args.out)


if __name__ == "__main__":
    main()
