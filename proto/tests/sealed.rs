//! Sealed requests and responses: round trips, and every way of breaking a message giving its
//! specific error.

use rand_hpke::SeedableRng;
use rand_hpke::rngs::StdRng;
use tandem_proto::{
    ChunkOpener, Error, KeyConfig, Limits, MisuseError, NodeKey, RequestError, ResponseContext,
    ResponseError, RoutingMetadata, SealOptions, SealedRequest, SizeBucket, StreamError, Suite,
    open_request, seal_request_with_rng,
};

const NOW: u64 = 1_800_000_000;

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn nodes(n: usize, seed: u64) -> Vec<NodeKey> {
    let mut r = rng(seed);
    (0..n)
        .map(|i| NodeKey::generate_with_rng(i as u8, &Suite::ALL, &mut r).expect("valid"))
        .collect()
}

fn configs(nodes: &[NodeKey]) -> Vec<KeyConfig> {
    nodes.iter().map(|n| n.config().clone()).collect()
}

fn routing() -> RoutingMetadata {
    RoutingMetadata {
        model_id: "tandem-3b@sha256:ab12".into(),
        adapter_id: "summarize-v2".into(),
        size_bucket: SizeBucket(1),
    }
}

fn small_limits() -> Limits {
    Limits {
        max_chunk_len: 64,
        max_message_len: 4096,
    }
}

fn seal(
    nodes: &[NodeKey],
    body: &[u8],
    suite: Suite,
    limits: Limits,
    seed: u64,
) -> (Vec<u8>, ResponseContext) {
    let opts = SealOptions { suite, limits };
    seal_request_with_rng(
        &configs(nodes),
        &routing(),
        NOW,
        body,
        &opts,
        &mut rng(seed),
    )
    .expect("seal")
}

fn stream_err(e: Error) -> StreamError {
    match e {
        Error::Stream(s) => s,
        other => panic!("expected a stream error, got {other:?}"),
    }
}

#[test]
fn every_recipient_opens_for_every_k_and_suite() {
    let all = nodes(16, 1);
    for suite in Suite::ALL {
        for k in [1usize, 2, 3, 8, 16] {
            for body_len in [0usize, 1, 63, 64, 65, 200] {
                let body: Vec<u8> = (0..body_len).map(|i| i as u8).collect();
                let (sealed, _ctx) = seal(&all[..k], &body, suite, small_limits(), k as u64);
                let parsed = SealedRequest::parse(&sealed, &small_limits()).expect("parses");
                assert_eq!(parsed.recipients.len(), k);
                assert_eq!(parsed.header.suite, suite);
                assert_eq!(parsed.header.routing, routing());
                assert_eq!(parsed.header.created_at, NOW);
                assert_eq!(parsed.body_chunk_count(), body_len.div_ceil(64).max(1));
                assert_eq!(parsed.encode(), sealed);
                for node in &all[..k] {
                    let opened = open_request(node, &sealed, &small_limits()).expect("opens");
                    assert_eq!(&opened.body[..], &body[..]);
                    assert_eq!(opened.header, parsed.header);
                }
                // A node that was not a recipient cannot open it.
                if k < 16 {
                    assert_eq!(
                        open_request(&all[k], &sealed, &small_limits()).map(|_| ()),
                        Err(Error::Request(RequestError::NoWrappingForKey {
                            key_id: k as u8
                        }))
                    );
                }
            }
        }
    }
}

#[test]
fn full_round_trip_with_streamed_response_from_each_recipient() {
    let all = nodes(3, 2);
    for (i, node) in all.iter().enumerate() {
        let (sealed, ctx) = seal(
            &all,
            b"prompt",
            Suite::default(),
            Limits::default(),
            10 + i as u64,
        );
        let opened = open_request(node, &sealed, &Limits::default()).expect("opens");
        let (head, mut sealer) = opened
            .responder
            .start_with_rng(Limits::default(), &mut rng(99));
        let c0 = sealer.seal(b"to").expect("seal");
        let c1 = sealer.seal(b"ken").expect("seal");
        let c2 = sealer.seal_final(b"s").expect("seal");
        let mut opener = ctx.open_head(&head, Limits::default()).expect("head");
        let mut out = Vec::new();
        for c in [&c0, &c1, &c2] {
            out.extend(opener.open(c).expect("chunk").data);
        }
        assert!(opener.is_finished());
        opener.finish().expect("final seen");
        assert_eq!(out, b"tokens");
    }
}

