#!/usr/bin/env python3
"""The Hugging Face transformers side of Tandem's fidelity check (tests/real_model.rs).

Loads a model directory in Hugging Face layout with transformers (float32, CPU, no network),
and prints one JSON object:

* ``perplexity``: the token stream Tandem's ``tandem-lab eval perplexity`` builds (documents
  split on ``<|endoftext|>`` lines, each encoded with the tokenizer's own special tokens and
  followed by the model's first ``eos_token_id``), cut into non-overlapping windows of
  ``seq_len + 1`` tokens spread evenly as ``TokenStream::eval_windows`` does; the mean
  next-token loss over them, and the windows themselves so the caller can check it scored the
  same ids.
* ``chats``: for each conversation in ``--chats`` (a JSON array of message arrays), the prompt
  rendered by ``apply_chat_template(add_generation_prompt=True)``, its ids, and the greedy
  continuation (``--new-tokens``, stopping at any EOS id of the generation config).

Run with the python that ``scripts/hf/venv.sh`` prints.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

DOC_SEPARATOR = "<|endoftext|>"


def split_documents(text):
    """Mirror of tandem_lab::train::data::split_documents."""
    docs, start, pos = [], 0, 0
    for line in text.splitlines(keepends=True):
        if line.rstrip("\r\n") == DOC_SEPARATOR:
            docs.append(text[start:pos])
            start = pos + len(line)
        pos += len(line)
    docs.append(text[start:])
    return [d.strip("\n") for d in docs if d.strip("\n").strip()]


def eval_windows(tokens, seq_len, max_windows):
    """Mirror of TokenStream::eval_windows."""
    window = seq_len + 1
    n = len(tokens) // window
    if n == 0 or max_windows == 0:
        return []
    take = min(n, max_windows)
    return [tokens[(i * n // take) * window:(i * n // take + 1) * window] for i in range(take)]


def eos_ids(model):
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = model.config.eos_token_id
    if eos is None:
        return []
    return eos if isinstance(eos, list) else [eos]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--chats", required=True)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        a.model, dtype=torch.float32, local_files_only=True
    )
    model.eval()
    eos = eos_ids(model)
    if not eos:
        sys.exit(f"{a.model}: no eos_token_id in generation_config.json or config.json")

    with open(a.text, encoding="utf-8") as f:
        text = f.read()
    stream = []
    for d in split_documents(text):
        stream.extend(tok(d)["input_ids"])
        stream.append(eos[0])
    windows = eval_windows(stream, a.seq_len, a.windows)
    if not windows:
        sys.exit(f"{a.text}: shorter than one window of {a.seq_len + 1} tokens")
    total, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            x = torch.tensor([w[:-1]])
            y = torch.tensor([w[1:]])
            logits = model(input_ids=x).logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits.view(-1, logits.shape[-1]), y.view(-1), reduction="sum"
            )
            total += float(loss)
            count += y.numel()

    with open(a.chats, encoding="utf-8") as f:
        chats = json.load(f)
    out_chats = []
    for messages in chats:
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            gen = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=a.new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                repetition_penalty=None,
                eos_token_id=eos,
                pad_token_id=eos[0],
            )
        new = gen[0][len(ids):].tolist()
        if new and new[-1] in eos:
            new = new[:-1]
        out_chats.append(
            {
                "messages": messages,
                "prompt": prompt,
                "prompt_ids": ids,
                "ids": new,
                "text": tok.decode(new, skip_special_tokens=True),
            }
        )

    json.dump(
        {
            "transformers": __import__("transformers").__version__,
            "torch": torch.__version__,
            "perplexity": {
                "seq_len": a.seq_len,
                "windows": windows,
                "tokens": count,
                "loss": total / count,
            },
            "chats": out_chats,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
