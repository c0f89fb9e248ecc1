#!/usr/bin/env python3
"""Reference renders for nibble's chat-template tests (tests/unit/chat_template).

Renders with jinja2 configured the way transformers' apply_chat_template configures it
(ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]),
a `tojson` filter that is json.dumps(ensure_ascii=False, ...), globals raise_exception and
strftime_now) and writes the expected outputs as JSON under tests/data/chat_template/refs/:

  models.json     real templates (Qwen3, Llama-3, DeepSeek-V3) and two Mistral-style [INST]
                  templates over a set of conversations, as render_chat() passes them
  synthetic.json  small templates, one construct each
  fuzz.json       seeded random templates: whitespace control / trim / lstrip around every kind
                  of tag, and random expressions (operators, precedence, filters, methods)

Errors are recorded too: a TemplateError (raise_exception) with its exact message, anything
else by its Python type (the C++ side must then fail as well).

The Llama-3 and DeepSeek-V3 templates are read from ../shared/data/tokenizers and are not
copied into the repository (licences); only their renders are stored.

    python3 -m venv /tmp/chatvenv && /tmp/chatvenv/bin/pip install jinja2
    /tmp/chatvenv/bin/python tools/chatref/make_refs.py
"""
import argparse
import json
import os
import random
import warnings
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "data", "chat_template")
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data", "tokenizers")


class GenerationTag(jinja2.ext.Extension):
    """transformers' AssistantTracker as far as rendering goes: {% generation %} renders its body
    through a call block (its own scope)."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def make_env():
    """The environment of transformers' _compile_jinja_template (settings copied, code ours)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, loopcontrols])

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


ENV = make_env()
# Python's compiler warns about constant subscripts in random expressions ("'int' object is not
# subscriptable"); jinja2's behaviour is what gets recorded, the warning is noise.
warnings.filterwarnings("ignore", category=SyntaxWarning)


def render_case(source, context):
    """{"expected": text} or {"error_type": ..., "error": message}."""
    try:
        return {"expected": ENV.from_string(source).render(**context)}
    except jinja2.exceptions.TemplateSyntaxError as e:
        return {"error_type": "TemplateSyntaxError", "error": str(e)}
    except jinja2.exceptions.TemplateError as e:
        # raise_exception raises the TemplateError base class itself; subclasses are jinja2's own.
        kind = "TemplateError" if type(e) is jinja2.exceptions.TemplateError else type(e).__name__
        return {"error_type": kind, "error": str(e)}
    except Exception as e:  # TypeError, ZeroDivisionError, ... inside the template
        return {"error_type": type(e).__name__, "error": str(e)}


def special_tokens(config):
    """transformers' special_tokens_map: token strings (AddedToken objects give their content)."""
    out = {}
    for name in ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]:
        v = config.get(name)
        if isinstance(v, dict):
            v = v.get("content")
        if isinstance(v, str):
            out[name] = v
    extra = [t.get("content") if isinstance(t, dict) else t for t in config.get("additional_special_tokens") or []]
    if extra:
        out["additional_special_tokens"] = extra
    return out


# ---- conversations -------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather (température in °C) for a city — \"quoted\" & <tagged>",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City name, e.g. 東京 or Zürich"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.\nReturns a list of results.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "max_results": {"type": "integer", "default": 5, "minimum": 1.5e0},
            },
            "required": ["query", "max_results"],
        },
    },
}


def tool_call(name, arguments, call_id):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