#[test]
fn wrong_recipient_key_with_same_key_id_fails_to_open_wrapping() {
    let intended = nodes(1, 3);
    let mut r = rng(4);
    // Same key id 0, different private key.
    let impostor = NodeKey::generate_with_rng(0, &Suite::ALL, &mut r).expect("valid");
    let (sealed, _) = seal(&intended, b"secret", Suite::default(), Limits::default(), 5);
    assert_eq!(
        open_request(&impostor, &sealed, &Limits::default()).map(|_| ()),
        Err(Error::Request(RequestError::WrappingOpen { key_id: 0 }))
    );
}

#[test]
fn suite_must_be_offered() {
    let mut r = rng(6);
    let aes_only =
        NodeKey::generate_with_rng(1, &[Suite::X25519Sha256Aes128Gcm], &mut r).expect("valid");
    let opts = SealOptions {
        suite: Suite::X25519Sha256ChaCha20Poly1305,
        limits: Limits::default(),
    };
    let err = seal_request_with_rng(
        &[aes_only.config().clone()],
        &routing(),
        NOW,
        b"x",
        &opts,
        &mut r,
    )
    .map(|_| ());
    assert!(matches!(err, Err(Error::KeyConfig(_))), "{err:?}");
    // A request sealed with ChaCha to a node offering both, opened by a node offering only AES
    // under the same key pair, is rejected before any HPKE work.
    let both = NodeKey::derive(1, b"node ikm 0123456789abcdef0123456", &Suite::ALL).expect("ok");
    let aes = NodeKey::derive(
        1,
        b"node ikm 0123456789abcdef0123456",
        &[Suite::X25519Sha256Aes128Gcm],
    )
    .expect("ok");
    let (sealed, _) = seal_request_with_rng(
        &[both.config().clone()],
        &routing(),
        NOW,
        b"x",
        &opts,
        &mut r,
    )
    .expect("seal");
    assert_eq!(
        open_request(&aes, &sealed, &Limits::default()).map(|_| ()),
        Err(Error::Request(RequestError::SuiteNotOffered {
            key_id: 1,
            suite: Suite::X25519Sha256ChaCha20Poly1305
        }))
    );
}

#[test]
fn recipient_count_and_metadata_misuse() {
    let all = nodes(17, 7);
    let opts = SealOptions::default();
    let mut r = rng(8);
    for k in [0usize, 17] {
        assert_eq!(
            seal_request_with_rng(&configs(&all[..k]), &routing(), NOW, b"", &opts, &mut r)
                .map(|_| ()),
            Err(Error::Misuse(MisuseError::RecipientCount(k)))
        );
    }
    let mut bad = routing();
    bad.model_id = String::new();
    assert!(matches!(
        seal_request_with_rng(&configs(&all[..1]), &bad, NOW, b"", &opts, &mut r),
        Err(Error::Misuse(MisuseError::InvalidMetadata {
            field: "model_id",
            ..
        }))
    ));
    bad.model_id = "has space".into();
    assert!(matches!(
        seal_request_with_rng(&configs(&all[..1]), &bad, NOW, b"", &opts, &mut r),
        Err(Error::Misuse(MisuseError::InvalidMetadata {
            field: "model_id",
            ..
        }))
    ));
}

