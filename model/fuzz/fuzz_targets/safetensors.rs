#![no_main]
//! Untrusted safetensors bytes: never panic; what parses re-encodes to the same tensors.
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tandem_model::{DType, Device};

fuzz_target!(|data: &[u8]| {
    let p = Path::new("fuzz");
    if let Ok(t) = tandem_model::weights::load_from_bytes(data, p, DType::F32, &Device::Cpu) {
        let named: Vec<(String, tandem_model::Tensor)> = t.clone().into_iter().collect();
        let bytes = tandem_model::weights::to_bytes(&named).expect("re-encode");
        let again = tandem_model::weights::load_from_bytes(&bytes, p, DType::F32, &Device::Cpu)
            .expect("re-encoded bytes parse");
        assert_eq!(again.len(), t.len());
        for (name, x) in &t {
            assert_eq!(again[name].dims(), x.dims());
        }
    }
});
