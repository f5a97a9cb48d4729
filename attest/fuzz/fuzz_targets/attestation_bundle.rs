#![no_main]
use libfuzzer_sys::fuzz_target;
use tandem_attest::attestation::AttestationBundle;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = AttestationBundle::from_json(data) {
        let again = AttestationBundle::from_json(&b.to_json()).expect("re-encoded bundle parses");
        assert_eq!(again, b);
    }
});