CONVERSATIONS = {
    "single_user": {"messages": [{"role": "user", "content": "Hello! How are you?"}]},
    "system_user": {"messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2+2?"}]},
    "multi_turn": {"messages": [
        {"role": "system", "content": "  Be concise.\n"},
        {"role": "user", "content": "Translate 'cat' to Japanese."},
        {"role": "assistant", "content": "猫 (neko) 🐱"},
        {"role": "user", "content": "\n  And \"dog\"?\ttabs\tand\nnewlines  \n"},
        {"role": "assistant", "content": "犬 (inu)."},
        {"role": "user", "content": "Thanks — merci, danke, спасибо!"}]},
    "alternating": {"messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": " Hello there. "},
        {"role": "user", "content": "Tell me a joke."}]},
    "reasoning_field": {"messages": [
        {"role": "user", "content": "What is 17 * 3?"},
        {"role": "assistant", "content": "51", "reasoning_content": "17 * 3 = 51.\n"},
        {"role": "user", "content": "And 18 * 3?"}]},
    "reasoning_last": {"messages": [
        {"role": "user", "content": "What is 17 * 3?"},
        {"role": "assistant", "content": "\n51", "reasoning_content": "\nCompute: 17*3 = 51\n"}]},
    "think_in_content": {"messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nSimple addition.\n</think>\n\nThe answer is 4."},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "<think>\n3+3=6\n</think>\n\n6"}]},
    "tools_defined": {"tools": [WEATHER, SEARCH], "messages": [
        {"role": "system", "content": "You can use tools."},
        {"role": "user", "content": "Weather in Paris?"}]},
    "tool_call_round": {"tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            tool_call("get_weather", {"location": "Paris", "unit": "celsius"}, "call_1")]},
        {"role": "tool", "content": "{\"temperature\": 21.5, \"sky\": \"clear\"}", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "It is 21.5 °C and clear in Paris."}]},
    "tool_call_string_args": {"tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Zürich?"},
        {"role": "assistant", "content": None, "tool_calls": [
            tool_call("get_weather", "{\"location\": \"Zürich\"}", "call_9")]},
        {"role": "tool", "content": "18 degrees", "tool_call_id": "call_9"}]},
    "parallel_tool_calls": {"tools": [WEATHER, SEARCH], "messages": [
        {"role": "system", "content": "Use tools when helpful."},
        {"role": "user", "content": "Weather in Oslo and news about Oslo?"},
        {"role": "assistant", "content": "Let me check both.", "tool_calls": [
            tool_call("get_weather", {"location": "Oslo"}, "a"),
            tool_call("search", {"query": "Oslo news", "max_results": 3}, "b")]},
        {"role": "tool", "content": "-3 °C, snow", "tool_call_id": "a"},
        {"role": "tool", "content": "<tool_response>nested</tool_response>", "tool_call_id": "b"},
        {"role": "assistant", "content": "Snowy, and here is the news."},
        {"role": "user", "content": "Thanks"}]},
    "deepseek_tools": {"tools": [WEATHER, SEARCH], "messages": [
        {"role": "system", "content": "System A."},
        {"role": "system", "content": "System B."},
        {"role": "user", "content": "Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            tool_call("get_weather", "{\"location\": \"Oslo\"}", "a"),
            tool_call("search", "{\"query\": \"Oslo\", \"max_results\": 2}", "b")]},
        {"role": "tool", "content": "-3"},
        {"role": "tool", "content": "news"},
        {"role": "assistant", "content": "Cold."},
        {"role": "user", "content": "More?"},
        {"role": "assistant", "content": None, "tool_calls": [
            tool_call("search", "{\"query\": \"more\"}", "c")]},
        {"role": "tool", "content": "nothing"}]},
    "empty_and_edge": {"messages": [
        {"role": "user", "content": ""},
        {"role": "assistant", "content": "   "},
        {"role": "user", "content": "<|im_start|>not special {{ braces }} {% tags %}"}]},
}

# (template name, conversation, add_generation_prompt, extra variables)
VARIANTS = [(True, {}), (False, {})]
QWEN_EXTRA = [(True, {"enable_thinking": False}), (True, {"enable_thinking": True}), (False, {"enable_thinking": False})]


def model_templates():
    out = {}
    qwen_cfg = json.load(open(os.path.join(DATA, "qwen3", "tokenizer_config.json")))
    out["qwen3"] = {"where": "tests/data/chat_template/qwen3", "source": qwen_cfg["chat_template"],
                    "special_tokens": special_tokens(qwen_cfg)}
    for name in ["llama3", "deepseek_v3"]:
        cfg = json.load(open(os.path.join(SHARED, name, "tokenizer_config.json")))
        out[name] = {"where": "shared:" + name, "source": cfg["chat_template"], "special_tokens": special_tokens(cfg)}
    mistral_cfg = json.load(open(os.path.join(SHARED, "mistral", "tokenizer_config.json")))
    for name in ["mistral_v1", "mistral_v3"]:
        src = open(os.path.join(DATA, name + ".jinja")).read()
        out[name] = {"where": "tests/data/chat_template/" + name + ".jinja", "source": src,
                     "special_tokens": special_tokens(mistral_cfg)}
    return out


