#![no_main]
//! Sealed request parser (round-trips) and the full open path with a fixed node key.

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tandem_proto::{Limits, NodeKey, SealedRequest, Suite, open_request};

fn node() -> &'static NodeKey {
    static NODE: OnceLock<NodeKey> = OnceLock::new();
    NODE.get_or_init(|| {
        NodeKey::derive(0, b"tandem fuzz node key ikm 32 byte", &Suite::ALL).expect("valid")
    })
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_chunk_len: 256,
        max_message_len: 4096,
    };
    if let Ok(req) = SealedRequest::parse(data, &limits) {
        assert_eq!(req.encode(), data);
    }
    if let Ok(opened) = open_request(node(), data, &limits) {
        assert!(opened.body.len() <= limits.max_message_len);
    }
});
