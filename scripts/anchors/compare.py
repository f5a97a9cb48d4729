#!/usr/bin/env python3
"""Tandem beside llama.cpp on the same SmolLM2-135M-Instruct weights, interleaved round by round.

    scripts/anchors/compare.py [--rounds 3] [--threads 1,2] [--prompt-tokens 256]
                               [--new-tokens 64] [--tandem target/release/tandem]
                               [--out results.jsonl] [--tandem-only] [--baseline OLD_TANDEM]

Needs scripts/anchors/llamacpp.sh to have run (it prints the paths this reads with --print-env)
and a release `tandem` (cargo build --release -p tandem-device --bin tandem). Each round, for
each thread count, runs every Tandem and llama.cpp configuration once, alternating, so a change
in the machine's load hits both sides alike. Then prints the median of each and the ratio table
(Tandem / llama.cpp) in Markdown.

Tandem: `tandem model bench --json` (prefill of --prompt-tokens from an empty cache, then
--new-tokens decode steps at that context). llama.cpp: `llama-bench -o json -r 1 -p P -n N
-d 0,P`; its pp P at depth 0 is the prefill figure and its tg N at depth P the decode figure
(the same work as Tandem's; its pp P at depth P is printed too).
--baseline OLD_TANDEM also runs every Tandem configuration with another `tandem` binary (a copy
of the release build before a change), interleaved the same way, and prints after/before ratios.
Python standard library only.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def log(msg):
    print(f"compare.py: {msg}", file=sys.stderr, flush=True)


def anchors_env():
    out = subprocess.run(
        [os.path.join(HERE, "llamacpp.sh"), "--print-env"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def cache_dir():
    return os.environ.get("TANDEM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tandem"
    )


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]


def run_tandem(tandem, model, dtype, threads, p, n):
    cmd = [
        tandem, "model", "bench", "--model", model, "--dtype", dtype,
        "--threads", str(threads), "--prompt-tokens", str(p), "--new-tokens", str(n), "--json",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    v = json.loads(r.stdout.strip().splitlines()[-1])
    return {
        "prefill": v["prefill_tok_s"],
        "decode": v["decode_tok_s"],
        "ttft_ms": v["ttft_s"] * 1e3,
        "peak_rss_mb": v["peak_rss_bytes"] / 1e6,
        "weights_kv_mb": (v["weight_bytes"] + v["kv_cache_bytes"]) / 1e6,
        "os_threads": v["os_threads"],
        "raw": v,
        "cmd": cmd,
    }


def run_llama(bench, gguf, threads, p, n):
    cmd = [
        bench, "-m", gguf, "-t", str(threads), "-p", str(p), "-n", str(n),
        "-d", f"0,{p}", "-r", "1", "-o", "json",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    tests = json.loads(r.stdout)
    res = {"raw": tests, "cmd": cmd}
    for t in tests:
        if t["n_prompt"] == p and t["n_gen"] == 0 and t["n_depth"] == 0:
            res["prefill"] = t["avg_ts"]
        elif t["n_prompt"] == p and t["n_gen"] == 0 and t["n_depth"] == p:
            res["prefill_d"] = t["avg_ts"]
        elif t["n_gen"] == n and t["n_prompt"] == 0 and t["n_depth"] == p:
            res["decode"] = t["avg_ts"]
    if "prefill" not in res or "decode" not in res:
        raise SystemExit(f"llama-bench output lacks pp{p}@d0 or tg{n}@d{p}: {r.stdout}")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--tandem", default=os.path.join(REPO, "target/release/tandem"))
    ap.add_argument("--out", help="also write every result as JSON lines here")
    ap.add_argument("--baseline", help="another tandem binary to run beside --tandem (before/after)")
    ap.add_argument(
        "--tandem-only", action="store_true", help="skip llama.cpp (Tandem before/after runs)"
    )
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    if a.rounds < 1 or any(t < 1 for t in threads):
        raise SystemExit("--rounds and every --threads value must be at least 1")
    if not os.access(a.tandem, os.X_OK):
        raise SystemExit(
            f"{a.tandem} is missing: cargo build --release -p tandem-device --bin tandem"
        )
    env = anchors_env()
    p, n = a.prompt_tokens, a.new_tokens

    # The server model: Tandem's own f16 import of the original GGUF.
    f16_dir = os.path.join(cache_dir(), "anchors", "smollm2-135m-instruct-f16")
    if not os.path.isfile(os.path.join(f16_dir, "model.safetensors")):
        log(f"importing {env['GGUF_Q4_1']} as f16 into {f16_dir}")
        subprocess.run(
            [a.tandem, "model", "import", env["GGUF_Q4_1"], "--out", f16_dir,
             "--dtype", "f16", "--json"],
            check=True, stdout=subprocess.DEVNULL,
        )

    tandem_cfgs = [
        ("Tandem f16 import, f16 compute (server model)", f16_dir, "f16", a.tandem),
        ("Tandem Q4_1 GGUF path, f16 compute", env["GGUF_Q4_1"], "f16", a.tandem),
        ("Tandem Q4_1 GGUF path, f32 compute (device dtype)", env["GGUF_Q4_1"], "f32", a.tandem),
    ]
    if a.baseline:
        if not os.access(a.baseline, os.X_OK):
            raise SystemExit(f"--baseline {a.baseline} is not an executable")
        tandem_cfgs = [c for cfg in tandem_cfgs
                       for c in (cfg, (cfg[0] + " [baseline]", cfg[1], cfg[2], a.baseline))]
    llama_cfgs = [] if a.tandem_only else [
        ("llama.cpp F16", env["GGUF_F16"]),
        ("llama.cpp Q8_0", env["GGUF_Q8_0"]),
        ("llama.cpp Q4_0", env["GGUF_Q4_0"]),
        ("llama.cpp Q4_1 (original file)", env["GGUF_Q4_1"]),
    ]
    # Interleave: Tandem, llama.cpp, Tandem, llama.cpp, ...
    order = []
    for i in range(max(len(tandem_cfgs), len(llama_cfgs))):
        if i < len(tandem_cfgs):
            order.append(("tandem",) + tandem_cfgs[i])
        if i < len(llama_cfgs):
            order.append(("llama",) + llama_cfgs[i])

    results = {}  # (name, threads) -> list of runs
    loads = [loadavg()]
    out = open(a.out, "w") if a.out else None
    start = time.time()
    for rnd in range(a.rounds):
        for t in threads:
            for cfg in order:
                if cfg[0] == "tandem":
                    _, name, model, dtype, binary = cfg
                    r = run_tandem(binary, model, dtype, t, p, n)
                else:
                    _, name, gguf = cfg
                    r = run_llama(env["LLAMA_BENCH"], gguf, t, p, n)
                results.setdefault((name, t), []).append(r)
                log(
                    f"round {rnd + 1}/{a.rounds}, {t} thread(s): {name}: prefill "
                    f"{r['prefill']:.1f} tok/s, decode {r['decode']:.1f} tok/s "
                    f"(load {' '.join(loadavg())})"
                )
                if out:
                    out.write(json.dumps({"round": rnd, "threads": t, "name": name,
                                          "loadavg": loadavg(), **{k: v for k, v in r.items()}})
                              + "\n")
                    out.flush()
        loads.append(loadavg())
    elapsed = time.time() - start

    med = {k: {m: statistics.median(r[m] for r in v) for m in ("prefill", "decode")}
           for k, v in results.items()}
    print(f"<!-- {a.rounds} rounds in {elapsed:.0f} s; load average per round boundary: "
          f"{' | '.join(' '.join(l) for l in loads)} -->")
    print()
    print(f"Medians of {a.rounds} interleaved rounds; tokens/s; prefill = {p} tokens from an "
          f"empty cache, decode = {n} tokens at context {p}.")
    print()
    print("| engine and weights | threads | prefill | decode | Tandem extra |")
    print("|---|---|---|---|---|")
    for t in threads:
        for cfg in order:
            name = cfg[1]
            m = med[(name, t)]
            runs = results[(name, t)]
            if cfg[0] == "tandem":
                extra = (f"TTFT {statistics.median(r['ttft_ms'] for r in runs):.0f} ms; peak RSS "
                         f"{max(r['peak_rss_mb'] for r in runs):.0f} MB vs weights+KV "
                         f"{runs[0]['weights_kv_mb']:.0f} MB; {runs[0]['os_threads']} OS threads")
            else:
                extra = f"(pp{p} at depth {p}: {statistics.median(r['prefill_d'] for r in runs):.0f})"
            print(f"| {name} | {t} | {m['prefill']:.1f} | {m['decode']:.1f} | {extra} |")
    if llama_cfgs:
        pairs = [
            ("Tandem f16 import, f16 compute (server model)", "llama.cpp F16"),
            ("Tandem Q4_1 GGUF path, f16 compute", "llama.cpp Q4_1 (original file)"),
            ("Tandem Q4_1 GGUF path, f16 compute", "llama.cpp Q4_0"),
            ("Tandem Q4_1 GGUF path, f32 compute (device dtype)", "llama.cpp Q4_1 (original file)"),
            ("Tandem Q4_1 GGUF path, f32 compute (device dtype)", "llama.cpp Q4_0"),
        ]
        print()
        print("| Tandem / llama.cpp | threads | prefill ratio | decode ratio |")
        print("|---|---|---|---|")
        for t in threads:
            for tn, ln in pairs:
                a_, b_ = med[(tn, t)], med[(ln, t)]
                print(f"| {tn} / {ln} | {t} | {a_['prefill'] / b_['prefill']:.2f}× | "
                      f"{a_['decode'] / b_['decode']:.2f}× |")
    if a.baseline:
        print()
        print(f"| Tandem {a.tandem} / baseline {a.baseline} | threads | prefill ratio | decode ratio |")
        print("|---|---|---|---|")
        for t in threads:
            for cfg in tandem_cfgs:
                if cfg[3] != a.tandem:
                    continue
                a_, b_ = med[(cfg[0], t)], med[(cfg[0] + " [baseline]", t)]
                print(f"| {cfg[0]} | {t} | {a_['prefill'] / b_['prefill']:.2f}× | "
                      f"{a_['decode'] / b_['decode']:.2f}× |")
    if len(threads) > 1:
        print()
        print(f"| decode scaling {threads[0]} → {threads[-1]} threads | ratio |")
        print("|---|---|")
        for cfg in order:
            name = cfg[1]
            print(f"| {name} | {med[(name, threads[-1])]['decode'] / med[(name, threads[0])]['decode']:.2f}× |")
    print()
    print("Commands (one round, one thread count):")
    print()
    print("```")
    for cfg in order:
        print(" ".join(results[(cfg[1], threads[0])][0]["cmd"]))
    print("```")


if __name__ == "__main__":
    main()
