#!/usr/bin/env python3
"""Trains the bundled MoE demo (models/demo-moe): a Qwen2-MoE-architecture model (routed experts
plus a shared expert, one dense layer) on Jane Austen, and a LoRA adapter on the King James Bible
that adapts the routed experts, the shared expert, the dense MLP and attention. It reuses the
dense demo's tokenizer (models/demo) and everything of train.py but the `MoeRecipe` below.

  train_moe.py model --corpora data/corpora --tokenizer models/demo --out WORK_DIR
                     [--base-seconds 120 --lora-seconds 50 --max-steps N --tiny]

Writes WORK_DIR/base (bf16, config + tokenizer), WORK_DIR/adapters/kjv (PEFT, bf16) and
WORK_DIR/metrics.json. Next to train.py's numbers, every held-out evaluation records the expert
load: for each MoE layer, the share of the top-k routing assignments each expert received
(shares sum to 1; even is 1/num_experts), and `expert_load_max` = the largest share times
num_experts (1.0 = perfectly even). Training adds a router load-balancing loss times --aux-coef
(`balance_loss`: Switch-Transformer style, per layer).
"""
import argparse, os, re, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train  # noqa: E402  (the dense demo's training code: data, fit loop, saving, evaluation)

# LoRA targets: attention and every 2-D MLP projection by module name (the shared expert's and the
# dense layer's gate/up/down_proj), and the routed experts' fused 3-D parameters by parameter
# name. PEFT wraps the experts module once per target_parameters entry, in this order, so the
# saved keys are `mlp.experts.base_layer.lora_{A,B}` for gate_up_proj and `mlp.experts.lora_{A,B}`
# for down_proj (tools/demo/README.md: the MoE demo, "The adapter").
MOE_LORA_MODULES = train.LORA_TARGETS
MOE_LORA_PARAMETERS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def make_moe_config(vocab_size, tiny, aux_coef):
    """Qwen1.5-MoE-style: top-k routing without renormalising the top-k probabilities, a sigmoid-
    gated shared expert in every MoE layer, qkv bias; layer 0 is a dense MLP (mlp_only_layers).
    Every Linear's input width is a multiple of 128, for INT4 groups of 128."""
    from transformers import Qwen2MoeConfig
    dims = dict(hidden_size=128, num_hidden_layers=2, intermediate_size=256,
                num_attention_heads=2, num_key_value_heads=1, moe_intermediate_size=128,
                shared_expert_intermediate_size=256, num_experts=8, num_experts_per_tok=2,
                mlp_only_layers=[0]) if tiny else dict(
        hidden_size=256, num_hidden_layers=4, intermediate_size=1024,
        num_attention_heads=4, num_key_value_heads=2, moe_intermediate_size=256,
        shared_expert_intermediate_size=512, num_experts=8, num_experts_per_tok=2,
        mlp_only_layers=[0])
    return Qwen2MoeConfig(vocab_size=vocab_size, max_position_embeddings=512, rms_norm_eps=1e-6,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                          tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
                          pad_token_id=0, use_sliding_window=False, attention_dropout=0.0,
                          qkv_bias=True, norm_topk_prob=False, decoder_sparse_step=1,
                          output_router_logits=False, router_aux_loss_coef=aux_coef, **dims)


def balance_loss(router_logits, top_k):
    """Switch-Transformer load balancing, computed per MoE layer and averaged: num_experts *
    sum_i share_i * prob_i, with share_i the fraction of the layer's top-k assignments that went to
    expert i and prob_i its mean router probability; 1.0 when even. (transformers'
    load_balancing_loss_func pools all layers before the product, so an expert overloaded in one
    layer and idle in another looks balanced to it.)"""
    import torch
    losses = []
    for logits in router_logits:
        probs = torch.softmax(logits.float(), dim=-1)                        # [tokens, E]
        n_exp = probs.shape[-1]
        top = torch.topk(probs, top_k, dim=-1).indices.reshape(-1)
        share = torch.bincount(top, minlength=n_exp).float() / top.numel()
        losses.append(n_exp * (share * probs.mean(dim=0)).sum())
    return torch.stack(losses).mean()


def routers(model):
    """(layer index, router module) of every MoE layer, also inside a PeftModel."""
    out = []
    for name, mod in model.named_modules():
        if type(mod).__name__ == "Qwen2MoeTopKRouter":
            out.append((int(re.search(r"layers\.(\d+)\.", name).group(1)), mod))
    return sorted(out, key=lambda t: t[0])


