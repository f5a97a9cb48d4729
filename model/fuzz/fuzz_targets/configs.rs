#![no_main]
//! Untrusted config.json / adapter_config.json bytes: never panic; what parses round-trips.
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use tandem_model::{AdapterConfig, Config};

fuzz_target!(|data: &[u8]| {
    let p = Path::new("fuzz");
    if let Ok(c) = Config::from_json(data, p) {
        let bytes = serde_json_bytes(&c.to_hf_json());
        assert_eq!(Config::from_json(&bytes, p).expect("round trip"), c);
    }
    if let Ok(c) = AdapterConfig::from_json(data, p) {
        let bytes = serde_json_bytes(&c.to_peft_json());
        assert_eq!(AdapterConfig::from_json(&bytes, p).expect("round trip"), c);
    }
});

fn serde_json_bytes(v: &impl ToString) -> Vec<u8> {
    v.to_string().into_bytes()
}
