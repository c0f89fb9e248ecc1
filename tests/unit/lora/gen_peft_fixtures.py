#!/usr/bin/env python3
"""Generates the PEFT reference fixtures under tests/unit/lora/data/ (committed; CI needs no Python).

PEFT itself is the oracle: for a tiny Llama (hidden 16, vocab 37, 4 query heads of 6, GQA k/v 6,
MLP 40, 3 layers) plus a few extra modules (a `qq_proj` for regex anchoring, MoE-style
`mlp.experts.E.gate_proj` in layer 1 for the lazy layer-index regex), it records

  matching.json        for many LoraConfigs: the config as adapter_config.json holds it, and the
                       modules PEFT wrapped with their r, lora_alpha and scaling;
  <adapter>/           real `save_pretrained` outputs (adapter_config.json +
                       adapter_model.safetensors) and golden.json: inputs and the LoRA deltas PEFT
                       computes (module(x) - base_layer(x)), embedding deltas for token ids, and
                       modules_to_save outputs.

Run: python3 tests/unit/lora/gen_peft_fixtures.py   (needs torch, transformers, peft)
Made with peft 0.21.2, transformers 5.23.0, torch 2.15.0.
"""
import json
import os
import shutil
import sys

import torch
from torch import nn

import peft
import transformers
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import LlamaConfig, LlamaForCausalLM

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