#[test]
fn truncated_request_at_every_offset_gives_truncation_errors() {
    let all = nodes(2, 9);
    let limits = small_limits();
    let body = vec![7u8; 150]; // three chunks: 64, 64, 22
    let (sealed, _) = seal(&all, &body, Suite::default(), limits, 11);
    // The body is three framed chunks: 4-byte length, 5-byte chunk header, plaintext, tag.
    let body_len: usize = [64usize, 64, 22].iter().map(|len| 4 + 5 + len + 16).sum();
    let body_start = sealed.len() - body_len;
    // Chunk boundaries in the body (offsets where a whole number of chunks is present).
    let mut boundaries = vec![body_start];
    for len in [64usize, 64] {
        let last = *boundaries.last().expect("non-empty");
        boundaries.push(last + 4 + 5 + len + 16);
    }
    for cut in 0..sealed.len() {
        let err = open_request(&all[0], &sealed[..cut], &limits).map(|_| ());
        let err = err.expect_err("a truncated request never opens");
        if cut < body_start {
            assert!(
                matches!(err, Error::Request(RequestError::Truncated { .. })),
                "cut {cut}: {err:?}"
            );
        } else if boundaries.contains(&cut) {
            // Whole chunks, but not the final one: the stream was truncated.
            assert!(
                matches!(err, Error::Stream(StreamError::MissingFinal { .. })),
                "cut {cut}: {err:?}"
            );
        } else {
            assert!(
                matches!(err, Error::Request(RequestError::Truncated { .. })),
                "cut {cut}: {err:?}"
            );
        }
    }
}

#[test]
fn every_bit_flip_in_a_request_is_detected() {
    let all = nodes(2, 12);
    let limits = small_limits();
    let body = vec![3u8; 100];
    let (sealed, _) = seal(&all, &body, Suite::default(), limits, 13);
    let body_start = sealed.len() - (4 + 5 + 64 + 16) - (4 + 5 + 36 + 16);
    for i in 0..sealed.len() {
        for bit in 0..8 {
            let mut m = sealed.clone();
            m[i] ^= 1 << bit;
            let err = open_request(&all[0], &m, &limits)
                .map(|_| ())
                .expect_err("a flipped bit never opens");
            assert!(err.is_untrusted_input(), "byte {i} bit {bit}: {err:?}");
            if i >= body_start {
                // Body bytes: framing or chunk errors only.
                assert!(
                    matches!(
                        err,
                        Error::Stream(_)
                            | Error::Request(RequestError::BodyChunkLength { .. })
                            | Error::Request(RequestError::Truncated { .. })
                    ),
                    "byte {i} bit {bit}: {err:?}"
                );
            }
        }
    }
}

#[test]
fn stripping_or_altering_another_recipient_breaks_the_body() {
    let all = nodes(2, 14);
    let (sealed, _) = seal(&all, b"body", Suite::default(), Limits::default(), 15);
    let parsed = SealedRequest::parse(&sealed, &Limits::default()).expect("parses");
    let header_len = sealed.len() - parsed.recipients.len() * 81 - 1 - (4 + 5 + 4 + 16);
    // Flip a byte inside recipient 1's wrapping; node 0 must notice (transcript binding).
    let mut m = sealed.clone();
    m[header_len + 1 + 81 + 40] ^= 1;
    assert_eq!(
        stream_err(
            open_request(&all[0], &m, &Limits::default())
                .map(|_| ())
                .expect_err("detected")
        ),
        StreamError::Authentication { seq: 0 }
    );
    // Strip recipient 1 and fix the count.
    let mut m = sealed[..header_len + 1 + 81].to_vec();
    m[header_len] = 1;
    m.extend_from_slice(&sealed[header_len + 1 + 2 * 81..]);
    assert_eq!(
        stream_err(
            open_request(&all[0], &m, &Limits::default())
                .map(|_| ())
                .expect_err("detected")
        ),
        StreamError::Authentication { seq: 0 }
    );
}