def model_cases():
    templates = model_templates()
    cases = []
    for tname, t in templates.items():
        variants = VARIANTS + (QWEN_EXTRA if tname == "qwen3" else [])
        for cname, conv in CONVERSATIONS.items():
            for agp, extra in variants:
                context = {"messages": conv["messages"], "tools": conv.get("tools"), "documents": None,
                           "add_generation_prompt": agp, **t["special_tokens"], **extra}
                case = {"template": tname, "conversation": cname, "add_generation_prompt": agp, "extra": extra}
                case.update(render_case(t["source"], context))
                cases.append(case)
    meta = {k: {"where": v["where"], "special_tokens": v["special_tokens"]} for k, v in templates.items()}
    return {"templates": meta, "conversations": CONVERSATIONS, "cases": cases}


# ---- synthetic templates: one construct each -------------------------------------------------

CTX = {
    "s": "héllo wörld", "n": 7, "f": 2.5, "neg": -3, "t": True, "e": "", "z": 0, "no": None,
    "l": [3, 1, 2], "words": ["a", "b", "c"], "d": {"k": "v", "n": 2, "items": "key named items"},
    "msgs": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "yo", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}],
    "nested": {"a": {"b": [10, {"c": "deep"}]}},
    "uni": "ÉCOLE straße Σίσυφος İ ǆ 日本",
}