class Expert(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_proj = nn.Linear(16, 12, bias=False)


def base_model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=37, hidden_size=16, intermediate_size=40, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=1, head_dim=6, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    # Extra sites: anchoring (qq_proj must not match "q_proj") and nested indices (experts.E).
    model.model.layers[0].self_attn.qq_proj = nn.Linear(16, 24, bias=False)
    model.model.layers[1].mlp.experts = nn.ModuleList([Expert(), Expert()])
    return model


def module_list(model):
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            out.append({"name": name, "kind": "linear", "out": m.out_features, "in": m.in_features})
        elif isinstance(m, nn.Embedding):
            out.append({"name": name, "kind": "embedding", "out": m.embedding_dim, "in": m.num_embeddings})
    return out


def config_json(cfg):
    d = cfg.to_dict()
    for k, v in list(d.items()):
        if isinstance(v, set):
            d[k] = sorted(v)
        elif hasattr(v, "value"):  # enums
            d[k] = v.value
    return json.loads(json.dumps(d, default=str))


def wrapped(peft_model):
    out = {}
    for name, m in peft_model.named_modules():
        if isinstance(m, LoraLayer) and "default" in m.r:
            name = name.removeprefix("base_model.model.")
            out[name] = {"r": m.r["default"], "alpha": m.lora_alpha["default"], "scaling": m.scaling["default"]}
    return out


MATCHING_CONFIGS = [
    dict(target_modules=["q_proj", "v_proj"], r=8, lora_alpha=16),
    dict(target_modules=["q_proj", "v_proj"], r=8, lora_alpha=16, use_rslora=True),
    dict(target_modules=["q_proj", "k_proj", "down_proj"], r=8, lora_alpha=8,
         rank_pattern={"q_proj": 4, "layers.1.self_attn.q_proj": 2}, alpha_pattern={"k_proj": 3}),
    dict(target_modules=["q_proj", "k_proj", "down_proj"], r=8, lora_alpha=8,
         rank_pattern={"layers.1.self_attn.q_proj": 2, "q_proj": 4}, alpha_pattern={"layers.2.self_attn.k_proj": 5.5}),
    dict(target_modules=["q_proj", "qq_proj"], r=4, lora_alpha=4, rank_pattern={"q_proj": 2, "qq_proj": 6}),
    dict(target_modules=["q_proj", "gate_proj"], r=4, lora_alpha=8, rank_pattern={r"layers\.[12]\..*": 2},
         alpha_pattern={"gate_proj": 2}),
    dict(target_modules=r"model\.layers\.[01]\.self_attn\.(q|v)_proj", r=4, lora_alpha=4),
    dict(target_modules=r".*\.(q|qq)_proj", r=4, lora_alpha=4),
    dict(target_modules="all-linear", r=4, lora_alpha=4),
    dict(target_modules="all-linear", r=4, lora_alpha=4, exclude_modules=["o_proj", "model.layers.2.mlp.up_proj"]),
    dict(target_modules=["q_proj", "v_proj", "gate_proj", "embed_tokens"], r=4, lora_alpha=4,
         exclude_modules=r".*layers\.0\..*"),
    dict(target_modules=["q_proj", "v_proj", "gate_proj"], r=4, lora_alpha=4, layers_to_transform=1),
    dict(target_modules=["q_proj", "v_proj", "gate_proj"], r=4, lora_alpha=4, layers_to_transform=[0, 2],
         layers_pattern="layers"),
    dict(target_modules=["q_proj", "v_proj", "gate_proj"], r=4, lora_alpha=4, layers_to_transform=[1],
         layers_pattern=["h", "layers"]),
    dict(target_modules=["q_proj", "model.layers.2.self_attn.v_proj"], r=4, lora_alpha=4, layers_to_transform=[0]),
    dict(target_modules=["q_proj", "v_proj", "lm_head"], r=4, lora_alpha=4, modules_to_save=["lm_head"]),
    dict(target_modules=["embed_tokens", "lm_head", "o_proj"], r=5, lora_alpha=10),
]


def gen_matching():
    cases = []
    for kw in MATCHING_CONFIGS:
        cfg = LoraConfig(task_type="CAUSAL_LM", **kw)
        cfg_json = config_json(cfg)
        try:
            pm = get_peft_model(base_model(), cfg)
            cases.append({"config": cfg_json, "wrapped": wrapped(pm)})
        except ValueError as e:  # e.g. nothing matched
            cases.append({"config": cfg_json, "wrapped": {}, "peft_error": str(e)})
    return {"modules": module_list(base_model()), "cases": cases,
            "versions": {"peft": peft.__version__, "transformers": transformers.__version__}}


def randomize(pm, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 1.9 - 0.95)


def golden(pm, dtype):
    torch.manual_seed(7)
    g = {"linear": {}, "embedding": {}, "modules_to_save": {}}
    ids = torch.tensor([0, 36, 5, 17, 5, 30])
    for name, m in pm.named_modules():
        short = name.removeprefix("base_model.model.")
        if isinstance(m, LoraLayer) and isinstance(m.get_base_layer(), nn.Linear):
            x = (torch.rand(3, m.in_features) * 2 - 1).to(dtype)
            with torch.no_grad():
                delta = (m(x) - m.get_base_layer()(x)).float()
            g["linear"][short] = {"x": x.float().tolist(), "delta": delta.tolist()}
        elif isinstance(m, LoraLayer) and isinstance(m.get_base_layer(), nn.Embedding):
            with torch.no_grad():
                delta = (m(ids) - m.get_base_layer()(ids)).float()
            g["embedding"][short] = {"ids": ids.tolist(), "delta": delta.tolist()}
        elif type(m).__name__ == "ModulesToSaveWrapper":
            mod = m.modules_to_save["default"]
            with torch.no_grad():
                if isinstance(mod, nn.Embedding):
                    y = mod(ids).float()
                    g["modules_to_save"][short] = {"ids": ids.tolist(), "y": y.tolist()}
                else:
                    x = (torch.rand(2, mod.in_features) * 2 - 1).to(dtype)
                    g["modules_to_save"][short] = {"x": x.float().tolist(), "y": mod(x).float().tolist()}
    return g


def gen_adapter(name, cfg, dtype, seed):
    pm = get_peft_model(base_model(), cfg)
    randomize(pm, seed)
    pm = pm.to(dtype)
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    pm.save_pretrained(d)
    # Only the two files nibble reads (README.md is PEFT's model card).
    for f in os.listdir(d):
        if f not in ("adapter_config.json", "adapter_model.safetensors"):
            os.remove(os.path.join(d, f))
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(golden(pm, dtype), f)


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "matching.json"), "w") as f:
        json.dump(gen_matching(), f, indent=1)
    gen_adapter("peft_full_f32", LoraConfig(
        task_type="CAUSAL_LM", r=8, lora_alpha=16, init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens"],
        rank_pattern={"q_proj": 4, "layers.1.self_attn.k_proj": 2, "embed_tokens": 6},
        alpha_pattern={"down_proj": 5}, modules_to_save=["lm_head"]), torch.float32, 1)
    gen_adapter("peft_rslora_bf16", LoraConfig(
        task_type="CAUSAL_LM", r=6, lora_alpha=3, use_rslora=True, init_lora_weights=False,
        target_modules=r"model\.layers\.[02]\.(self_attn\.(q|v)_proj|mlp\.down_proj)",
        modules_to_save=["embed_tokens"]), torch.bfloat16, 2)
    print("wrote", OUT, file=sys.stderr)


if __name__ == "__main__":
    main()
