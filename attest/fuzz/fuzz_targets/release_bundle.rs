#![no_main]
use libfuzzer_sys::fuzz_target;
use tandem_attest::release::ReleaseBundle;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = ReleaseBundle::from_json(data) {
        let again = ReleaseBundle::from_json(&b.to_json()).expect("re-encoded bundle parses");
        assert_eq!(again, b);
    }
});