#[test]
fn body_chunks_dropped_duplicated_swapped_or_spliced() {
    let all = nodes(1, 16);
    let limits = small_limits();
    let body = vec![5u8; 150];
    let (sealed, _) = seal(&all, &body, Suite::default(), limits, 17);
    let (other, _) = seal(&all, &body, Suite::default(), limits, 18);
    let split = |m: &[u8]| -> (Vec<u8>, Vec<Vec<u8>>) {
        let prefix_len = m.len() - (3 * (4 + 5 + 16) + 150);
        let mut chunks = Vec::new();
        let mut off = prefix_len;
        while off < m.len() {
            let len = u32::from_be_bytes(m[off..off + 4].try_into().expect("4")) as usize;
            chunks.push(m[off..off + 4 + len].to_vec());
            off += 4 + len;
        }
        (m[..prefix_len].to_vec(), chunks)
    };
    let (prefix, chunks) = split(&sealed);
    let (_, other_chunks) = split(&other);
    assert_eq!(chunks.len(), 3);
    let build = |parts: &[&Vec<u8>]| -> Vec<u8> {
        let mut m = prefix.clone();
        for p in parts {
            m.extend_from_slice(p);
        }
        m
    };
    let open = |m: Vec<u8>| {
        stream_err(
            open_request(&all[0], &m, &limits)
                .map(|_| ())
                .expect_err("detected"),
        )
    };
    assert_eq!(
        open(build(&[&chunks[0], &chunks[2]])),
        StreamError::Missing {
            expected: 1,
            got: 2
        }
    );
    assert_eq!(
        open(build(&[&chunks[0], &chunks[0], &chunks[1], &chunks[2]])),
        StreamError::Duplicate { seq: 0 }
    );
    assert_eq!(
        open(build(&[&chunks[1], &chunks[0], &chunks[2]])),
        StreamError::Missing {
            expected: 0,
            got: 1
        }
    );
    assert_eq!(
        open(build(&[&chunks[0], &chunks[1]])),
        StreamError::MissingFinal { received: 2 }
    );
    assert_eq!(
        open(build(&[&chunks[0], &chunks[1], &chunks[2], &chunks[2]])),
        StreamError::AfterFinal { seq: 2 }
    );
    assert_eq!(
        open(build(&[&chunks[0], &other_chunks[1], &chunks[2]])),
        StreamError::Authentication { seq: 1 }
    );
}

/// Seals a 3-chunk response from node 0 of a fresh request; returns (context, head, chunks).
fn response_fixture(seed: u64) -> (ResponseContext, Vec<u8>, Vec<Vec<u8>>) {
    let all = nodes(2, 20);
    let (sealed, ctx) = seal(&all, b"q", Suite::default(), Limits::default(), seed);
    let opened = open_request(&all[0], &sealed, &Limits::default()).expect("opens");
    let (head, mut s) = opened
        .responder
        .start_with_rng(Limits::default(), &mut rng(seed + 1000));
    let chunks = vec![
        s.seal(b"alpha").expect("seal"),
        s.seal(b"beta").expect("seal"),
        s.seal_final(b"gamma").expect("seal"),
    ];
    (ctx, head, chunks)
}

fn opener(seed: u64) -> (ChunkOpener, Vec<Vec<u8>>) {
    let (ctx, head, chunks) = response_fixture(seed);
    (
        ctx.open_head(&head, Limits::default()).expect("head"),
        chunks,
    )
}

