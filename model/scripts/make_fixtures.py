#!/usr/bin/env python3
"""Makes the fidelity fixtures of tandem-model (not run by CI; its outputs are committed).

    pip install torch transformers peft safetensors tokenizers
    python3 model/scripts/make_fixtures.py model/tests/fixtures

Writes, under the output directory:
  tokenizer/tokenizer.json      tiny byte-level BPE (vocab 300), no post-processor (no BOS)
  tied_gqa/                     Llama, tied embeddings, 4 heads / 2 KV heads, f32, single file
  untied_gqa_sharded/           Llama, untied, 6 heads / 2 KV heads, head_dim 8, stored f16, sharded
  tied_gqa_lora/                PEFT LoRA on tied_gqa: all 7 projections, rank/alpha patterns
  untied_lora_rslora/           PEFT LoRA on untied_gqa_sharded: q,v on layer 1 only, rsLoRA
  reference.json                prompts, token ids, greedy continuations, library versions
  reference.safetensors         logits [seq, vocab] (f32) at every position for every case
"""
import copy
import json
import os
import sys

import torch
import transformers
import peft
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

OUT = sys.argv[1] if len(sys.argv) > 1 else "model/tests/fixtures"
torch.manual_seed(1234)

CORPUS = [
    "Tandem is private split inference. Small requests run on the device; heavier ones are sealed.",
    "The same model and adapter code runs on both sides, so a request gives the same answer.",
    "Hello world, this is a tiny tokenizer for tests. Numbers 0123456789 and café, naïve, ✓.",
    "Grouped-query attention, rotary position embeddings, RMSNorm and SwiGLU feed-forward layers.",
] * 20

PROMPTS = [
    "Hello world, this is tandem.",
    "A request gives the same answer ✓",
]


def make_tokenizer(path):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    return tok


def randomize(model, std=0.15):
    """Weights big enough that logits differ clearly (the default init gives near-ties)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, std)


def logits_for(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def greedy(model, ids, n=12):
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(ids):].tolist()


def main():
    tok = make_tokenizer(os.path.join(OUT, "tokenizer"))
    vocab = tok.get_vocab_size()
    encodings = {p: tok.encode(p).ids for p in PROMPTS}
    tensors = {}
    ref = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "prompts": PROMPTS,
        "encodings": [encodings[p] for p in PROMPTS],
        "decoded": [tok.decode(encodings[p]) for p in PROMPTS],
        "cases": [],
    }

    specs = {
        "tied_gqa": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=True, rope_theta=10000.0,
                         store=torch.float32, shard=None),
        "untied_gqa_sharded": dict(hidden_size=48, intermediate_size=96, num_attention_heads=6,
                                   num_key_value_heads=2, tie_word_embeddings=False, rope_theta=500.0,
                                   store=torch.float16, shard="40KB"),
    }
    models_by_name = {}
    for name, s in specs.items():
        cfg = LlamaConfig(
            vocab_size=vocab, hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"],
            num_hidden_layers=2, num_attention_heads=s["num_attention_heads"],
            num_key_value_heads=s["num_key_value_heads"], max_position_embeddings=128,
            rms_norm_eps=1e-5, rope_theta=s["rope_theta"], tie_word_embeddings=s["tie_word_embeddings"],
            bos_token_id=None, eos_token_id=0, pad_token_id=None,
        )
        model = LlamaForCausalLM(cfg)
        randomize(model)
        # Round the weights to the stored dtype, then compute the reference in f32 from them.
        model = model.to(s["store"]).to(torch.float32).eval()
        d = os.path.join(OUT, name)
        kwargs = {"max_shard_size": s["shard"]} if s["shard"] else {}
        model.to(s["store"]).save_pretrained(d, safe_serialization=True, **kwargs)
        model.to(torch.float32)
        tok.save(os.path.join(d, "tokenizer.json"))
        # The reference is computed from the files as written, reloaded in f32.
        models_by_name[name] = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()

    adapters = {
        "tied_gqa_lora": ("tied_gqa", LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                               "gate_proj", "up_proj", "down_proj"],
            rank_pattern={"down_proj": 2}, alpha_pattern={"q_proj": 16}, lora_dropout=0.0,
            init_lora_weights=False, task_type="CAUSAL_LM")),
        "untied_lora_rslora": ("untied_gqa_sharded", LoraConfig(
            r=8, lora_alpha=4, target_modules=["q_proj", "v_proj"], layers_to_transform=[1],
            use_rslora=True, lora_dropout=0.0, init_lora_weights=False, task_type="CAUSAL_LM")),
    }

    for name, model in models_by_name.items():
        for pi, p in enumerate(PROMPTS):
            ids = encodings[p]
            key = f"{name}/p{pi}"
            tensors[key] = logits_for(model, ids).contiguous()
            ref["cases"].append({"model": name, "adapter": None, "prompt": pi, "logits": key,
                                 "greedy": greedy(model, ids)})

    for aname, (base, lcfg) in adapters.items():
        base_model = models_by_name[base]
        pm = get_peft_model(copy.deepcopy(base_model), lcfg).eval()
        with torch.no_grad():  # B random too (init_lora_weights=False), scaled up for a clear effect
            for n, p in pm.named_parameters():
                if "lora_" in n:
                    p.normal_(0.0, 0.3)
        d = os.path.join(OUT, aname)
        pm.save_pretrained(d)
        for extra in ("README.md",):
            if os.path.exists(os.path.join(d, extra)):
                os.remove(os.path.join(d, extra))
        pm = PeftModel.from_pretrained(copy.deepcopy(base_model), d).eval()
        for pi, p in enumerate(PROMPTS):
            ids = encodings[p]
            key = f"{aname}/p{pi}"
            tensors[key] = logits_for(pm, ids).contiguous()
            ref["cases"].append({"model": base, "adapter": aname, "prompt": pi, "logits": key,
                                 "greedy": greedy(pm, ids)})

    save_file(tensors, os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
