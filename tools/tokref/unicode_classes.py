"""Unicode class membership as Hugging Face `tokenizers` (Oniguruma) and PCRE2 see it.

HF tokenizers compiles Split/Replace patterns with Oniguruma; nibble uses PCRE2 10.42, whose Unicode
tables are older. This module measures, over every code point, which characters each class used
by tokenizer.json patterns matches in both engines.
"""
import ctypes
import ctypes.util

from tokenizers import Regex, pre_tokenizers

# The classes that appear in the patterns of the tokenizers nibble supports.
CLASSES = [r"\s", r"\p{L}", r"\p{N}", r"\p{P}", r"\p{S}", r"\p{M}"]
# Compound classes as the Qwen / Llama-3 / DeepSeek-V3 / GPT-2 patterns write them; the test
# checks nibble's rewritten forms against these too.
COMPOUND = [r"\S", r"[^\s\p{L}\p{N}]", r"[^\r\n\p{L}\p{N}]", r"[^\r\n\p{L}\p{P}\p{S}]", r"[\p{L}\p{M}]",
            r"[\p{P}\p{S}]", r"\P{L}"]


def all_code_points():
    return [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]


def to_ranges(members):
    ranges = []
    for c in sorted(members):
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return ranges


def oniguruma_members(pattern, cps=None):
    """Code points matched by `pattern` in HF tokenizers (Split with behavior 'removed')."""
    cps = cps or all_code_points()
    text = "".join(map(chr, cps))
    kept = set()
    for piece, _ in pre_tokenizers.Split(Regex(pattern), behavior="removed").pre_tokenize_str(text):
        kept.update(map(ord, piece))
    return {c for c in cps if c not in kept}


class Pcre2:
    """Minimal ctypes binding to libpcre2-8 (UTF + UCP), enough to test class membership."""

    UTF, UCP = 0x00080000, 0x00020000

    def __init__(self):
        path = ctypes.util.find_library("pcre2-8") or "libpcre2-8.so.0"
        self.lib = ctypes.CDLL(path)
        self.lib.pcre2_compile_8.restype = ctypes.c_void_p
        self.lib.pcre2_compile_8.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint32,
                                             ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_size_t),
                                             ctypes.c_void_p]
        self.lib.pcre2_match_data_create_8.restype = ctypes.c_void_p
        self.lib.pcre2_match_data_create_8.argtypes = [ctypes.c_uint32, ctypes.c_void_p]
        self.lib.pcre2_match_8.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
                                           ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.pcre2_get_ovector_pointer_8.restype = ctypes.POINTER(ctypes.c_size_t)
        self.lib.pcre2_get_ovector_pointer_8.argtypes = [ctypes.c_void_p]

    def members(self, cls, cps=None):
        cps = cps or all_code_points()
        err, off = ctypes.c_int(), ctypes.c_size_t()
        pat = ("(?:%s)+" % cls).encode()
        code = self.lib.pcre2_compile_8(pat, len(pat), self.UTF | self.UCP, ctypes.byref(err), ctypes.byref(off), None)
        if not code:
            raise RuntimeError("pcre2_compile failed for %r" % cls)
        md = self.lib.pcre2_match_data_create_8(1, None)
        text = "".join(map(chr, cps)).encode("utf-8")
        # Byte offset -> code point, to read the matched runs back.
        starts, pos = {}, 0
        for c in cps:
            starts[pos] = c
            pos += len(chr(c).encode("utf-8"))
        out, start = set(), 0
        while start < len(text):
            rc = self.lib.pcre2_match_8(code, text, len(text), start, 0, md, None)
            if rc < 0:
                break
            ov = self.lib.pcre2_get_ovector_pointer_8(md)
            a, b = ov[0], ov[1]
            p = a
            while p < b:
                c = starts[p]
                out.add(c)
                p += len(chr(c).encode("utf-8"))
            start = b if b > a else a + 1
        return out