#[test]
fn response_chunks_dropped_duplicated_swapped_spliced_or_cut() {
    let (mut o, c) = opener(30);
    o.open(&c[0]).expect("0");
    assert_eq!(
        stream_err(o.open(&c[2]).expect_err("gap")),
        StreamError::Missing {
            expected: 1,
            got: 2
        }
    );

    let (mut o, c) = opener(30);
    o.open(&c[0]).expect("0");
    assert_eq!(
        stream_err(o.open(&c[0]).expect_err("dup")),
        StreamError::Duplicate { seq: 0 }
    );

    let (mut o, c) = opener(30);
    assert_eq!(
        stream_err(o.open(&c[1]).expect_err("swap")),
        StreamError::Missing {
            expected: 0,
            got: 1
        }
    );

    let (mut o, c) = opener(30);
    o.open(&c[0]).expect("0");
    o.open(&c[1]).expect("1");
    assert_eq!(
        stream_err(o.finish().expect_err("no final")),
        StreamError::MissingFinal { received: 2 }
    );

    let (mut o, c) = opener(30);
    for x in &c {
        o.open(x).expect("in order");
    }
    assert_eq!(
        stream_err(o.open(&c[2]).expect_err("after final")),
        StreamError::AfterFinal { seq: 2 }
    );

    // Splice: chunk 1 of a different response, same position.
    let (_, other) = opener(31);
    let (mut o, c) = opener(30);
    o.open(&c[0]).expect("0");
    assert_eq!(
        stream_err(o.open(&other[1]).expect_err("splice")),
        StreamError::Authentication { seq: 1 }
    );

    // Flipping the final flag of the last chunk, or setting it on a middle one.
    let (mut o, c) = opener(30);
    o.open(&c[0]).expect("0");
    let mut m = c[1].clone();
    m[4] ^= 1;
    assert_eq!(
        stream_err(o.open(&m).expect_err("flag")),
        StreamError::Authentication { seq: 1 }
    );
}

#[test]
fn every_bit_flip_and_cut_of_response_chunks_is_detected() {
    let (_, c) = opener(40);
    for (idx, chunk) in c.iter().enumerate() {
        for cut in 0..chunk.len() {
            let (mut o, c2) = opener(40);
            for prev in &c2[..idx] {
                o.open(prev).expect("prefix");
            }
            let err = stream_err(o.open(&chunk[..cut]).expect_err("cut detected"));
            if cut < 5 + 16 {
                assert!(
                    matches!(err, StreamError::Truncated { .. }),
                    "cut {cut}: {err:?}"
                );
            } else {
                assert_eq!(
                    err,
                    StreamError::Authentication { seq: idx as u32 },
                    "cut {cut}"
                );
            }
        }
        for i in 0..chunk.len() {
            for bit in 0..8 {
                let (mut o, c2) = opener(40);
                for prev in &c2[..idx] {
                    o.open(prev).expect("prefix");
                }
                let mut m = chunk.clone();
                m[i] ^= 1 << bit;
                let err = stream_err(o.open(&m).expect_err("flip detected"));
                let expected_kind = match i {
                    0..=3 => matches!(
                        err,
                        StreamError::Missing { .. } | StreamError::Duplicate { .. }
                    ),
                    4 if bit == 0 => err == StreamError::Authentication { seq: idx as u32 },
                    4 => matches!(err, StreamError::UnknownFlags { .. }),
                    _ => err == StreamError::Authentication { seq: idx as u32 },
                };
                assert!(expected_kind, "chunk {idx} byte {i} bit {bit}: {err:?}");
            }
        }
    }
}

#[test]
fn response_head_cut_flipped_or_for_another_request() {
    let (ctx_a, head_a, chunks_a) = response_fixture(50);
    let (ctx_b, _head_b, _) = response_fixture(51);
    // Opened with another request's context: its binding does not match.
    assert_eq!(
        ctx_b.open_head(&head_a, Limits::default()).map(|_| ()),
        Err(Error::Response(ResponseError::WrongRequest))
    );
    let mut o = ctx_a
        .open_head(&head_a, Limits::default())
        .expect("own context");
    assert_eq!(o.open(&chunks_a[0]).expect("opens").data, b"alpha");

    for cut in 0..head_a.len() {
        let (ctx, head, _) = response_fixture(50);
        assert!(matches!(
            ctx.open_head(&head[..cut], Limits::default()),
            Err(Error::Response(ResponseError::Truncated { .. }))
        ));
    }
    for i in 0..head_a.len() {
        for bit in 0..8 {
            let (ctx, mut head, _) = response_fixture(50);
            head[i] ^= 1 << bit;
            let err = ctx
                .open_head(&head, Limits::default())
                .map(|_| ())
                .expect_err("detected");
            let ok = match i {
                0 => err == Error::Response(ResponseError::UnsupportedVersion(1 ^ (1 << bit))),
                1 => {
                    // Index 1 is the other (real) recipient: wrong keys, so the binding fails.
                    matches!(
                        err,
                        Error::Response(ResponseError::UnknownRecipient { .. })
                            | Error::Response(ResponseError::WrongRequest)
                    )
                }
                _ => err == Error::Response(ResponseError::WrongRequest),
            };
            assert!(ok, "byte {i} bit {bit}: {err:?}");
        }
    }
    let (ctx, mut head, _) = response_fixture(50);
    head.push(0);
    assert_eq!(
        ctx.open_head(&head, Limits::default()).map(|_| ()),
        Err(Error::Response(ResponseError::TrailingBytes(1)))
    );
}