SYNTHETIC = [
    # whitespace control, trim_blocks, lstrip_blocks
    ("trim_blocks", "{% if t %}\nyes\n{% endif %}\nafter"),
    ("lstrip_blocks", "  {% if t %}\n    x\n  {% endif %}\n"),
    ("lstrip_not_var", "  {{ n }}\n  {% if t %}y{% endif %}"),
    ("lstrip_plus", "  {%+ if t %}y{% endif %}\n"),
    ("trim_plus", "{% if t +%}\ny{% endif %}"),
    ("minus_both", "a  \n  {%- if t -%}  \n  b  \n  {%- endif -%}  \n  c"),
    ("minus_var", "a \n {{- n -}} \n b"),
    ("minus_comment", "a \n {#- c -#} \n b {# c #}\n c"),
    ("comment_lstrip", "x\n   {# comment #}\ny"),
    ("crlf", "a\r\n{% if t %}\r\nb\r\n{% endif %}\r\nc\r\n"),
    ("trailing_newline", "x\n"),
    ("two_trailing_newlines", "x\n\n"),
    ("raw", "{% raw %}{{ not rendered }} {% if %}{% endraw %}|{%- raw -%}  a  {%- endraw -%} |"),
    ("unicode_space_strip", "a\u00a0\u3000{%- if t %}b{% endif %}"),
    # loops
    ("loop_vars", "{% for x in l %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}"
                  "{{ loop.first }}{{ loop.last }}{{ loop.length }}|{% endfor %}"),
    ("loop_prev_next", "{% for x in l %}{{ loop.previtem }}-{{ x }}-{{ loop.nextitem }};{% endfor %}"),
    ("loop_cycle", "{% for x in words %}{{ loop.cycle('odd', 'even') }}{% endfor %}"),
    ("loop_else", "{% for x in [] %}no{% else %}empty{% endfor %}{% for x in l %}{{ x }}{% else %}no{% endfor %}"),
    ("loop_filter", "{% for x in l if x > 1 %}{{ x }}:{{ loop.index }}/{{ loop.length }} {% endfor %}"),
    ("loop_dict", "{% for k in d %}{{ k }},{% endfor %}|{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}"),
    ("loop_string", "{% for c in s %}[{{ c }}]{% endfor %}"),
    ("loop_break_continue", "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}"
                            "{% if x > 5 %}{% break %}{% endif %}{{ x }}{% endfor %}"),
    ("loop_nested", "{% for a in [1, 2] %}{% for b in 'xy' %}{{ a }}{{ b }}{{ loop.index }} {% endfor %}"
                    "{{ loop.index }}|{% endfor %}"),
    ("loop_scope", "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}"),
    ("loop_scope_if", "{% for i in [1, 2] %}{% if i == 2 %}[{{ y }}]{% endif %}{% set y = i %}{% endfor %}"),
    ("loop_unpack", "{% for a, b in [[1, 2], (3, 4), 'xy'] %}{{ a }}{{ b }} {% endfor %}"),
    ("loop_reversed_slice", "{% for m in msgs[::-1] %}{{ m.role }},{% endfor %}"),
    ("loop_undefined", "{% for x in missing %}x{% else %}none{% endfor %}"),
    # namespace and set
    ("namespace", "{% set ns = namespace(a=1, b='x', c=none) %}{% for i in l %}{% set ns.a = ns.a + i %}"
                  "{% endfor %}{{ ns.a }}{{ ns.b }}{{ ns.c }}{{ ns.missing is defined }}"),
    ("namespace_repr", "{% set ns = namespace(x=[1, 'a']) %}{{ ns }}"),
    ("set_block", "{% set body %}  hi {{ n }}  {% endset %}[{{ body }}]"),
    ("set_block_filter", "{% set body | upper | trim %}  hi {{ s }}  {% endset %}[{{ body }}]"),
    ("set_tuple", "{% set a, b = 1, 'two' %}{{ a }}{{ b }}"),
    ("set_in_if", "{% set x = 1 %}{% if t %}{% set x = 5 %}{% endif %}{{ x }}"),
    # expressions
    ("precedence", "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 ** 3 ** 2 }} {{ -2 ** 2 }} {{ 7 // 2 }} {{ -7 // 2 }}"
                   " {{ -7 % 3 }} {{ 7 % -3 }} {{ 7 / 2 }} {{ 1 ~ 2 * 3 }} {{ 'a' ~ 1 + 2 }} {{ not 1 == 2 }} {{ 1 + 2 is odd }}"),
    ("and_or_values", "{{ 0 or 'x' }} {{ 'a' and 'b' }} {{ '' and 'b' }} {{ none or none }}|{{ e or [] }} {{ l and n }}"),
    ("comparisons", "{{ 1 < 2 < 3 }} {{ 1 < 3 < 2 }} {{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }}"
                    " {{ 'ab' in 'cabd' }} {{ 2 in l }} {{ 'k' in d }} {{ 'v' in d }} {{ 4 not in l }} {{ none == none }}"),
    ("conditional", "{{ 'y' if t else 'n' }} {{ 'y' if z else 'n' }} [{{ 'y' if z }}] {{ 1 if false else 2 if true else 3 }}"),
    ("literals", "{{ [1, 'a', none, true, 1.5, {'k': 'v'}] }} {{ (1,) }} {{ ('a', 'b') }} {{ () }} {{ {'a': [1]} }}"
                 " {{ 'a' 'b' \"c\" }} {{ 1_000 }} {{ 0x1f }} {{ 1e3 }} {{ 2.5e-3 }} {{ True }} {{ None }}"),
    ("string_escapes", "{{ 'a\\nb\\tc\\\\d\\'e\\x41\\u00e9\\U0001F600\\101\\q' }}"),
    ("floats", "{{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ 0.00001 }} {{ 1/3 }} {{ 2.0 }} {{ -0.0 }}"
               " {{ 123456789.123 }} {{ 1e-7 }} {{ 10 / 4 }} {{ 3 * 1.1 }} {{ 1e300 * 10 }}"),
    ("repr_strings", "{{ ['it\\'s', 'a\"b', 'both\\'\"', 'nl\\n', 'tab\\t', '\\x01', 'é'] }}"),
    ("tuple_output", "{{ 1, 2 }}"),
    ("getattr_getitem", "{{ d.k }} {{ d['k'] }} {{ d.n }} {{ nested.a.b[1].c }} {{ nested['a']['b'].0 }} {{ l[-1] }}"
                        " {{ l[5] }}|{{ d.missing }}|{{ s[0] }}{{ s[-1] }} {{ msgs[0].role }}"),
    ("dict_method_shadow", "{{ d['items'] }} {{ d.get('k') }} {{ d.get('zz', 'dflt') }} {{ d.get('zz') }}"
                           " {{ d.keys() | list }} {{ d.values() | list }} {{ d.items() | list }}"),
    ("slicing", "{{ s[1:4] }} {{ s[::-1] }} {{ s[-3:] }} {{ s[:-3] }} {{ l[::2] }} {{ l[1:] }} {{ l[::-1] }}"
                " {{ s[10:2:-2] }} {{ l[:100] }} {{ words[-2::-1] }}"),
    ("undefined_print", "[{{ missing }}][{{ missing is defined }}][{{ missing is undefined }}][{{ missing ~ 'x' }}]"
                        "[{{ missing | default('dflt') }}][{{ none | default('dflt') }}][{{ '' | default('dflt', true) }}]"),
    ("none_attr", "[{{ no.content }}][{{ no.content is defined }}]"),
    ("macro", "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}"
              "{{ greet('Ann') }} {{ greet('Bob', '?') }} {{ greet(punct='.', name='Cy') }} {{ greet() }}"),
    ("macro_sees_globals", "{% macro f() %}[{{ n }}{{ g }}]{% endmacro %}{% set g = 3 %}{{ f() }}{% set g = 4 %}{{ f() }}"),
    ("filter_block", "{% filter upper %}abc {{ s }}{% endfilter %}"),
    ("generation_block", "{% for m in msgs %}{% generation %}{{ m.role }}{% set inner = 1 %}{% endgeneration %}"
                         "[{{ inner is defined }}];{% endfor %}"),
    # filters
    ("filters_string", "{{ '  x y  ' | trim }}|{{ 'xxhixx' | trim('x') }}|{{ s | upper }}|{{ uni | lower }}"
                       "|{{ uni | upper }}|{{ 'hello WORLD' | capitalize }}|{{ 'hello-world foo(bar)' | title }}"
                       "|{{ 'a.b.c' | replace('.', '-') }}|{{ 'aaa' | replace('a', 'b', 2) }}|{{ 'abc' | replace('', '-') }}"),
    ("filters_seq", "{{ l | length }} {{ s | length }} {{ d | length }} {{ l | first }} {{ l | last }} {{ s | first }}"
                    " {{ words | join(', ') }} {{ l | join }} {{ s | list }} {{ l | reverse | list }} {{ s | reverse }}"
                    " {{ d | list }} {{ d | items | list }} {{ msgs | map(attribute='role') | join('/') }}"),
    ("filters_select", "{{ msgs | selectattr('role', 'equalto', 'user') | map(attribute='content') | list }}"
                       " {{ msgs | rejectattr('role', 'eq', 'user') | list | length }} {{ l | select('odd') | list }}"
                       " {{ [0, 1, '', 'a', none] | select | list }} {{ l | reject('gt', 1) | list }}"
                       " {{ msgs | selectattr('tool_calls') | list | length }} {{ words | map('upper') | list }}"
                       " {{ msgs | map(attribute='missing', default='-') | list }}"),
    ("filters_numbers", "{{ neg | abs }} {{ f | round }} {{ 2.5 | round }} {{ 3.5 | round }} {{ 2.675 | round(2) }}"
                        " {{ 3 | round }} {{ 2.4 | round(0, 'ceil') }} {{ 2.6 | round(0, 'floor') }} {{ '42' | int }}"
                        " {{ '42.9' | int }} {{ 'x' | int }} {{ 'x' | int(5) }} {{ f | int }} {{ '1.5' | float }}"
                        " {{ 'x' | float }} {{ n | float }} {{ n | string }} {{ l | string }} {{ ' 0x1A ' | int(0, 16) }}"),
    ("filters_tojson", "{{ d | tojson }} {{ l | tojson }} {{ 'é\"\\n<>' | tojson }} {{ none | tojson }} {{ 1.5 | tojson }}"
                       " {{ [true, false] | tojson }} {{ msgs[2] | tojson(indent=2) }} {{ d | tojson(sort_keys=true) }}"
                       " {{ d | tojson(separators=(',', ':')) }} {{ 'é😀' | tojson(ensure_ascii=true) }}"
                       " {{ {} | tojson(indent=2) }} {{ [[], {}] | tojson(indent='\\t') }} {{ (1, 2) | tojson }}"),
    ("filters_misc", "{{ '<a href=\"x\">&\\'' | escape }} {{ '<b>' | e }} {{ '<b>' | safe }} {{ l | count }}"
                     " {{ 'line1\\nline2\\n\\nline4' | indent(2) }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent('>', blank=true) }}"),
    # tests
    ("tests", "{{ s is string }} {{ n is number }} {{ f is number }} {{ t is number }} {{ n is integer }} {{ t is integer }}"
              " {{ f is float }} {{ d is mapping }} {{ l is mapping }} {{ l is sequence }} {{ s is sequence }}"
              " {{ d is sequence }} {{ n is sequence }} {{ l is iterable }} {{ n is iterable }} {{ missing is iterable }}"
              " {{ missing is sequence }} {{ no is none }} {{ z is none }} {{ t is boolean }} {{ t is true }}"
              " {{ 1 is true }} {{ false is false }} {{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }}"
              " {{ 9 is divisibleby(4) }} {{ 2 is in l }} {{ 'a' is eq 'a' }} {{ 1 is equalto 2 }} {{ 3 is gt 2 }}"
              " {{ 3 is ge 3 }} {{ 2 is lt 1 }} {{ 2 is le 2 }} {{ 1 is ne 2 }} {{ s is lower }} {{ 'ABC' is upper }}"
              " {{ none is sameas none }} {{ range is callable }} {{ s is not string }} {{ n is not none }}"),
    # methods
    ("str_methods", "{{ s.upper() }} {{ s.startswith('hé') }} {{ s.startswith(('x', 'h')) }} {{ s.endswith('ld') }}"
                    " {{ s.split(' ') }} {{ ' a  b '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'a b c'.rsplit(' ', 1) }}"
                    " {{ 'a,b,,c'.split(',') }} {{ '  a b  '.split(None, 1) }} {{ '  a b  '.rsplit(None, 1) }}"
                    " {{ '\\n\\nx\\n'.strip() }} {{ 'xxhixx'.lstrip('x') }} {{ 'xxhixx'.rstrip('x') }} {{ s.find('w') }}"
                    " {{ s.find('zz') }} {{ s.rfind('o') }} {{ s.count('l') }} {{ s.replace('l', 'L', 1) }}"
                    " {{ s.title() }} {{ 'ab'.join(['x', 'y', 'z']) }} {{ 'a\\nb\\r\\nc'.splitlines() }}"
                    " {{ s.index('w') }} {{ 'abc'.removeprefix('a') }} {{ 'abc'.removesuffix('c') }}"
                    " {{ 'a=b=c'.partition('=') }} {{ 'a=b=c'.rpartition('=') }} {{ '  '.isspace() }} {{ '123'.isdigit() }}"
                    " {{ s.capitalize() }} {{ s.lower() }} {{ 'x' * 3 }} {{ [1] * 2 }} {{ l.index(1) }} {{ l.count(3) }}"),
    ("qwen_think_parse", "{% set c = '<think>\\nA\\n</think>\\n\\nB' %}{{ c.split('</think>')[-1].lstrip('\\n') }}|"
                         "{{ c.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}"),
    ("globals", "{{ range(3) | list }} {{ range(1, 7, 2) | list }} {{ range(5, 0, -2) | list }} {{ dict(a=1, b='x') }}"
                " {{ namespace(x=1).x }}"),
    ("raise", "{% if t %}{{ raise_exception('Roles must alternate: ' ~ n) }}{% endif %}never"),
    ("strftime_year", "{{ strftime_now('%Y') | length }}"),
    # errors jinja2 raises while rendering
    ("err_add_str_int", "{{ 'a' + 1 }}"),
    ("err_undefined_attr", "{{ missing.attr }}"),
    ("err_undefined_math", "{{ missing + 1 }}"),
    ("err_zero_division", "{{ 1 / z }}"),
    ("err_unsafe_append", "{{ l.append(4) }}"),
    ("err_not_callable", "{{ s() }}"),
    ("err_none_iter", "{% for x in no %}{% endfor %}"),
    ("err_in_none", "{{ 'a' in no }}"),
    ("err_tojson_undefined", "{{ missing | tojson }}"),
    ("err_compare", "{{ 'a' < 1 }}"),
    ("err_items_list", "{{ l | items | list }}"),
    ("err_slice_bool", "{{ t[1:] }}"),
    ("err_slice_dict", "{{ d[1:] }}"),
    ("err_set_non_namespace", "{% set d.k = 1 %}"),
    # syntax errors
    ("err_unknown_filter", "{{ s | frobnicate }}"),
    ("err_unknown_test", "{{ s is palindrome }}"),
    ("err_unclosed_if", "{% if t %}x"),
    ("err_unclosed_for", "{% for x in l %}{% if t %}{% endif %}"),
    ("err_bad_syntax", "{{ 1 + }}"),
    ("err_unexpected_end", "{% endfor %}"),
    ("err_unclosed_tag", "{{ n "),
    ("err_unclosed_comment", "{# x "),
    ("err_bad_paren", "{{ (1, 2] }}"),
    ("err_unterminated_string", "{{ 'abc }}"),
    ("err_include", "{% include 'x' %}"),
]


