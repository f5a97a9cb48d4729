//! Model-stack benchmark on a SmolLM2-135M-shaped model with random weights (576 hidden,
//! 30 layers, 9 heads, 3 KV heads, 1536 intermediate, 49152 vocab, tied).
//!
//! ```sh
//! cargo bench -p tandem-model --bench decode --no-run     # build, then run the printed binary:
//! target/release/deps/decode-<hash> [--quick]
//! ```
//! The parent writes the checkpoint (f32 and f16) to a temp dir, then runs one child process
//! per (dtype, threads) with `RAYON_NUM_THREADS` set, so peak RSS and thread counts are clean.
//! Each child measures: peak RSS after load vs weight bytes, prefill tok/s (256-token prompt),
//! decode tok/s at context 256 and 1024, and this machine's read bandwidth with the same
//! thread count; the decode bound is bandwidth ÷ bytes read per decoded token.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use tandem_model::{Cache, Config, load_model};

const CONFIG: &str = r#"{"model_type":"llama","vocab_size":49152,"hidden_size":576,
 "intermediate_size":1536,"num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,
 "max_position_embeddings":2048,"rope_theta":100000.0,"rms_norm_eps":1e-5,
 "tie_word_embeddings":true,"eos_token_id":0}"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        let dir = PathBuf::from(&args[2]);
        let quick = args.iter().any(|a| a == "--quick");
        child(&dir, quick);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let tmp = std::env::temp_dir().join(format!("tandem-bench-{}", std::process::id()));
    let mut results = Vec::new();
    for (dtype, name) in [(DType::F32, "f32"), (DType::F16, "f16")] {
        let dir = tmp.join(name);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let t = Instant::now();
        write_checkpoint(&dir, dtype);
        eprintln!(
            "wrote {name} checkpoint in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        for threads in [1, 2] {
            let mut cmd = std::process::Command::new(&args[0]);
            cmd.arg("child")
                .arg(&dir)
                .env("RAYON_NUM_THREADS", threads.to_string());
            if quick {
                cmd.arg("--quick");
            }
            let out = cmd.output().expect("run child");
            let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !out.status.success() {
                eprintln!("child failed: {}", String::from_utf8_lossy(&out.stderr));
                continue;
            }
            eprintln!("{name} x{threads}: {line}");
            results.push((name, threads, line));
        }
        std::fs::remove_dir_all(&dir).ok();
    }
    std::fs::remove_dir_all(&tmp).ok();
    println!(
        "| dtype | threads | prefill 256 tok/s | decode@256 tok/s | decode@1024 tok/s | read GB/s | bytes/token @256 | bound tok/s @256 | decode % of bound @256 | decode % of bound @1024 | peak RSS after load MB | weight MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, threads, line) in results {
        let v: serde_json::Value = serde_json::from_str(&line).expect("child json");
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {name} | {threads} | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} MB | {:.1} | {:.0}% | {:.0}% | {:.0} | {:.0} |",
            f("prefill_tok_s"),
            f("decode256_tok_s"),
            f("decode1024_tok_s"),
            f("read_gb_s"),
            f("bytes_per_token_256") / 1e6,
            f("bound256_tok_s"),
            100.0 * f("decode256_tok_s") / f("bound256_tok_s"),
            100.0 * f("decode1024_tok_s") / f("bound1024_tok_s"),
            f("peak_rss_mb"),
            f("weight_mb"),
        );
    }
}

/// xorshift64*: fast deterministic pseudo-random weights.
struct Rng(u64);
impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
    }
}

