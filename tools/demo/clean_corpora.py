#!/usr/bin/env python3
"""Cleans the three demo corpora out of unpacked Debian packages (stdlib only).

Usage: clean_corpora.py ROOT OUT_DIR
  ROOT     a directory where the .debs were unpacked with `dpkg-deb -x` (holds usr/...)
  OUT_DIR  receives {austen,kjv,devil}.txt and their .train.txt / .heldout.txt split

Units (paragraphs, verses, entries) are the split granularity: unit i goes to held-out
when i % 20 == 19 (5 %), to train otherwise, so the split is deterministic and spread
evenly over every book. Austen and Devil units are separated by a blank line; KJV verses
by a single newline. Written as UTF-8 with a final newline.
"""
import gzip, os, re, struct, subprocess, sys, zlib

HELDOUT_EVERY = 20


def r_lazyload_strings(path):
    """All CHARSXP strings of an R lazy-load DB (Rdata.rdb): a concatenation of
    zlib streams, each with a 4-byte big-endian length prefix, holding XDR-serialized
    R objects. A CHARSXP is a 4-byte flags word (type 9 in the low byte) then a
    4-byte big-endian length then the bytes; we scan for that pattern."""
    data = open(path, "rb").read()
    pos, out = 0, []
    while pos < len(data):
        dec = zlib.decompressobj()
        buf = dec.decompress(data[pos + 4:])
        pos = len(data) - len(dec.unused_data)
        i = 0
        while i < len(buf) - 8:
            flags, n = struct.unpack(">Ii", buf[i:i + 8])
            if flags & 0xFF == 9 and 0 <= n < 100000 and i + 8 + n <= len(buf):
                out.append(buf[i + 8:i + 8 + n].decode("utf-8"))
                i += 8 + n
            else:
                i += 1
    return out


def squash(s):
    """Joins wrapped lines, drops italics underscores, collapses whitespace."""
    return re.sub(r"\s+", " ", s.replace("_", "")).strip()


def austen_units(root):
    lines = r_lazyload_strings(
        os.path.join(root, "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"))
    paras, cur = [], []
    for line in lines + [""]:
        if line.strip():
            cur.append(line)
        elif cur:
            paras.append(squash(" ".join(cur)))
            cur = []
    keep = []
    for p in paras:
        if not re.search(r"[a-z]", p):          # titles, CHAPTER IV, VOLUME I, THE END
            continue
        if re.match(r"(?i)^(chapter|volume)\b", p) and len(p) < 40:
            continue
        if p == "By Jane Austen" or p.startswith("[At this point"):
            continue
        keep.append(p)
    return keep


def kjv_units(root):
    """One verse per unit, from `bible -f` (one verse a line, "Ge1:1 text")."""
    bible = os.path.join(root, "usr/bin/bible")
    out = subprocess.run([bible, "-f", "-p", os.path.join(root, "usr/lib"),
                          "Gen1:1-Rev22:21"], check=True, capture_output=True).stdout
    verses = []
    for line in out.decode("utf-8").splitlines():
        m = re.match(r"^\S+\d+:\d+ (.*)$", line)
        if m:
            verses.append(squash(m.group(1)))
        elif line.strip():
            raise SystemExit(f"kjv: unexpected line from bible -f: {line!r}")
    return verses


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64num(s):
    v = 0
    for c in s:
        v = v * 64 + B64.index(c)
    return v


def devil_entry(raw):
    """Prose lines are joined; indented lines (verse, attributions) stay lines."""
    out, prose = [], []
    for line in raw.splitlines():
        if not line.strip():
            if prose:
                out.append(squash(" ".join(prose))); prose = []
        elif line.startswith(" "):
            if prose:
                out.append(squash(" ".join(prose))); prose = []
            out.append(squash(line))
        else:
            prose.append(line)
    if prose:
        out.append(squash(" ".join(prose)))
    return "\n".join(out)


def devil_units(root):
    d = os.path.join(root, "usr/share/dictd")
    text = gzip.open(os.path.join(d, "devil.dict.dz")).read().decode("utf-8")
    spans = set()
    for line in open(os.path.join(d, "devil.index"), encoding="utf-8"):
        word, off, n = line.rstrip("\n").split("\t")
        if not word.startswith("00database"):   # dictd headers and the preface
            spans.add((b64num(off), b64num(n)))
    return [devil_entry(text[o:o + n]) for o, n in sorted(spans)]


def write(out_dir, name, units, sep):
    train = [u for i, u in enumerate(units) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    held = [u for i, u in enumerate(units) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    for suffix, us in (("", units), (".train", train), (".heldout", held)):
        with open(os.path.join(out_dir, f"{name}{suffix}.txt"), "w", encoding="utf-8") as f:
            f.write(sep.join(us) + "\n")
    print(f"{name}: {len(units)} units, {sum(map(len, units))} chars "
          f"({len(train)} train / {len(held)} held out)")


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    root, out_dir = sys.argv[1:]
    os.makedirs(out_dir, exist_ok=True)
    write(out_dir, "austen", austen_units(root), "\n\n")
    write(out_dir, "kjv", kjv_units(root), "\n")
    write(out_dir, "devil", devil_units(root), "\n\n")


if __name__ == "__main__":
    main()
