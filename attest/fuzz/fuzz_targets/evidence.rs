#![no_main]
use libfuzzer_sys::fuzz_target;
use tandem_attest::evidence::Evidence;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Evidence::from_json(data) {
        let again = Evidence::from_json(&serde_json::to_vec(&e.to_value()).expect("json"))
            .expect("re-encoded evidence parses");
        assert_eq!(again, e);
    }
});