def synthetic_cases():
    cases = []
    for name, source in SYNTHETIC:
        case = {"name": name, "template": source}
        case.update(render_case(source, CTX))
        cases.append(case)
    return {"context": CTX, "cases": cases}


# ---- seeded random templates -----------------------------------------------------------------

def random_ws(rng):
    return "".join(rng.choice([" ", "  ", "\t", "\n", " \n", "\n  ", "\n\t ", "x", "y z", "\u00a0", ""])
                   for _ in range(rng.randint(0, 3)))


def random_tag(rng, body, closer=False):
    left = rng.choice(["", "", "-", "+"])
    right = rng.choice(["", "", "-", "+"])
    return "{%" + left + " " + body + " " + right + "%}"


def random_block(rng, depth):
    parts = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["text", "text", "var", "comment", "if", "for", "set"] if depth < 3 else ["text", "var", "comment"])
        parts.append(random_ws(rng))
        if kind == "text":
            parts.append(random_ws(rng))
        elif kind == "var":
            parts.append("{{" + rng.choice(["", "-", "+"]) + " " + rng.choice(["v", "n", "'s'", "x"]) + " " +
                         rng.choice(["", "-"]) + "}}")
        elif kind == "comment":
            parts.append("{#" + rng.choice(["", "-", "+"]) + " c " + rng.choice(["", "-", "+"]) + "#}")
        elif kind == "if":
            parts.append(random_tag(rng, "if " + rng.choice(["x", "not x", "true", "n > 1"])))
            parts.append(random_block(rng, depth + 1))
            if rng.random() < 0.5:
                parts.append(random_ws(rng) + random_tag(rng, "else"))
                parts.append(random_block(rng, depth + 1))
            parts.append(random_ws(rng) + random_tag(rng, "endif"))
        elif kind == "for":
            parts.append(random_tag(rng, "for i in xs"))
            parts.append(random_block(rng, depth + 1))
            parts.append(random_ws(rng) + random_tag(rng, "endfor"))
        else:
            parts.append(random_tag(rng, "set n = n + 1"))
        parts.append(random_ws(rng))
    return "".join(parts)


