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
                let x = vec![1.0f32; m.cols()];
                let y = kernel::gemv(m, &x, 1);
                assert_eq!(y.len(), m.rows());
            }
        }
    }
});
