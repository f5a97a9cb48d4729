#![no_main]
//! Response head parser (round-trips), then a real response stream: the input's first 50
//! bytes are a head, the rest is split into chunks (2-byte length prefixes) fed to the opener
//! of a real request context.

use libfuzzer_sys::fuzz_target;
use tandem_proto::{
    Limits, NodeKey, ResponseHead, RoutingMetadata, SealOptions, SizeBucket, Suite, open_request,
    seal_request,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = ResponseHead::parse(data) {
        assert_eq!(h.encode(), data);
    }
    let node = NodeKey::derive(0, b"tandem fuzz node key ikm 32 byte", &Suite::ALL).expect("valid");
    let routing = RoutingMetadata {
        model_id: "m".into(),
        adapter_id: String::new(),
        size_bucket: SizeBucket(0),
    };
    let opts = SealOptions::default();
    let Ok((sealed, ctx)) = seal_request(&[node.config().clone()], &routing, 0, b"q", &opts) else {
        return;
    };
    let limits = Limits {
        max_chunk_len: 64,
        max_message_len: 256,
    };
    // With a real head, the chunk stream logic runs; with the fuzzer's head, the head checks.
    let (head, rest) = if data.first() == Some(&0xff) {
        let Ok(opened) = open_request(&node, &sealed, &opts.limits) else {
            return;
        };
        let (head, _) = opened.responder.start(limits);
        (head, &data[1..])
    } else {
        let n = data.len().min(50);
        (data[..n].to_vec(), &data[n..])
    };
    let Ok(mut opener) = ctx.open_head(&head, limits) else {
        return;
    };
    let mut rest = rest;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let _ = opener.open(&rest[2..2 + len]);
        rest = &rest[2 + len..];
    }
    let _ = opener.finish();
});
