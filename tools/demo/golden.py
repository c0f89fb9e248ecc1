#!/usr/bin/env python3
"""Golden continuations (and held-out perplexity) of a bundled demo model (models/demo, or the
MoE demo models/demo-moe), computed by transformers + peft on the dequantized INT4 checkpoint, on
the CPU in float32.

  golden.py [--model models/demo] [--out models/demo/golden.json]
            [--perplexity data/corpora [--bf16 models-work/demo/base] [--ppl-out FILE]]

The compressed-tensors weights are dequantized here, from docs/formats.md §2 (not with the
engine's code): u = (word >> 4i) & 0xF, q = u - 8, W = (q - z) * s rounded once to the scale
dtype. MoE checkpoints store one 2-D tensor per expert (`mlp.experts.N.{gate,up,down}_proj`);
transformers 5 holds them fused (`mlp.experts.gate_up_proj` [E, 2I, H] = gate rows then up rows,
`mlp.experts.down_proj` [E, H, I]), so they are stacked here after dequantization, and the experts
run in transformers' "eager" loop. Each greedy step recomputes the whole prefix (no KV cache) and
ignores EOS. The runs are the base and every adapter in MODEL/adapters (kjv, devil first).
"""
import argparse, json, math, os, re, sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures"))
import golden_pack  # noqa: E402  (round_to: float32 -> bf16/f16 rounding, numpy only)

PROMPTS = [  # (name, text): one in each corpus's style, one neutral, one ChatML
    ("austen", "It is a truth universally acknowledged, that a single man in possession"),
    ("kjv", "And God said unto Moses,"),
    ("devil", "LAWYER, n."),
    ("neutral", "The weather was"),
]
STEPS = 20
TORCH_DTYPE = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def unpack_codes(words, cols, bits):
    """int32 [rows, W] -> unsigned codes [rows, cols], LSB first (formats.md §2.5)."""
    w = np.ascontiguousarray(words).view(np.uint32)
    pf = 32 // bits
    shifts = (np.arange(pf, dtype=np.uint32) * bits)
    u = (w[:, :, None] >> shifts) & np.uint32((1 << bits) - 1)
    return u.reshape(w.shape[0], -1)[:, :cols].astype(np.int64)


def dequantize(tensors, prefix, wcfg, scale_dtype):
    """Dense float32 W[out, in] of one quantized Linear (formats.md §2.3, §2.6, §2.9)."""
    bits = wcfg["num_bits"]
    if wcfg.get("actorder") == "group" or f"{prefix}.weight_g_idx" in tensors:
        raise SystemExit(f"{prefix}: act-order checkpoints are not expected in the demo")
    out, inn = (int(v) for v in tensors[f"{prefix}.weight_shape"].tolist())
    q = unpack_codes(tensors[f"{prefix}.weight_packed"].numpy(), inn, bits) - (1 << (bits - 1))
    s = tensors[f"{prefix}.weight_scale"].float().numpy()
    groups = s.shape[1]
    gs = inn // groups
    if groups * gs != inn:
        raise SystemExit(f"{prefix}: {inn} columns not divisible into {groups} groups")
    z = np.zeros((out, groups), dtype=np.int64)
    if not wcfg["symmetric"]:
        zp = tensors[f"{prefix}.weight_zero_point"].numpy()
        z = unpack_codes(zp.T, out, bits).T - (1 << (bits - 1))
    col_group = np.arange(inn) // gs
    w = (q - z[:, col_group]).astype(np.float32) * s[:, col_group]
    return golden_pack.round_to(scale_dtype, w)


def fuse_experts(state, model_keys):
    """Per-expert 2-D weights -> transformers 5's fused 3-D expert parameters, where the model has
    them (`PREFIX.gate_up_proj`: each expert's gate rows then its up rows; `PREFIX.down_proj`)."""
    experts = {}
    for name in list(state):
        m = re.fullmatch(r"(.*\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight", name)
        if m and f"{m.group(1)}.gate_up_proj" in model_keys:
            experts.setdefault(m.group(1), {})[(int(m.group(2)), m.group(3))] = state.pop(name)
    for prefix, w in experts.items():
        n = 1 + max(e for e, _ in w)
        state[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat([w[(e, "gate_proj")], w[(e, "up_proj")]]) for e in range(n)])
        state[f"{prefix}.down_proj"] = torch.stack([w[(e, "down_proj")] for e in range(n)])
    return state


def eager_experts(model):
    """The plain per-expert loop for MoE models (transformers' default is grouped_mm)."""
    if getattr(model.config, "num_experts", 0):
        model.set_experts_implementation("eager")
    return model