class MoeRecipe(train.Recipe):
    model_dir = "models/demo-moe"
    adapters = ("kjv",)

    def __init__(self, args):
        self.aux_coef = args.aux_coef
        self.experts_impl = args.experts_impl
        self.last = None
        self.top_k = None

    def config(self, vocab_size, tiny):
        cfg = make_moe_config(vocab_size, tiny, self.aux_coef)
        self.top_k = cfg.num_experts_per_tok
        return cfg

    def new_model(self, cfg):
        from transformers import Qwen2MoeForCausalLM
        model = Qwen2MoeForCausalLM(cfg)
        model.set_experts_implementation(self.experts_impl)
        return model

    def load_base(self, path, device):
        model = train.load_base(path, device)
        model.set_experts_implementation(self.experts_impl)
        self.top_k = model.config.num_experts_per_tok
        return model

    def loss(self, model, x, y):
        import torch.nn.functional as F
        out = model(input_ids=x, output_router_logits=True)
        logits = out.logits
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        aux = balance_loss(out.router_logits, self.top_k)
        self.last = (ce.detach(), aux.detach())
        return ce + self.aux_coef * aux

    def train_stats(self):
        if self.last is None:
            return {}
        return {"train_ce": round(self.last[0].item(), 4), "train_aux": round(self.last[1].item(), 4)}

    def lora_config(self, args):
        # PEFT's wrapper for nn.Parameter targets refuses lora_dropout != 0; all layers share it.
        from peft import LoraConfig
        return LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, lora_dropout=0.0,
                          target_modules=MOE_LORA_MODULES, target_parameters=MOE_LORA_PARAMETERS,
                          bias="none", task_type="CAUSAL_LM")

    def evaluate(self, model, tokens, args):
        """train.evaluate plus the expert load, counted by hooks on the routers during it."""
        import torch
        counts, hooks = {}, []
        for layer, router in routers(model):
            counts[layer] = torch.zeros(router.num_experts, dtype=torch.long, device=args.device)

            def hook(mod, inputs, output, layer=layer):
                counts[layer] += torch.bincount(output[2].reshape(-1),
                                                minlength=mod.num_experts)
            hooks.append(router.register_forward_hook(hook))
        try:
            ev = train.evaluate(model, tokens, args.ctx, args.eval_batch, args.device)
        finally:
            for h in hooks:
                h.remove()
        load = {str(layer): [round(v / max(1, int(c.sum())), 4) for v in c.tolist()]
                for layer, c in counts.items()}
        ev["expert_load"] = load
        ev["expert_load_max"] = round(max(max(s) * len(s) for s in load.values()), 3)
        return ev

    def note(self, ev):
        return f" expert load max {ev['expert_load_max']:.2f}x even"

    def model_info(self, cfg):
        """Parameter counts: total, and active per token (top-k of the routed experts)."""
        import torch
        from transformers import Qwen2MoeForCausalLM
        with torch.device("meta"):
            m = Qwen2MoeForCausalLM(cfg)
        total = sum(p.numel() for p in m.parameters())   # tied lm_head counted once
        routed = sum(p.numel() for n, p in m.named_parameters() if ".mlp.experts." in n)
        embed = m.model.embed_tokens.weight.numel()
        active = total - routed + routed * cfg.num_experts_per_tok // cfg.num_experts
        moe_layers = [i for i in range(cfg.num_hidden_layers) if i not in cfg.mlp_only_layers]
        return {"architecture": "Qwen2MoeForCausalLM", "parameters": total,
                "parameters_routed_experts": routed, "parameters_embedding": embed,
                "active_parameters_per_token": active, "moe_layers": moe_layers,
                "dense_layers": list(cfg.mlp_only_layers), "experts_implementation":
                self.experts_impl}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model")
    train.add_model_args(m, out="models-work/demo-moe", base_epochs="12",
                         tiny_help="hidden 128, 2 layers (dense + MoE), 8 experts")
    m.set_defaults(base_seconds=120, lora_seconds=50)
    m.add_argument("--aux-coef", type=float, default=0.02,
                   help="weight of balance_loss (also written as config router_aux_loss_coef)")
    m.add_argument("--lora-rank", type=int, default=16, help="LoRA r (alpha = 2 r)")
    m.add_argument("--experts-impl", default="eager", choices=["eager", "grouped_mm"],
                   help="transformers' experts forward in training (eager: a loop over experts; "
                        "grouped_mm wants bf16 weights on CUDA)")
    args = ap.parse_args()
    train.train_models(args, MoeRecipe(args))


if __name__ == "__main__":
    main()
