#!/usr/bin/env bash
# Prompt-lookup speculation against plain greedy decoding, interleaved round by round on one
# thread: `tandem model generate --speculate N --json` on a copy-heavy proofread prompt and an
# open chat prompt (SmolLM2's ChatML), 64 new tokens each. Prints one line per run and checks
# that every run of a prompt produced the same tokens.
#
#   scripts/bench-speculation.sh MODEL_DIR [ROUNDS] [TANDEM_BINARY]
#
# MODEL_DIR: a ChatML instruct model (e.g. the f32 import of SmolLM2 in Tandem's cache);
# TANDEM_BINARY defaults to target/release/tandem (build it with
# `cargo build --release -p tandem-device --bin tandem`).
set -euo pipefail
model="${1:?usage: scripts/bench-speculation.sh MODEL_DIR [ROUNDS] [TANDEM_BINARY]}"
rounds="${2:-3}"
tandem="${3:-$(dirname "$0")/../target/release/tandem}"
[[ -x "$tandem" ]] || { echo "bench-speculation: $tandem is not built" >&2; exit 2; }
[[ -d "$model" ]] || { echo "bench-speculation: $model is not a model directory" >&2; exit 2; }
system=$'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n'
proofread="${system}"$'<|im_start|>user\nCorrect the spelling and grammar of this text and reply with the corrected text only: The quick brwon fox jumpt over the lazzy dog, and then it runned away into the forrest where nobody could find it again.<|im_end|>\n<|im_start|>assistant\n'
chat="${system}"$'<|im_start|>user\nGive me three tips for a healthy breakfast.<|im_end|>\n<|im_start|>assistant\n'
export RAYON_NUM_THREADS=1
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "round prompt speculate tokens tok/s proposed accepted token_ids_sha"
for r in $(seq 1 "$rounds"); do
  for name in proofread chat; do
    prompt="$proofread"; [[ $name == chat ]] && prompt="$chat"
    for s in 0 4 8; do
      "$tandem" model generate --model "$model" --prompt "$prompt" --max-tokens 64 \
        --speculate "$s" --json |
        python3 -c '
import hashlib, json, sys
d = json.load(sys.stdin)
ids = hashlib.sha256(json.dumps(d["token_ids"]).encode()).hexdigest()[:12]
print(sys.argv[1], sys.argv[2], sys.argv[3], d["tokens"], round(d["tokens"] / d["seconds"], 1),
      d["draft_tokens"], d["accepted_draft_tokens"], ids)' "$r" "$name" "$s"
    done
  done
done | awk '
  { print; fflush(); key = $2; if (key in ids && ids[key] != $8) { bad = 1 } ids[key] = $8 }
  END { if (bad) { print "bench-speculation: speculative tokens differ from plain greedy" > "/dev/stderr"; exit 1 } }'
echo "# load at the end $(cut -d' ' -f1-3 /proc/loadavg)"
