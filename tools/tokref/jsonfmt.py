"""JSON output that stays readable and diff-friendly: one list entry per line, printable text as
is, invisible or ambiguous characters (spaces other than U+0020, controls, format characters,
combining marks, private use) as \\u escapes."""
import json
import unicodedata


def _escape_invisible(s):
    out = []
    for ch in s:
        cat = unicodedata.category(ch)
        if ch != " " and (cat[0] in "ZC" or cat[0] == "M" or ord(ch) in (0x2581,)):
            cp = ord(ch)
            if cp > 0xFFFF:
                cp -= 0x10000
                out.append("\\u%04x\\u%04x" % (0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF)))
            else:
                out.append("\\u%04x" % cp)
        else:
            out.append(ch)
    return "".join(out)


def dumps_value(v):
    # ensure_ascii=False keeps text readable; json has already escaped quotes, backslashes and C0.
    return _escape_invisible(json.dumps(v, ensure_ascii=False))


def dump_list(items, f):
    f.write("[\n")
    for i, item in enumerate(items):
        f.write(dumps_value(item) + (",\n" if i + 1 < len(items) else "\n"))
    f.write("]\n")