/// Streams a safetensors file (header first, then each tensor) plus config and tokenizer.
fn write_checkpoint(dir: &Path, dtype: DType) {
    let cfg = Config::from_json(CONFIG.as_bytes(), Path::new("bench")).expect("config");
    std::fs::write(dir.join("config.json"), CONFIG).expect("config");
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..256).map(|i| (format!("w{i}"), i.into())).collect();
    let tok = serde_json::json!({"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
        "model":{"type":"WordLevel","vocab":vocab,"unk_token":"w0"}});
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).expect("tokenizer");
    let size = if dtype == DType::F16 { 2 } else { 4 };
    let (tag, tensors) = (
        if size == 2 { "F16" } else { "F32" },
        cfg.expected_tensors(),
    );
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for (name, shape) in &tensors {
        let n: usize = shape.iter().product::<usize>() * size;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": tag, "shape": shape, "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let mut h = serde_json::to_vec(&header).expect("header");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let f = std::fs::File::create(dir.join("model.safetensors")).expect("create");
    let mut w = std::io::BufWriter::with_capacity(1 << 22, f);
    w.write_all(&(h.len() as u64).to_le_bytes()).expect("write");
    w.write_all(&h).expect("write");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for (name, shape) in &tensors {
        let n: usize = shape.iter().product();
        let norm = shape.len() == 1;
        let mut buf = Vec::with_capacity(n * size);
        for _ in 0..n {
            let x = if norm { 1.0 } else { rng.next_f32() };
            if size == 2 {
                buf.extend_from_slice(&half::f16::from_f32(x).to_le_bytes());
            } else {
                buf.extend_from_slice(&x.to_le_bytes());
            }
        }
        w.write_all(&buf).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    w.flush().expect("flush");
}

fn status_kb(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// Read bandwidth in bytes/s: each thread sums its share of a 1 GiB buffer (best of 3).
fn read_bandwidth(threads: usize) -> f64 {
    let words = (1usize << 30) / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(words.div_ceil(threads))
                .map(|c| {
                    s.spawn(move || {
                        let mut acc = [0u64; 8];
                        for ch in c.chunks_exact(8) {
                            for i in 0..8 {
                                acc[i] = acc[i].wrapping_add(ch[i]);
                            }
                        }
                        acc.iter().fold(0u64, |a, b| a.wrapping_add(*b))
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.max((words * 8) as f64 / t.elapsed().as_secs_f64());
    }
    best
}

fn child(dir: &Path, quick: bool) {
    let threads: usize = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let dev = Device::Cpu;
    let stored_f16 = std::fs::read(dir.join("model.safetensors"))
        .map(|b| {
            let n = u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])) as usize;
            String::from_utf8_lossy(&b[8..8 + n.min(b.len() - 8)]).contains("\"F16\"")
        })
        .unwrap_or(false);
    let dtype = if stored_f16 { DType::F16 } else { DType::F32 };
    let t = Instant::now();
    let m = load_model(dir, dtype, &dev).expect("load");
    let load_s = t.elapsed().as_secs_f64();
    let peak_rss_mb = status_kb("VmHWM:") / 1024.0;
    let rss_mb = status_kb("VmRSS:") / 1024.0;
    let model = &m.model;
    let cfg = model.config().clone();
    let weight_bytes = model.weight_bytes() as f64;

    let prompt = |n: usize| -> Vec<u32> { (0..n as u32).map(|i| (i * 7919) % 49152).collect() };
    let decode_steps = if quick { 8 } else { 32 };

    // Prefill 256 (best of 2).
    let mut prefill = f64::INFINITY;
    for _ in 0..if quick { 1 } else { 2 } {
        let mut cache = Cache::new(model, 1, 256 + decode_steps).expect("cache");
        let ids = model.tokens_tensor(&prompt(256)).expect("ids");
        let t = Instant::now();
        model.forward_last(&ids, None, &mut cache).expect("prefill");
        prefill = prefill.min(t.elapsed().as_secs_f64());
    }
    let decode_at = |ctx: usize| -> f64 {
        let mut cache = Cache::new(model, 1, ctx + decode_steps + 1).expect("cache");
        let ids = model.tokens_tensor(&prompt(ctx)).expect("ids");
        model.forward_last(&ids, None, &mut cache).expect("prefill");
        let one = model.tokens_tensor(&[17]).expect("id");
        model.forward_last(&one, None, &mut cache).expect("warm");
        let t = Instant::now();
        for _ in 0..decode_steps {
            model.forward_last(&one, None, &mut cache).expect("decode");
        }
        decode_steps as f64 / t.elapsed().as_secs_f64()
    };
    let d256 = decode_at(256);
    let d1024 = decode_at(1024);
    let bw = read_bandwidth(threads);
    let dsize = dtype.size_in_bytes() as f64;
    let kv = |ctx: usize| {
        2.0 * (cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * ctx) as f64 * dsize
    };
    // Per decoded token every weight matrix is read once (the tied embedding as the output
    // projection), plus the KV cache.
    let bytes256 = weight_bytes + kv(256);
    let bytes1024 = weight_bytes + kv(1024);
    println!(
        "{}",
        serde_json::json!({
            "dtype": format!("{dtype:?}"),
            "threads": threads,
            "load_s": load_s,
            "prefill_tok_s": 256.0 / prefill,
            "decode256_tok_s": d256,
            "decode1024_tok_s": d1024,
            "read_gb_s": bw / 1e9,
            "bytes_per_token_256": bytes256,
            "bytes_per_token_1024": bytes1024,
            "bound256_tok_s": bw / bytes256,
            "bound1024_tok_s": bw / bytes1024,
            "peak_rss_mb": peak_rss_mb,
            "rss_after_load_mb": rss_mb,
            "weight_mb": weight_bytes / 1e6,
            "params": cfg.parameter_count(),
        })
    );
}
