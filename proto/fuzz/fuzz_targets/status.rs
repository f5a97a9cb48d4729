#![no_main]
//! Sealed status opener (a node's refusal): the input is opened as a sealed status by a real
//! request context; a status that opens must be one this context's node sealed, so any input
//! that opens is re-sealed and opened again to the same detail.

use libfuzzer_sys::fuzz_target;
use tandem_proto::{
    NodeKey, RoutingMetadata, SEALED_STATUS_LEN, SealOptions, SizeBucket, Suite, open_request,
    seal_request,
};

fuzz_target!(|data: &[u8]| {
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
    // With a leading 0xff, the rest is a detail sealed by the real node (the round trip);
    // otherwise the input is the sealed status itself (the opener's checks).
    if data.first() == Some(&0xff) {
        let Ok(opened) = open_request(&node, &sealed, &opts.limits) else {
            return;
        };
        let Ok(status) = opened.responder.seal_status(&data[1..]) else {
            return;
        };
        assert_eq!(status.len(), SEALED_STATUS_LEN);
        assert_eq!(ctx.open_status(&status).expect("own status opens"), &data[1..]);
    } else {
        let _ = ctx.open_status(data);
    }
});