#[test]
fn chunk_and_message_limits_have_their_own_errors() {
    let all = nodes(1, 60);
    let big = Limits {
        max_chunk_len: 1024,
        max_message_len: 4096,
    };
    let tight = Limits {
        max_chunk_len: 16,
        max_message_len: 40,
    };
    let (sealed, ctx) = seal(&all, b"q", Suite::default(), big, 61);
    let opened = open_request(&all[0], &sealed, &big).expect("opens");
    let (head, mut s) = opened.responder.start_with_rng(big, &mut rng(62));
    let c0 = s.seal(&[1u8; 17]).expect("within sealer's limits");
    let mut o = ctx.open_head(&head, tight).expect("head");
    assert_eq!(
        stream_err(o.open(&c0).expect_err("too big")),
        StreamError::ChunkTooLarge { len: 17, max: 16 }
    );

    let (sealed, ctx) = seal(&all, b"q", Suite::default(), big, 63);
    let opened = open_request(&all[0], &sealed, &big).expect("opens");
    let (head, mut s) = opened.responder.start_with_rng(big, &mut rng(64));
    let mut o = ctx.open_head(&head, tight).expect("head");
    for _ in 0..2 {
        o.open(&s.seal(&[1u8; 16]).expect("seal"))
            .expect("within limits");
    }
    assert_eq!(
        stream_err(
            o.open(&s.seal(&[1u8; 16]).expect("seal"))
                .expect_err("too much")
        ),
        StreamError::MessageTooLarge { len: 48, max: 40 }
    );

    // The sealer refuses to produce what the limits forbid (caller misuse, not input).
    let (sealed, _) = seal(&all, b"q", Suite::default(), big, 65);
    let opened = open_request(&all[0], &sealed, &big).expect("opens");
    let (_, mut s) = opened.responder.start_with_rng(tight, &mut rng(66));
    assert_eq!(
        s.seal(&[0u8; 17]),
        Err(Error::Misuse(MisuseError::ChunkTooLarge {
            len: 17,
            max: 16
        }))
    );
    s.seal(&[0u8; 16]).expect("ok");
    s.seal(&[0u8; 16]).expect("ok");
    assert_eq!(
        s.seal(&[0u8; 16]),
        Err(Error::Misuse(MisuseError::MessageTooLarge {
            len: 48,
            max: 40
        }))
    );

    // Request bodies: too big to seal, and a body chunk prefix larger than the opener allows.
    let opts = SealOptions {
        suite: Suite::default(),
        limits: tight,
    };
    assert_eq!(
        seal_request_with_rng(
            &configs(&all),
            &routing(),
            NOW,
            &[0u8; 41],
            &opts,
            &mut rng(67)
        )
        .map(|_| ()),
        Err(Error::Misuse(MisuseError::MessageTooLarge {
            len: 41,
            max: 40
        }))
    );
    let (sealed, _) = seal(&all, &[0u8; 100], Suite::default(), big, 68);
    assert!(matches!(
        open_request(&all[0], &sealed, &tight).map(|_| ()),
        Err(Error::Request(RequestError::BodyChunkLength {
            index: 0,
            ..
        }))
    ));
    let (sealed, _) = seal(
        &all,
        &[0u8; 100],
        Suite::default(),
        Limits {
            max_chunk_len: 16,
            max_message_len: 4096,
        },
        69,
    );
    assert_eq!(
        open_request(&all[0], &sealed, &tight).map(|_| ()),
        Err(Error::Stream(StreamError::MessageTooLarge {
            len: 48,
            max: 40
        }))
    );
}

