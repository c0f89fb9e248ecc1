#!/usr/bin/env python3
"""Trains the bundled demo: a byte-level BPE tokenizer, a ~10 M-parameter Qwen3 on Jane Austen,
and two LoRA adapters (King James Bible, The Devil's Dictionary). See tools/demo/README.md.

  train.py tokenizer --corpora data/corpora --out models/demo        (CPU, seconds)
  train.py model --corpora data/corpora --tokenizer models/demo --out WORK_DIR
                 [--base-seconds 180 --lora-seconds 60 --max-steps N --tiny]

`model` writes WORK_DIR/base (bf16 safetensors + config + tokenizer), WORK_DIR/adapters/{kjv,devil}
(PEFT, bf16) and WORK_DIR/metrics.json (held-out loss / perplexity of every model on every corpus).
Seeds are fixed; on a GPU the step count follows the time budget (measured throughput), so use
--max-steps to make two runs take the same steps.

What differs between this dense demo and the MoE demo (train_moe.py) is a `Recipe`: the config,
the model class, the training loss, the LoRA config, the adapters and the held-out evaluation.
"""
import argparse, json, math, os, shutil, sys, time

# Chat template of the demo: plain ChatML, no system-prompt default, no tools.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2/Qwen3's pre-tokenizer split (GPT-2 style with single digits).
SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CORPORA = ("austen", "kjv", "devil")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def log(*a):
    print(*a, flush=True)


class Recipe:
    """The dense demo (models/demo): Qwen3, plain next-token loss, LoRA r 16 on q/k/v/o/gate/up/down,
    adapters kjv and devil. train_moe.py subclasses it; everything else in `train.py model` is
    shared."""
    model_dir = "models/demo"      # base_model_name_or_path written into the adapter configs
    adapters = ("kjv", "devil")    # one LoRA each, trained on that corpus

    def config(self, vocab_size, tiny):
        return make_config(vocab_size, tiny)

    def new_model(self, cfg):
        from transformers import Qwen3ForCausalLM
        return Qwen3ForCausalLM(cfg)

    def load_base(self, path, device):
        return load_base(path, device)

    def loss(self, model, x, y):
        """The training loss of one batch (held-out evaluation always uses lm_loss)."""
        return lm_loss(model, x, y)

    def train_stats(self):
        """Extra fields for a training-history entry, about the last training batch."""
        return {}

    def lora_config(self, args):
        from peft import LoraConfig
        return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS,
                          bias="none", task_type="CAUSAL_LM")

    def evaluate(self, model, tokens, args):
        """Held-out metrics of one corpus: {"loss", "ppl", "tokens", ...}."""
        return evaluate(model, tokens, args.ctx, args.eval_batch, args.device)

    def note(self, ev):
        """Extra text for a training log line from an `evaluate` result."""
        return ""

    def model_info(self, cfg):
        """Extra facts about the architecture for metrics.json ("model"; omitted when empty)."""
        return {}


# ----------------------------------------------------------------------------- tokenizer

def build_tokenizer(args):
    from tokenizers import Tokenizer, Regex, models, normalizers, pre_tokenizers, decoders
    from tokenizers import processors, trainers
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False,
                                              use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size, min_frequency=2, show_progress=False,
        special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    files = [os.path.join(args.corpora, f"{c}.train.txt") for c in CORPORA]
    tok.train(files, trainer)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "tokenizer.json")
    tok.save(path)
    qwen_style_fields(path, files[0])
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config(), f, indent=2)
        f.write("\n")
    log(f"tokenizer: {tok.get_vocab_size()} tokens -> {args.out}")