NUM_ATOMS = ["0", "1", "2", "3", "7", "13", "-4", "0.5", "2.25", "-1.5", "1e3", "0.1", "n", "f", "z", "neg", "true"]
STR_ATOMS = ["'a'", "'b c'", "''", "s", "e", "'Ab-cd ef'", "uni", "'  pad  '", "'x,y,,z'"]
LIST_ATOMS = ["l", "words", "[1, 2]", "(1, 'x')", "[]", "[3, 'b', none]"]
ANY_ATOMS = ["d", "no", "none", "true", "false", "{'k': 1}", "missing", "t", "msgs[1]", "nested.a"]
NUM_BINOPS = ["+", "-", "*", "/", "//", "%"]
COMPARE = ["==", "!=", "<", "<=", ">", ">="]
STR_FILTERS = ["upper", "lower", "trim", "capitalize", "title", "reverse", "first", "last", "string", "length",
               "list | join('|')", "replace('a', 'A')", "trim('a')"]
STR_METHODS = [".upper()", ".lower()", ".strip()", ".lstrip(' a')", ".rstrip()", ".split(' ')", ".split()",
               ".split(',', 1)", ".rsplit(' ', 1)", ".startswith('a')", ".endswith(('d', 'z'))", ".find('b')",
               ".count('a')", ".replace(' ', '_')", ".title()", ".capitalize()", ".splitlines()", "[0]", "[-1]",
               "[1:]", "[::-1]", "[:3]", "[1:-1:2]", "[5]"]