#[test]
fn chacha_suite_round_trip_and_cross_suite_chunks_fail() {
    let all = nodes(1, 70);
    let (sealed, ctx) = seal(
        &all,
        b"hello",
        Suite::X25519Sha256ChaCha20Poly1305,
        Limits::default(),
        71,
    );
    let opened = open_request(&all[0], &sealed, &Limits::default()).expect("opens");
    assert_eq!(opened.header.suite, Suite::X25519Sha256ChaCha20Poly1305);
    let (head, s) = opened
        .responder
        .start_with_rng(Limits::default(), &mut rng(72));
    let c = s.seal_final(b"world").expect("seal");
    let mut o = ctx.open_head(&head, Limits::default()).expect("head");
    assert_eq!(o.open(&c).expect("opens").data, b"world");
    // Changing the AEAD id in the header changes the suite: no wrapping opens.
    let mut m = sealed.clone();
    m[6] = 0x01;
    assert_eq!(
        open_request(&all[0], &m, &Limits::default()).map(|_| ()),
        Err(Error::Request(RequestError::WrappingOpen { key_id: 0 }))
    );
}

/// Writes the fuzz seed corpus (run with `TANDEM_WRITE_FUZZ_CORPUS=fuzz/corpus cargo test
/// -p tandem-proto --test sealed write_fuzz_seed_corpus -- --ignored`; the path is relative to proto/).
#[test]
#[ignore = "writes files; run by hand to refresh proto/fuzz/corpus"]
fn write_fuzz_seed_corpus() {
    let Some(dir) = std::env::var_os("TANDEM_WRITE_FUZZ_CORPUS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join(name), bytes).expect("write");
    };
    // Same key as the fuzz targets, so seeds reach the cryptographic checks.
    let node = NodeKey::derive(0, b"tandem fuzz node key ikm 32 byte", &Suite::ALL).expect("ok");
    write("key_config", "single", &node.config().encode());
    write(
        "key_config",
        "list",
        &KeyConfig::encode_list(&[node.config().clone()]),
    );
    let limits = Limits {
        max_chunk_len: 256,
        max_message_len: 4096,
    };
    for (name, body) in [
        ("empty", &b""[..]),
        ("short", &b"hello"[..]),
        ("multi", &[9u8; 600][..]),
    ] {
        for suite in Suite::ALL {
            let opts = SealOptions { suite, limits };
            let (sealed, ctx) = seal_request_with_rng(
                &[node.config().clone()],
                &routing(),
                NOW,
                body,
                &opts,
                &mut rng(body.len() as u64),
            )
            .expect("seal");
            write("request", &format!("{name}-{:?}", suite.aead().0), &sealed);
            if name == "short" && suite == Suite::default() {
                let opened = open_request(&node, &sealed, &limits).expect("opens");
                let (head, mut s) = opened.responder.start_with_rng(limits, &mut rng(5));
                let c0 = s.seal(b"tok").expect("seal");
                let c1 = s.seal_final(b"en").expect("seal");
                write("chunk", "chunk0", &c0);
                write("chunk", "final", &c1);
                write("response", "head", &head);
                let mut seq = vec![0xffu8];
                for c in [&c0, &c1] {
                    seq.extend_from_slice(&(c.len() as u16).to_be_bytes());
                    seq.extend_from_slice(c);
                }
                write("response", "stream-with-real-head", &seq);
                drop(ctx);
            }
        }
    }
}