def qwen_style_fields(path, sample_file):
    """Rewrites the fields `tokenizers` serializes as null or with its own defaults the way Qwen3's
    tokenizer.json spells them (BPE prefix/suffix "", ByteLevel decoder flags false). Neither
    changes what the tokenizer does; checked by re-encoding and decoding a sample."""
    from tokenizers import Tokenizer
    before = Tokenizer.from_file(path)
    j = json.load(open(path, encoding="utf-8"))
    j["model"]["continuing_subword_prefix"] = ""
    j["model"]["end_of_word_suffix"] = ""
    j["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                    "use_regex": False}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False, indent=2)
    after = Tokenizer.from_file(path)
    text = open(sample_file, encoding="utf-8").read()[:200000] + " <|im_start|>x<|im_end|>\n"
    a, b = before.encode(text).ids, after.encode(text).ids
    if a != b or after.decode(b) != before.decode(a) or after.decode(b, skip_special_tokens=False) != text:
        raise SystemExit("tokenizer.json rewrite changed encoding or decoding")


def tokenizer_config():
    added = {str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for i, s in enumerate(SPECIALS)}
    return {"tokenizer_class": "Qwen2Tokenizer", "add_bos_token": False, "add_prefix_space": False,
            "added_tokens_decoder": added, "bos_token": None, "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>", "unk_token": None, "model_max_length": 512,
            "clean_up_tokenization_spaces": False, "errors": "replace",
            "chat_template": CHAT_TEMPLATE}


def encode_file(tok, path):
    """Token ids of a whole corpus file as one 1-D int64 tensor. The text is encoded in chunks cut
    after a newline; the split regex never joins across a newline followed by a letter, so this
    equals encoding the whole file at once (checked in `selfcheck_chunking`)."""
    import torch
    text = open(path, encoding="utf-8").read()
    chunks = chunk_text(text, 20000)
    ids = [i for enc in tok.encode_batch(chunks, add_special_tokens=False) for i in enc.ids]
    return torch.tensor(ids, dtype=torch.long)


def chunk_text(text, size):
    """Pieces of about `size` characters, each cut after a whole run of newlines."""
    chunks, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        if end < 0:
            end = len(text)
        while end < len(text) and text[end] == "\n":
            end += 1
        chunks.append(text[start:end])
        start = end
    return chunks


def selfcheck_chunking(tok, path):
    text = open(path, encoding="utf-8").read()[:300000]
    whole = tok.encode(text, add_special_tokens=False).ids
    parts = [i for c in chunk_text(text, 20000) for i in tok.encode(c, add_special_tokens=False).ids]
    if whole != parts:
        raise SystemExit(f"chunked encoding differs from whole-text encoding on {path}")


# ----------------------------------------------------------------------------- model

def make_config(vocab_size, tiny):
    from transformers import Qwen3Config
    dims = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=2,
                num_key_value_heads=1, head_dim=32) if tiny else dict(
        hidden_size=384, num_hidden_layers=6, intermediate_size=1024, num_attention_heads=6,
        num_key_value_heads=2, head_dim=64)
    return Qwen3Config(vocab_size=vocab_size, max_position_embeddings=512, rms_norm_eps=1e-6,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                       tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                       use_sliding_window=False, attention_dropout=0.0, **dims)


def add_residual_dropout(model, p):
    """Dropout on each attention and MLP output before the residual add (training only); the
    saved model is a plain Qwen3. Returns the hook handles."""
    import torch.nn.functional as F
    hooks = []
    for layer in model.model.layers:
        hooks.append(layer.self_attn.register_forward_hook(
            lambda m, i, o: (F.dropout(o[0], p, m.training),) + tuple(o[1:])))
        hooks.append(layer.mlp.register_forward_hook(lambda m, i, o: F.dropout(o, p, m.training)))
    return hooks


def batches(tokens, ctx, batch, gen, device):
    """Random windows of ctx+1 tokens: inputs [batch, ctx] and shifted targets."""
    import torch
    starts = torch.randint(0, len(tokens) - ctx - 1, (batch,), generator=gen)
    win = torch.stack([tokens[s:s + ctx + 1] for s in starts.tolist()]).to(device)
    return win[:, :-1], win[:, 1:]


def lm_loss(model, x, y):
    import torch.nn.functional as F
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