TESTS = ["defined", "none", "string", "number", "integer", "float", "mapping", "sequence", "iterable", "odd",
         "even", "true", "false", "boolean", "in l", "eq 2", "divisibleby 3", "lower", "upper"]


def gen(rng, kind, depth):
    """A random expression of the given Python type (num, str, list, bool, any)."""
    if kind == "any":
        kind = rng.choice(["num", "str", "list", "bool", "atom"])
    if kind == "atom" or depth <= 0:
        return rng.choice({"num": NUM_ATOMS, "str": STR_ATOMS, "list": LIST_ATOMS, "bool": ["t", "true", "false", "z"],
                           "atom": ANY_ATOMS}[kind])
    d = depth - 1
    r = rng.randrange(6)
    if kind == "num":
        return [lambda: gen(rng, "num", d) + " " + rng.choice(NUM_BINOPS) + " " + gen(rng, "num", d),
                lambda: rng.choice(["2", "3", "-2", "0.5"]) + " ** " + rng.choice(["0", "1", "2", "3", "-1"]),
                lambda: "-" + gen(rng, "num", d),
                lambda: "(" + gen(rng, rng.choice(["str", "list"]), d) + ") | " + rng.choice(["length", "count"]),
                lambda: "(" + gen(rng, "num", d) + ") | " + rng.choice(["abs", "round", "int", "float", "round(1)",
                                                                      "round(0, 'floor')", "string | int"]),
                lambda: "(" + gen(rng, "num", d) + " if " + gen(rng, "bool", d) + " else " + gen(rng, "num", d) + ")",
                ][r]()
    if kind == "str":
        return [lambda: gen(rng, "any", d) + " ~ " + gen(rng, "any", d),
                lambda: gen(rng, "str", d) + " + " + gen(rng, "str", d),
                lambda: "(" + gen(rng, "str", d) + ") | " + rng.choice(STR_FILTERS),
                lambda: "(" + gen(rng, "str", d) + ")" + rng.choice(STR_METHODS),
                lambda: "(" + gen(rng, "any", d) + ") | " + rng.choice(["string", "tojson", "tojson(indent=1)"]),
                lambda: "(" + gen(rng, "list", d) + ") | join(" + rng.choice(["", "', '", "'-'"]) + ")",
                ][r]()
    if kind == "list":
        return [lambda: gen(rng, "list", d) + " + " + gen(rng, "list", d),
                lambda: "(" + gen(rng, "list", d) + ")" + rng.choice(["[1:]", "[::-1]", "[:2]", "[-2:]", "[::2]"]),
                lambda: "(" + gen(rng, "str", d) + ").split(" + rng.choice(["", "' '", "'a'"]) + ")",
                lambda: "(" + gen(rng, "list", d) + ") | " + rng.choice(["reverse | list", "list", "map('string') | list",
                                                                       "select | list", "reject('none') | list"]),
                lambda: "range(" + rng.choice(["3", "0", "1, 5", "5, 0, -2"]) + ") | list",
                lambda: "[" + gen(rng, "any", d) + ", " + gen(rng, "any", d) + "]",
                ][r]()
    if kind == "bool":
        return [lambda: gen(rng, "num", d) + " " + rng.choice(COMPARE) + " " + gen(rng, "num", d),
                lambda: gen(rng, "str", d) + " " + rng.choice(COMPARE + ["in", "not in"]) + " " + gen(rng, "str", d),
                lambda: gen(rng, "any", d) + " " + rng.choice(["in", "not in"]) + " " + gen(rng, "list", d),
                lambda: "not " + gen(rng, "any", d),
                lambda: gen(rng, "any", d) + " " + rng.choice(["and", "or"]) + " " + gen(rng, "any", d),
                lambda: "(" + gen(rng, "any", d) + ") is " + rng.choice(["", "not "]) + rng.choice(TESTS),
                ][r]()
    raise ValueError(kind)