def load_int4_model(model_dir):
    """A float32 model (Qwen3ForCausalLM, Qwen2MoeForCausalLM, ...) holding the dequantized
    weights and every other tensor as is."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg_json = json.load(open(os.path.join(model_dir, "config.json")))
    qc = cfg_json["quantization_config"]
    if qc["quant_method"] != "compressed-tensors" or qc["format"] != "pack-quantized":
        raise SystemExit(f"unexpected quantization_config: {qc['quant_method']}/{qc['format']}")
    (group,) = qc["config_groups"].values()
    wcfg = group["weights"]
    tensors = load_file(os.path.join(model_dir, "model.safetensors"))
    state = {}
    for name, t in tensors.items():
        if name.endswith(".weight_packed"):
            prefix = name[:-len(".weight_packed")]
            scale_dtype = str(tensors[f"{prefix}.weight_scale"].dtype).replace("torch.", "")
            state[f"{prefix}.weight"] = torch.from_numpy(dequantize(tensors, prefix, wcfg, scale_dtype))
        elif not name.rsplit(".", 1)[-1].startswith("weight_"):
            state[name] = t.float()
    cfg = AutoConfig.from_pretrained(model_dir)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    state = fuse_experts(state, set(model.state_dict()))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise SystemExit(f"state mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    return eager_experts(model).eval(), len([n for n in tensors if n.endswith(".weight_packed")])


def load_bf16_model(path):
    from transformers import AutoModelForCausalLM
    return eager_experts(AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager")).eval()


def adapter_names(model_dir):
    """Adapters in MODEL/adapters: kjv and devil first (in that order), then any other, sorted."""
    root = os.path.join(model_dir, "adapters")
    found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))) \
        if os.path.isdir(root) else []
    return [a for a in ("kjv", "devil") if a in found] + [a for a in found if a not in ("kjv", "devil")]


def with_adapter(base, adapter_dir):
    from peft import PeftModel
    return PeftModel.from_pretrained(base, adapter_dir).eval()


@torch.no_grad()
def greedy(model, ids, steps):
    ids, out, margins = list(ids), [], []
    for _ in range(steps):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        top = torch.topk(logits, 2)
        tok = int(top.indices[0])
        out.append(tok)
        margins.append(round(float(top.values[0] - top.values[1]), 5))
        ids.append(tok)
    return out, margins


@torch.no_grad()
def perplexity(model, tokens, ctx=256, batch=16):
    """Same windows as train.py's evaluate: non-overlapping ctx windows, each from position 0."""
    n = (len(tokens) - 1) // ctx
    x_all, y_all = tokens[:n * ctx].view(n, ctx), tokens[1:n * ctx + 1].view(n, ctx)
    total = 0.0
    for i in range(0, n, batch):
        logits = model(input_ids=x_all[i:i + batch]).logits
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y_all[i:i + batch].reshape(-1),
            reduction="sum").item()
    loss = total / (n * ctx)
    return {"loss": round(loss, 4), "ppl": round(math.exp(loss), 3), "tokens": n * ctx}


def make_golden(args, tok):
    from transformers import __version__ as tf_version
    import peft
    base, n_quant = load_int4_model(args.model)
    prompts = []
    for name, text in PROMPTS:
        prompts.append({"name": name, "text": text, "ids": tok.encode(text).ids})
    chat = tok.encode("<|im_start|>user\nWhat is a lawyer?<|im_end|>\n<|im_start|>assistant\n")
    prompts.append({"name": "chat", "text": None, "messages": [
        {"role": "user", "content": "What is a lawyer?"}], "ids": chat.ids})
    runs = []
    runs_to_make = [("base", None)] + [(a, f"adapters/{a}") for a in adapter_names(args.model)]
    for run, adapter in runs_to_make:
        model = base if adapter is None else with_adapter(load_int4_model(args.model)[0],
                                                          os.path.join(args.model, adapter))
        outs = []
        for p in prompts:
            ids, margins = greedy(model, p["ids"], STEPS)
            outs.append({"prompt": p["name"], "ids": ids, "text": tok.decode(ids),
                         "margins": margins})
            print(f"[{run}] {p['name']}: {tok.decode(ids)!r}", flush=True)
        runs.append({"name": run, "adapter": adapter, "continuations": outs})
    golden = {
        "format": "nibble-demo-golden/1",
        "about": "greedy continuations of the INT4 demo model (dequantized per formats.md §2) in "
                 "transformers + peft, float32 on the CPU, eager attention; each step recomputes "
                 "the whole prefix, EOS ignored; margins = top1 - top2 logit at each step",
        "model": os.path.normpath(args.model), "quantized_modules": n_quant, "steps": STEPS,
        "versions": {"torch": torch.__version__, "transformers": tf_version,
                     "peft": peft.__version__},
        "prompts": prompts, "runs": runs}
    with open(args.out, "w") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.out}")


def held_out_tokens(tok, corpora, name):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train import encode_file
    return encode_file(tok, os.path.join(corpora, f"{name}.heldout.txt"))


def make_perplexity(args, tok):
    """Held-out perplexity: INT4 (dequantized) base on all three corpora, each adapter on its own
    corpus; the same for the bf16 checkpoint when --bf16 is given."""
    data = {c: held_out_tokens(tok, args.perplexity, c) for c in ("austen", "kjv", "devil")}
    result = {}
    variants = [("int4", lambda: load_int4_model(args.model)[0])]
    if args.bf16:
        variants.append(("bf16", lambda: load_bf16_model(args.bf16)))
    for label, load in variants:
        base = load()
        res = {"base": {c: perplexity(base, data[c]) for c in data}}
        for name in adapter_names(args.model):   # each adapter on its own corpus
            res[name] = {name: perplexity(with_adapter(load(), os.path.join(
                args.model, "adapters", name)), data[name])}
        result[label] = res
        print(label, json.dumps(res), flush=True)
    out = args.ppl_out or os.path.join(args.model, "perplexity.json")
    with open(out, "w") as f:
        json.dump({"about": "held-out loss/perplexity, float32 on the CPU, ctx 256 windows "
                            "(tools/demo/golden.py --perplexity)", **result}, f, indent=1)
        f.write("\n")
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="models/demo")
    ap.add_argument("--out", default=None, help="default MODEL/golden.json")
    ap.add_argument("--perplexity", metavar="CORPORA_DIR", help="also held-out perplexity")
    ap.add_argument("--bf16", help="bf16 checkpoint to compare in --perplexity")
    ap.add_argument("--ppl-out", help="default MODEL/perplexity.json")
    ap.add_argument("--skip-golden", action="store_true")
    args = ap.parse_args()
    args.out = args.out or os.path.join(args.model, "golden.json")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    if not args.skip_golden:
        make_golden(args, tok)
    if args.perplexity:
        make_perplexity(args, tok)


if __name__ == "__main__":
    main()