def evaluate(model, tokens, ctx, batch, device):
    """Mean next-token loss over non-overlapping ctx windows covering the whole stream (each
    window scored from position 0: every token predicted with up to ctx-1 tokens of context)."""
    import torch
    n = (len(tokens) - 1) // ctx
    x_all = tokens[:n * ctx].view(n, ctx)
    y_all = tokens[1:n * ctx + 1].view(n, ctx)
    was = model.training
    model.eval()
    total = 0.0
    with torch.no_grad(), autocast(device):
        for i in range(0, n, batch):
            x, y = x_all[i:i + batch].to(device), y_all[i:i + batch].to(device)
            total += lm_loss(model, x, y).item() * x.numel()
    model.train(was)
    loss = total / (n * ctx)
    return {"loss": round(loss, 4), "ppl": round(math.exp(loss), 3), "tokens": n * ctx}


def autocast(device):
    import torch
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16,
                          enabled=device.startswith("cuda"))


def lr_at(step, total, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def fit(model, params, train, held, args, seconds, peak_lr, max_epochs, tag, get_state, set_state,
        recipe=None):
    """AdamW + linear warmup + cosine to 10 % of peak over `max_epochs` epochs of random windows,
    shortened to what fits in `seconds` (throughput measured over steps 10..30). Held-out loss is
    checked ~15 times; the best weights are kept and training stops after --patience checks
    without improvement."""
    import torch
    recipe = recipe or Recipe()
    dev = args.device
    opt = torch.optim.AdamW(params, lr=peak_lr, betas=(0.9, 0.95), weight_decay=args.weight_decay,
                            fused=dev.startswith("cuda"))
    gen = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = max(1, len(train) // (args.ctx * args.batch))
    total = max(1, min(args.max_steps, int(max_epochs * steps_per_epoch)))
    plan = lambda t: (t, max(1, min(args.warmup, t // 10)), max(1, min(args.eval_every, t // 15)))
    total, warmup, every = plan(total)
    best, best_step, bad, t0, history = float("inf"), 0, 0, time.time(), []
    best_state, t_mark = get_state(), None
    model.train()
    step = 0
    while step < total:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, peak_lr, warmup)
        x, y = batches(train, args.ctx, args.batch, gen, dev)
        with autocast(dev):
            loss = recipe.loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step in (10, 30) and total > 30:
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            if step == 10:
                t_mark = time.time()
            else:
                rate = 20 / (time.time() - t_mark)
                fits = int(rate * (seconds - (time.time() - t0)) * 0.9) + step  # ~10 % for evals
                total, warmup, every = plan(max(step, min(total, fits)))
                log(f"[{tag}] {rate:.1f} steps/s -> {total} steps "
                    f"({total / steps_per_epoch:.1f} epochs), eval every {every}")
        last = step >= total or time.time() - t0 > seconds * 1.15
        if step % every == 0 or last:
            ev = recipe.evaluate(model, held, args)
            history.append({"step": step, "train_loss": round(loss.item(), 4),
                            **recipe.train_stats(), **ev, "seconds": round(time.time() - t0, 1)})
            log(f"[{tag}] step {step}/{total} train {loss.item():.4f} held-out {ev['loss']:.4f} "
                f"ppl {ev['ppl']:.2f}{recipe.note(ev)} ({time.time() - t0:.0f} s)")
            if ev["loss"] < best:
                best, best_step, bad, best_state = ev["loss"], step, 0, get_state()
            else:
                bad += 1
                if bad >= args.patience:
                    log(f"[{tag}] held-out loss rose {bad} times: stop, keep step {best_step}")
                    break
        if last:
            if step < total:
                log(f"[{tag}] time budget spent at step {step}")
            break
    set_state(best_state)
    return {"steps_run": step, "steps_planned": total, "best_step": best_step,
            "best_heldout_loss": best, "steps_per_epoch": steps_per_epoch,
            "tokens_per_step": args.ctx * args.batch, "peak_lr": peak_lr,
            "max_epochs": max_epochs, "warmup": warmup,
            "seconds": round(time.time() - t0, 1), "history": history}


def train_base(cfg, data, args, recipe):
    """One run per entry of --base-epochs (same seed, the time budget split between them); the
    run with the lowest held-out Austen loss is kept (a small guard against over/under-fitting)."""
    import torch
    best_model, runs = None, []
    epochs_list = [float(e) for e in args.base_epochs.split(",")]
    for epochs in epochs_list:
        torch.manual_seed(args.seed)
        model = recipe.new_model(cfg).to(args.device)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"base: {n_params / 1e6:.2f} M parameters (tied embeddings counted once), "
            f"{epochs} epochs planned")
        hooks = add_residual_dropout(model, args.dropout)
        params = [p for p in model.parameters()]
        state = lambda: {k: v.detach().clone() for k, v in model.state_dict().items()}
        info = fit(model, params, data["austen"]["train"], data["austen"]["held"], args,
                   args.base_seconds / len(epochs_list), args.lr, epochs, f"base/{epochs:g}ep",
                   state, lambda s: model.load_state_dict(s), recipe)
        for h in hooks:
            h.remove()
        info["parameters"] = n_params
        runs.append(info)
        if best_model is None or info["best_heldout_loss"] < min(r["best_heldout_loss"] for r in runs[:-1]):
            best_model = model
        else:
            del model
    chosen = min(range(len(runs)), key=lambda i: runs[i]["best_heldout_loss"])
    log(f"base: keeping the {epochs_list[chosen]:g}-epoch run")
    return best_model, {"chosen": chosen, "runs": runs}


def save_base(model, tok_dir, out):
    import torch
    model = model.to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    model.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok_dir, f), os.path.join(out, f))


def load_base(path, device):
    """The saved bf16 base as float32 (exact), so adapters train against the shipped weights."""
    import torch
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)


