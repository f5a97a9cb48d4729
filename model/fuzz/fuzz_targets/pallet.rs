#![no_main]
//! Untrusted palletized safetensors bytes: never panic; what parses re-encodes to bytes that
//! parse to the same checkpoint, and the kernel runs on every accepted matrix.
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tandem_model::pallet::{PalletFile, kernel};

fuzz_target!(|data: &[u8]| {
    let p = Path::new("fuzz");
    if let Ok(f) = PalletFile::from_bytes(data, p) {
        let again = PalletFile::from_bytes(&f.to_bytes(), p).expect("re-encoded bytes parse");
        assert_eq!(again, f);
        for m in f.matrices.values() {
            if m.rows() * m.cols() <= 1 << 16 {
                // One row, and a batch of 5 (a group of four rows plus one).
                let x: Vec<f32> = (0..5 * m.cols()).map(|i| (i % 7) as f32 - 3.0).collect();
                let y = kernel::gemv(m, &x[..m.cols()], 1);
                assert_eq!(y.len(), m.rows());
                let y5 = kernel::gemv(m, &x, 5);
                assert_eq!(y5.len(), 5 * m.rows());
                assert_eq!(&y5[..m.rows()], &y[..], "batched row 0 equals it alone");
            }
        }
    }
});
