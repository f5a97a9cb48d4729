//! The palletized matmul at decode batch sizes: how the time of one `[n, cols] × Wᵀ` grows
//! with the number of rows `n` (sequences decoded together), on each path, in one run.
//!
//! ```sh
//! cargo bench -p tandem-lab --bench pallet_batch --no-run   # build, then run the printed binary:
//! target/release/deps/pallet_batch-<hash> [--threads 1] [--ms 300]
//! ```
//! Paths, per shape, bit width and `n`:
//! * `decode`: [`kernel::matmul_decode`] (int8 kernel, each packed row unpacked once per
//!   [`kernel::Q8_ROWS`] input rows);
//! * `rows_alone`: the same kernel called once per input row (what sharing the unpacking saves);
//! * `exact`: dequantize 128-row blocks + f32 GEMM, the path [`kernel::matmul`] takes for more
//!   than [`kernel::GEMV_MAX_ROWS`] rows (and the one a batched decode step took before
//!   [`kernel::matmul_decode`]); measured only for those `n`;
//! * `dense`: candle's f32 matmul on the weights dequantized ahead of time (what a node holding
//!   an f32 copy of the model would run; 8× the memory of 4-bit weights).
//!
//! Prints one JSON line per (shape, bits, n) with µs per call (median of timed batches).

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use tandem_model::pallet::{Bits, kernel};

fn rand(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Median µs per call of `f`, over batches of calls lasting about `budget / 7` each.
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    f();
    let once = t.elapsed().max(Duration::from_nanos(100));
    let per_batch = ((budget.as_secs_f64() / 7.0) / once.as_secs_f64())
        .ceil()
        .max(1.0) as usize;
    let mut samples: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / per_batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[3]
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = arg(&args, "--threads", 1);
    let budget = Duration::from_millis(arg(&args, "--ms", 300));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    // (rows, cols): the embedded device model's MLP up/down and tied head; SmolLM2-135M's MLP.
    let shapes = [
        (688, 256),
        (256, 688),
        (4096, 256),
        (1536, 576),
        (576, 1536),
    ];
    pool.install(|| {
        for (si, &(rows, cols)) in shapes.iter().enumerate() {
            for bits in [Bits::B4, Bits::B2] {
                let w = Arc::new(
                    tandem_lab::pallet::quantize_matrix(
                        &rand(si as u64 + 1, rows * cols),
                        rows,
                        cols,
                        bits,
                        16,
                        None,
                    )
                    .expect("quantize"),
                );
                for n in [1usize, 2, 4, 8, 16, 32] {
                    let x = rand(100 + n as u64, n * cols);
                    let xt = Tensor::from_vec(x.clone(), (n, cols), &Device::Cpu).expect("x");
                    let decode = time(budget, || {
                        kernel::matmul_decode(&xt, &w).expect("decode");
                    });
                    let alone = time(budget, || {
                        for r in x.chunks_exact(cols) {
                            std::hint::black_box(kernel::gemv(&w, r, 1));
                        }
                    });
                    let exact = (n > kernel::GEMV_MAX_ROWS).then(|| {
                        time(budget, || {
                            kernel::matmul(&xt, &w).expect("exact");
                        })
                    });
                    let wd = Tensor::from_vec(w.dequantize(), (rows, cols), &Device::Cpu)
                        .expect("dense")
                        .t()
                        .expect("t");
                    let dense = time(budget, || {
                        xt.matmul(&wd).expect("dense");
                    });
                    let ratio = |v: Option<f64>| {
                        v.map_or("null".to_string(), |v| format!("{:.2}", v / decode))
                    };
                    println!(
                        "{{\"rows\":{rows},\"cols\":{cols},\"bits\":{},\"n\":{n},\"threads\":{threads},\
                         \"decode_us\":{decode:.1},\"rows_alone_us\":{alone:.1},\"exact_us\":{},\
                         \"dense_us\":{dense:.1},\"alone_over_decode\":{},\"exact_over_decode\":{},\
                         \"dense_over_decode\":{}}}",
                        bits.get(),
                        exact.map_or("null".to_string(), |v| format!("{v:.1}")),
                        ratio(Some(alone)),
                        ratio(exact),
                        ratio(Some(dense)),
                    );
                }
            }
        }
    });
}
