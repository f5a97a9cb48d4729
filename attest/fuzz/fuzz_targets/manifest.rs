#![no_main]
use libfuzzer_sys::fuzz_target;
use tandem_attest::release::ReleaseManifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ReleaseManifest::from_json(data) {
        let canon = m.canonical_json();
        assert_eq!(
            ReleaseManifest::from_canonical_json(&canon).expect("canonical form parses"),
            m
        );
    }
    if let Ok(m) = ReleaseManifest::from_canonical_json(data) {
        assert_eq!(m.canonical_json(), data);
    }
});
