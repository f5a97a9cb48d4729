#![no_main]
//! Chunk framing parser; decode→encode round-trips.

use libfuzzer_sys::fuzz_target;
use tandem_proto::ChunkRef;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = ChunkRef::parse(data) {
        assert_eq!(c.encode(), data);
        assert_eq!(c.plaintext_len() + 16 + 5, data.len());
    }
});
