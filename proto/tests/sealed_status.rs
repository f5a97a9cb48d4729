//! Sealed statuses (a node's refusal of a request it opened): round trip, fixed length, every
//! cut and every flipped bit refused, no crossing with response streams or other requests.

use rand_hpke::SeedableRng;
use rand_hpke::rngs::StdRng;
use tandem_proto::{
    Error, Limits, MAX_STATUS_DETAIL_LEN, MisuseError, NodeKey, ResponseContext, ResponseError,
    RoutingMetadata, SEALED_STATUS_LEN, SealOptions, SizeBucket, StreamError, Suite, open_request,
    seal_request_with_rng,
};

const NOW: u64 = 1_800_000_000;

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn routing() -> RoutingMetadata {
    RoutingMetadata {
        model_id: "m".into(),
        adapter_id: String::new(),
        size_bucket: SizeBucket(0),
    }
}

/// A request to two nodes, opened by node `by`: (device context, node's responder).
fn fixture(seed: u64, suite: Suite, by: usize) -> (ResponseContext, tandem_proto::Responder) {
    let mut r = rng(seed);
    let nodes: Vec<NodeKey> = (0..2)
        .map(|i| NodeKey::generate_with_rng(i, &Suite::ALL, &mut r).expect("valid"))
        .collect();
    let configs: Vec<_> = nodes.iter().map(|n| n.config().clone()).collect();
    let opts = SealOptions {
        suite,
        limits: Limits::default(),
    };
    let (sealed, ctx) =
        seal_request_with_rng(&configs, &routing(), NOW, b"q", &opts, &mut r).expect("seal");
    let opened = open_request(&nodes[by], &sealed, &Limits::default()).expect("opens");
    (ctx, opened.responder)
}

const DETAIL: &[u8] = b"1237 prompt tokens + 211 new tokens exceed the model's context of 256";

fn sealed_status(seed: u64) -> (ResponseContext, Vec<u8>) {
    let (ctx, responder) = fixture(seed, Suite::default(), 1);
    let s = responder
        .seal_status_with_rng(DETAIL, &mut rng(seed + 1))
        .expect("seals");
    (ctx, s)
}

#[test]
fn round_trip_for_each_suite_and_every_detail_length_has_one_size() {
    for suite in Suite::ALL {
        for len in [0, 1, 100, MAX_STATUS_DETAIL_LEN] {
            let detail = vec![0xa5u8; len];
            let (ctx, responder) = fixture(len as u64, suite, 0);
            let s = responder.seal_status(&detail).expect("seals");
            assert_eq!(
                s.len(),
                SEALED_STATUS_LEN,
                "length hides the detail's length"
            );
            assert_eq!(ctx.open_status(&s).expect("opens"), detail);
        }
    }
    let (ctx, s) = sealed_status(1);
    assert_eq!(ctx.open_status(&s).expect("opens"), DETAIL);
    assert!(
        !s.windows(4).any(|w| w == b"1237"),
        "the detail is not readable in the sealed bytes"
    );
}

#[test]
fn a_detail_longer_than_the_limit_is_caller_misuse() {
    let (_, responder) = fixture(2, Suite::default(), 0);
    let e = responder
        .seal_status(&[0u8; MAX_STATUS_DETAIL_LEN + 1])
        .expect_err("too long");
    assert_eq!(
        e,
        Error::Misuse(MisuseError::ChunkTooLarge {
            len: MAX_STATUS_DETAIL_LEN + 1,
            max: MAX_STATUS_DETAIL_LEN
        })
    );
    assert!(!e.is_untrusted_input());
}

#[test]
fn every_cut_and_extension_is_refused_by_length() {
    for cut in 0..SEALED_STATUS_LEN {
        let (ctx, s) = sealed_status(3);
        assert_eq!(
            ctx.open_status(&s[..cut]),
            Err(Error::Response(ResponseError::StatusLength {
                len: cut,
                expected: SEALED_STATUS_LEN
            }))
        );
    }
    let (ctx, mut s) = sealed_status(3);
    s.push(0);
    assert!(matches!(
        ctx.open_status(&s),
        Err(Error::Response(ResponseError::StatusLength { .. }))
    ));
}

#[test]
fn every_flipped_bit_is_refused() {
    let (_, reference) = sealed_status(4);
    for i in 0..reference.len() {
        for bit in 0..8 {
            let (ctx, mut s) = sealed_status(4);
            s[i] ^= 1 << bit;
            let err = ctx.open_status(&s).expect_err("a flipped bit never opens");
            let expected = match i {
                0 => matches!(err, Error::Response(ResponseError::UnsupportedVersion(_))),
                1 => matches!(
                    err,
                    Error::Response(ResponseError::UnknownRecipient { .. })
                        | Error::Response(ResponseError::WrongRequest)
                ),
                // The rest of the head: nonce and binding.
                2..50 => err == Error::Response(ResponseError::WrongRequest),
                // Sequence number: a gap.
                50..54 => matches!(err, Error::Stream(StreamError::Missing { .. })),
                // Flags: unknown bits, or a final flag cleared (the AAD then differs).
                54 => matches!(
                    err,
                    Error::Stream(StreamError::UnknownFlags { .. })
                        | Error::Stream(StreamError::Authentication { seq: 0 })
                ),
                _ => err == Error::Stream(StreamError::Authentication { seq: 0 }),
            };
            assert!(expected, "byte {i} bit {bit}: {err:?}");
        }
    }
}

#[test]
fn a_status_opens_only_for_its_request_and_never_as_a_stream() {
    // Another request's context: the binding differs.
    let (_, s) = sealed_status(5);
    let (other, _) = sealed_status(6);
    assert_eq!(
        other.open_status(&s),
        Err(Error::Response(ResponseError::WrongRequest))
    );
    // Its head and chunk fed to the stream path: the head binds (same request) but the chunk
    // was sealed under the status key, so it does not authenticate as a response chunk.
    let (ctx, s) = sealed_status(5);
    let (head, chunk) = s.split_at(tandem_proto::response::RESPONSE_HEAD_LEN);
    let mut opener = ctx.open_head(head, Limits::default()).expect("head binds");
    assert_eq!(
        opener.open(chunk).map(|_| ()),
        Err(Error::Stream(StreamError::Authentication { seq: 0 }))
    );
    // A response stream's head and final chunk, passed off as a sealed status of the right
    // length: refused (stream key, not status key).
    let (ctx, responder) = fixture(7, Suite::default(), 0);
    let (head, sealer) = responder.start(Limits::default());
    let body = vec![0u8; SEALED_STATUS_LEN - head.len() - 5 - 16];
    let chunk = sealer.seal_final(&body).expect("seals");
    let forged = [head, chunk].concat();
    assert_eq!(forged.len(), SEALED_STATUS_LEN);
    assert_eq!(
        ctx.open_status(&forged),
        Err(Error::Stream(StreamError::Authentication { seq: 0 }))
    );
}
