#![no_main]
//! Untrusted task-example JSONL: never panic; what parses writes back and parses the same.
use libfuzzer_sys::fuzz_target;
use tandem_lab::tasks::{examples_to_jsonl, parse_examples};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ex) = parse_examples(text) {
        let back = parse_examples(&examples_to_jsonl(&ex)).expect("round trip");
        assert_eq!(back, ex);
    }
});