def train_adapter(base_dir, name, data, args, recipe):
    import torch
    from peft import get_peft_model, get_peft_model_state_dict
    from peft import set_peft_model_state_dict
    torch.manual_seed(args.seed + 1)
    model = get_peft_model(recipe.load_base(base_dir, args.device), recipe.lora_config(args))
    params = [p for p in model.parameters() if p.requires_grad]
    log(f"adapter {name}: {sum(p.numel() for p in params) / 1e6:.3f} M trainable parameters")
    state = lambda: {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    info = fit(model, params, data[name]["train"], data[name]["held"], args, args.lora_seconds,
               args.lora_lr, args.lora_epochs, name, state,
               lambda s: set_peft_model_state_dict(model, s), recipe)
    return model, info


def save_adapter(model, out, model_dir="models/demo"):
    """PEFT save, then the float tensors re-stored as bf16 (the base's dtype) and target_modules
    sorted (PEFT keeps a set). target_parameters keeps its order: PEFT nests one wrapper per entry
    in that order, which names the saved tensors (the first is `...base_layer.lora_A`)."""
    import torch
    from safetensors.torch import load_file, save_file
    model.save_pretrained(out, save_embedding_layers=False)
    path = os.path.join(out, "adapter_model.safetensors")
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(path).items()}
    save_file(tensors, path, metadata={"format": "pt"})
    cfg_path = os.path.join(out, "adapter_config.json")
    cfg = json.load(open(cfg_path))
    cfg["base_model_name_or_path"] = model_dir   # not the training machine's temp path
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    readme = os.path.join(out, "README.md")
    if os.path.exists(readme):
        os.remove(readme)


def load_adapter_model(base_dir, adapter_dir, device, recipe=None):
    from peft import PeftModel
    base = (recipe or Recipe()).load_base(base_dir, device)
    return PeftModel.from_pretrained(base, adapter_dir).to(device)


def eval_all(model, data, args, recipe):
    return {c: recipe.evaluate(model, data[c]["held"], args) for c in CORPORA}


def versions():
    import torch, transformers, peft, tokenizers
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "tokenizers": tokenizers.__version__,
            "python": sys.version.split()[0]}


