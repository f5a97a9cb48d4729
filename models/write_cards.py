#!/usr/bin/env python3
"""Writes models/*/MODEL_CARD.md and the `## Embedded models` section of EVAL.md from the JSON
outputs of `tandem eval` (data/runs/eval/*.json) and the training state files. Run by the
evaluation steps in models/build.sh; edits nothing else."""
import json, os, re, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EV = os.path.join(ROOT, "data/runs/eval")


def load(name):
    with open(os.path.join(EV, name)) as f:
        return json.loads(f.read().strip().splitlines()[-1])


def state(path):
    with open(os.path.join(ROOT, path)) as f:
        return json.load(f)


def main():
    notes = json.load(open(os.path.join(EV, "notes.json")))
    rows = []
    for m in ("device", "server"):
        full = load(f"ppl-{m}.json")
        sl = load(f"ppl-slice-{m}.json")
        st = state(notes[m]["state"])
        ad = {t: load(f"task-{m}-{t}.json") for t in ("proofread", "truecase")}
        base = {t: load(f"task-{m}-{t}-base.json") for t in ("proofread", "truecase")
                if os.path.exists(os.path.join(EV, f"task-{m}-{t}-base.json"))}
        ast = {t: state(notes[m]["adapters"][t]) for t in ("proofread", "truecase")}
        card = [f"# `{m}` model card", "", notes[m]["summary"], "",
                "## Identity", "",
                f"- model digest: `{full['digest']}`",
                f"- adapter proofread digest: `{ad['proofread']['adapter_digest']}`",
                f"- adapter truecase digest: `{ad['truecase']['adapter_digest']}`",
                "", "(SHA-256 over the files as defined in `model/src/digest.rs`; checked by `model/tests/embedded_models.rs`.)", "",
                "## Data", "", notes["data"], "",
                "## Training", "",
                f"- parameters: {notes[m]['params']}",
                f"- optimizer steps: {st['step']} (batch {st['config']['batch_size']} x {st['config']['seq_len']} tokens)",
                f"- tokens seen: {st['tokens_seen']:,}",
                f"- schedule at the end: peak lr {st['config']['schedule']['peak_lr']}, warm-up {st['config']['schedule']['warmup_steps']}, cosine to {st['config']['schedule']['min_lr']:g} at step {st['config']['schedule']['total_steps']}; AdamW beta {st['config']['adamw']['beta1']}/{st['config']['adamw']['beta2']}, weight decay {st['config']['adamw']['weight_decay']}, clip {st['config']['grad_clip']}, seed {st['config']['seed']}",
                f"- history: {notes[m]['history']}",
                "", "Exact commands: `models/build.sh`.", "",
                "## Held-out evaluation", "",
                f"- perplexity on all of `models/data/heldout.txt`: **{full['perplexity']:.2f}** ({full['windows']} windows x {full['seq_len']} tokens, loss {full['loss']:.4f} nats/token)",
                f"- perplexity on the fixed 16-window slice (the test's number): {sl['perplexity']:.3f}",
                "", "| adapter | steps | answer tokens | examples | exact | CER in -> out | good | poor |", "|---|---|---|---|---|---|---|---|"]
        for t in ("proofread", "truecase"):
            a = ad[t]
            card.append(f"| `{t}` | {ast[t]['step']} | {ast[t]['tokens_seen']:,} | {a['n']} | {100*a['exact']:.1f}% | {100*a['input_cer']:.2f}% -> {100*a['output_cer']:.2f}% | {100*a['good']:.1f}% | {100*a['poor']:.1f}% |")
        card += ["", "Adapters: LoRA rank 16, alpha 32, on q/k/v/o/gate/up/down of every layer, base frozen, loss on answer tokens only, AdamW without weight decay. Commands in `models/build.sh`.", ""]
        with open(os.path.join(ROOT, "models", m, "MODEL_CARD.md"), "w") as f:
            f.write("\n".join(card))
        rows.append((m, full, sl, ad, base))

    ev = ["## Embedded models", "",
          "Produced by the commands below on the 2-core build machine (shared with other builds). Numbers are from `tandem eval`; the raw JSON lines are reproduced by the same commands.", "",
          "### Held-out perplexity", "",
          "| model | params | perplexity (all held-out, 128-token windows) | loss nats/token | 16-window slice |", "|---|---|---|---|---|"]
    for m, full, sl, ad, base in rows:
        ev.append(f"| {m} | {notes[m]['params']} | {full['perplexity']:.2f} | {full['loss']:.4f} | {sl['perplexity']:.3f} |")
    ev += ["", "Machine-readable values for `model/tests/embedded_models.rs` (slice = `--windows 16 --seq-len 128`):", ""]
    for m, full, sl, ad, base in rows:
        ev.append(f"- slice perplexity {m}: {sl['perplexity']:.4f}")
    ev += ["", "```", "tandem eval perplexity --model models/device --text models/data/heldout.txt --json",
           "tandem eval perplexity --model models/device --text models/data/heldout.txt --windows 16 --json",
           "tandem eval perplexity --model models/server --text models/data/heldout.txt --json",
           "tandem eval perplexity --model models/server --text models/data/heldout.txt --windows 16 --json", "```", "",
           "### Task adapters (good / poor ratios, as in the seed's Figure 3)", "",
           "Examples: `models/data/{proofread,truecase}-heldout.jsonl`, made from held-out sentences only (`tandem eval make-examples --task T --text models/data/heldout.txt --n 400 --seed 7`). Greedy decoding. CER = total edit distance / total reference characters. Good = exact or CER <= 2 %; poor = output further from the reference than the input.", "",
           "| task | model | adapter | n | exact | CER input | CER output | output/input | good | neutral | poor |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in ("proofread", "truecase"):
        for m, full, sl, ad, base in rows:
            pairs = ([("none (base, same prompt)", base[t])] if t in base else []) + [(f"`{t}`", ad[t])]
            for label, a in pairs:
                ev.append(f"| {t} | {m} | {label} | {a['n']} | {100*a['exact']:.1f}% | {100*a['input_cer']:.2f}% | {100*a['output_cer']:.2f}% | {a['cer_ratio']:.2f} | {100*a['good']:.1f}% | {100*a['neutral']:.1f}% | {100*a['poor']:.1f}% |")
    ev += ["", "```", "tandem eval task --model models/device --adapter models/device/adapters/proofread --task proofread --examples models/data/proofread-heldout.jsonl --limit 300 --json",
           "tandem eval task --model models/device --task proofread --examples models/data/proofread-heldout.jsonl --limit 300 --json   # base, no adapter",
           "# likewise for truecase and for models/server", "```", "", notes["verdict"], ""]
    p = os.path.join(ROOT, "EVAL.md")
    old = open(p).read() if os.path.exists(p) else "# Evaluation\n"
    body = "\n".join(ev)
    if "## Embedded models" in old:
        old = re.sub(r"## Embedded models\n.*?(?=\n## |\Z)", lambda _: body, old, flags=re.S)
    else:
        old = old.rstrip("\n") + "\n\n" + body
    open(p, "w").write(old.rstrip("\n") + "\n")


if __name__ == "__main__":
    sys.exit(main())