def fuzz_cases(seed, n_ws, n_expr):
    rng = random.Random(seed)
    ws_ctx = {"v": "V", "n": 1, "xs": [1, 2], "x": True}
    ws = []
    for i in range(n_ws):
        src = random_block(rng, 0)
        case = {"template": src}
        case.update(render_case(src, ws_ctx))
        ws.append(case)
    ex = []
    for i in range(n_expr):
        src = "{{ " + gen(rng, "any", 3) + " }}"
        case = {"template": src}
        case.update(render_case(src, CTX))
        ex.append(case)
    return {"seed": seed, "whitespace_context": ws_ctx, "whitespace": ws, "expression_context": CTX, "expressions": ex}


def write(out_dir, name, obj):
    path = os.path.join(out_dir, name)
    obj = {"generator": "tools/chatref/make_refs.py", "jinja2": jinja2.__version__, **obj}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--whitespace", type=int, default=400, help="random whitespace-control templates")
    ap.add_argument("--expressions", type=int, default=600, help="random expressions")
    ap.add_argument("--out", default=os.path.join(DATA, "refs"), help="output folder")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    write(args.out, "models.json", model_cases())
    write(args.out, "synthetic.json", synthetic_cases())
    write(args.out, "fuzz.json", fuzz_cases(args.seed, args.whitespace, args.expressions))


if __name__ == "__main__":
    main()