def train_models(args, recipe=None):
    import torch
    recipe = recipe or Recipe()
    from tokenizers import Tokenizer
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    tok = Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
    selfcheck_chunking(tok, os.path.join(args.corpora, "devil.train.txt"))
    data = {c: {"train": encode_file(tok, os.path.join(args.corpora, f"{c}.train.txt")),
                "held": encode_file(tok, os.path.join(args.corpora, f"{c}.heldout.txt"))}
            for c in CORPORA}
    if args.eval_limit:
        for c in CORPORA:
            data[c]["held"] = data[c]["held"][:args.eval_limit]
    for c in CORPORA:
        log(f"{c}: {len(data[c]['train'])} train / {len(data[c]['held'])} held-out tokens")
    vocab = -(-tok.get_vocab_size() // 64) * 64
    cfg = recipe.config(vocab, args.tiny)
    os.makedirs(args.out, exist_ok=True)
    base_dir = os.path.join(args.out, "base")
    model, base_info = train_base(cfg, data, args, recipe)
    save_base(model, args.tokenizer, base_dir)
    del model
    metrics = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
               "versions": versions(), "args": {k: v for k, v in vars(args).items()
                                                if k != "func"},
               "tokens": {c: {k: len(v) for k, v in data[c].items()} for c in CORPORA},
               "training": {"base": base_info}, "heldout": {}}
    info = recipe.model_info(cfg)
    if info:
        metrics["model"] = info
    metrics["heldout"]["base"] = eval_all(recipe.load_base(base_dir, args.device), data, args,
                                          recipe)
    log("base held-out:", json.dumps(metrics["heldout"]["base"]))
    for name in recipe.adapters:
        model, info = train_adapter(base_dir, name, data, args, recipe)
        adir = os.path.join(args.out, "adapters", name)
        save_adapter(model, adir, recipe.model_dir)
        del model
        metrics["training"][name] = info
        metrics["heldout"][name] = eval_all(load_adapter_model(base_dir, adir, args.device, recipe),
                                            data, args, recipe)
        log(f"{name} held-out:", json.dumps(metrics["heldout"][name]))
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
        f.write("\n")
    log(f"done -> {args.out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenizer")
    t.add_argument("--corpora", default="data/corpora")
    t.add_argument("--out", default="models/demo")
    t.add_argument("--vocab-size", type=int, default=4096)
    t.set_defaults(func=build_tokenizer)
    m = sub.add_parser("model")
    add_model_args(m)
    m.set_defaults(func=train_models)
    args = ap.parse_args()
    args.func(args)


def add_model_args(m, out="models-work/demo", base_epochs="6,12,24", tiny_help="hidden 64, 2 layers"):
    """The options of `model` (train_moe.py reuses them with its own defaults)."""
    m.add_argument("--corpora", default="data/corpora")
    m.add_argument("--tokenizer", default="models/demo")
    m.add_argument("--out", default=out)
    m.add_argument("--device", default="auto")
    m.add_argument("--tiny", action="store_true", help=f"{tiny_help} (CPU trials)")
    m.add_argument("--seed", type=int, default=1234)
    m.add_argument("--ctx", type=int, default=256)
    m.add_argument("--batch", type=int, default=64)
    m.add_argument("--eval-batch", type=int, default=64)
    m.add_argument("--eval-limit", type=int, default=0, help="held-out tokens per corpus (0: all)")
    m.add_argument("--lr", type=float, default=1.5e-3)
    m.add_argument("--lora-lr", type=float, default=1e-3)
    m.add_argument("--weight-decay", type=float, default=0.1)
    m.add_argument("--dropout", type=float, default=0.1)
    m.add_argument("--warmup", type=int, default=100)
    m.add_argument("--base-seconds", type=float, default=180)
    m.add_argument("--lora-seconds", type=float, default=60)
    m.add_argument("--max-steps", type=int, default=10 ** 9)
    m.add_argument("--base-epochs", default=base_epochs,
                   help="comma list: one base run each (budget split), the best is kept")
    m.add_argument("--lora-epochs", type=float, default=20)
    m.add_argument("--eval-every", type=int, default=100)
    m.add_argument("--patience", type=int, default=4)


if __name__ == "__main__":
    main()
