//! Walks through one sealed request and its streamed response, step by step.
//!
//! `cargo run --release -p tandem-proto --example seal_demo`

use std::time::{SystemTime, UNIX_EPOCH};

use tandem_proto::{
    KeyConfig, Limits, NodeKey, ReplayConfig, ReplayGuard, RoutingMetadata, SealOptions,
    SealedRequest, SizeBucket, Suite, open_request, seal_request,
};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() -> Result<(), tandem_proto::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);

    println!(
        "1. Three nodes each generate an HPKE key (X25519) and publish an RFC 9458 key config."
    );
    let nodes: Vec<NodeKey> = (0..3u8)
        .map(|id| NodeKey::generate(id, &Suite::ALL))
        .collect::<Result<_, _>>()?;
    for n in &nodes {
        let c = n.config();
        println!(
            "   node key id {}: {} bytes, public key {}…, sha256 {}…",
            c.key_id(),
            c.encoded_len(),
            &hex(c.public_key())[..16],
            &hex(&c.digest())[..16]
        );
    }
    let list =
        KeyConfig::encode_list(&nodes.iter().map(|n| n.config().clone()).collect::<Vec<_>>());
    let configs = KeyConfig::decode_list(&list)?;
    println!(
        "   the device reads them back from the application/ohttp-keys list ({} bytes)",
        list.len()
    );

    let prompt = b"Summarize: the quick brown fox jumps over the lazy dog.";
    let routing = RoutingMetadata {
        model_id: "tandem-3b".into(),
        adapter_id: "summarize".into(),
        size_bucket: SizeBucket::for_len(prompt.len()),
    };
    let options = SealOptions::default();
    println!(
        "\n2. The device seals a {}-byte prompt to all 3 nodes with {}.",
        prompt.len(),
        options.suite
    );
    let (sealed, ctx) = seal_request(&configs, &routing, now, prompt, &options)?;
    println!(
        "   sealed request: {} bytes, request id {}",
        sealed.len(),
        ctx.request_id()
    );

    let parsed = SealedRequest::parse(&sealed, &options.limits)?;
    println!(
        "\n3. The gateway reads only the header: model {:?}, adapter {:?}, size bucket {} (≤ {} bytes), \
         {} recipient wrappings (key ids {:?}), {} body chunk(s).",
        parsed.header.routing.model_id,
        parsed.header.routing.adapter_id,
        parsed.header.routing.size_bucket.0,
        parsed.header.routing.size_bucket.max_len(),
        parsed.recipients.len(),
        parsed
            .recipients
            .iter()
            .map(|r| r.key_id)
            .collect::<Vec<_>>(),
        parsed.body_chunk_count()
    );
    println!("   it forwards the bytes to node 1.");

    let node = &nodes[1];
    let opened = open_request(node, &sealed, &options.limits)?;
    println!(
        "\n4. Node 1 opens its own wrapping and the body: {:?}",
        String::from_utf8_lossy(&opened.body)
    );
    let mut guard = ReplayGuard::new(ReplayConfig::default())?;
    guard.check(&opened.header, now)?;
    println!("   replay guard: request id is fresh, creation time inside the window");
    match guard.check(&opened.header, now) {
        Err(e) => println!("   the same request again is rejected: {e}"),
        Ok(()) => println!("   BUG: replay accepted"),
    }

    println!("\n5. Node 1 streams the answer back, one sealed chunk per token.");
    let (head, mut sealer) = opened.responder.start(Limits::default());
    let tokens = ["A ", "fox ", "jumps ", "a ", "dog."];
    let mut chunks = Vec::new();
    for t in &tokens[..tokens.len() - 1] {
        chunks.push(sealer.seal(t.as_bytes())?);
    }
    chunks.push(sealer.seal_final(tokens[tokens.len() - 1].as_bytes())?);
    println!(
        "   response head {} bytes, {} chunks of {:?} bytes",
        head.len(),
        chunks.len(),
        chunks.iter().map(Vec::len).collect::<Vec<_>>()
    );

    println!("\n6. The device opens the head with its request context, then each chunk in order.");
    let mut opener = ctx.open_head(&head, Limits::default())?;
    let mut text = String::new();
    for (i, c) in chunks.iter().enumerate() {
        let chunk = opener.open(c)?;
        text.push_str(&String::from_utf8_lossy(&chunk.data));
        println!(
            "   chunk {i}: {:?}{}",
            String::from_utf8_lossy(&chunk.data),
            if chunk.is_final { "  (final)" } else { "" }
        );
    }
    opener.finish()?;
    println!("   answer: {text:?}");

    println!("\n7. Tampering is caught: the same response with its last chunk dropped.");
    let (sealed2, ctx2) = seal_request(&configs, &routing, now, prompt, &options)?;
    let opened2 = open_request(&nodes[2], &sealed2, &options.limits)?;
    let (head2, mut sealer2) = opened2.responder.start(Limits::default());
    let first = sealer2.seal(b"partial")?;
    let mut opener2 = ctx2.open_head(&head2, Limits::default())?;
    opener2.open(&first)?;
    match opener2.finish() {
        Err(e) => println!("   {e}"),
        Ok(()) => println!("   BUG: truncation not detected"),
    }
    Ok(())
}
