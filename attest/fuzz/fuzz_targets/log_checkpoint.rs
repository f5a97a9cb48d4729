#![no_main]
//! C2SP tlog-checkpoint bodies: parse, and every accepted body re-encodes to the same bytes.
use libfuzzer_sys::fuzz_target;
use tandem_attest::log::Checkpoint;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Checkpoint::parse(data) {
        assert_eq!(c.encode().as_bytes(), data);
        assert_eq!(Checkpoint::parse(c.encode().as_bytes()).ok(), Some(c));
    }
});
