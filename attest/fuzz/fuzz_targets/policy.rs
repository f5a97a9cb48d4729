#![no_main]
use libfuzzer_sys::fuzz_target;
use tandem_attest::verify::Policy;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Policy::from_json(data) {
        let again = Policy::from_json(&p.to_json()).expect("re-encoded policy parses");
        assert_eq!(again.release_rule(), p.release_rule());
    }
});
