//! The generated `tandem.v1` messages carry the sealed-message bytes unchanged.

use prost::Message;
use tandem_proto::v1::{
    AttestationBundle, InclusionProof, SubmitReply, SubmitRequest, submit_reply,
};
use tandem_proto::{KeyConfig, NodeKey, Suite};

#[test]
fn attestation_bundle_round_trips_key_configs_bytes() {
    let node = NodeKey::derive(4, b"grpc test node ikm 0123456789abc", &Suite::ALL).expect("ok");
    let list = KeyConfig::encode_list(&[node.config().clone()]);
    let bundle = AttestationBundle {
        key_configs: list.clone(),
        key_expiry_unix: 1_800_000_000,
        evidence: vec![1, 2, 3],
        release_bundle: vec![4, 5],
        inclusion_proof: Some(InclusionProof {
            leaf_index: 7,
            tree_size: 9,
            hashes: vec![vec![0xab; 32]],
        }),
        checkpoint: b"example.com/log\n9\n...".to_vec(),
    };
    let bytes = bundle.encode_to_vec();
    let back = AttestationBundle::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(back, bundle);
    assert_eq!(
        KeyConfig::decode_list(&back.key_configs).expect("list"),
        vec![node.config().clone()]
    );
}

#[test]
fn submit_messages_carry_head_and_chunks() {
    let req = SubmitRequest {
        sealed_request: vec![9; 100],
        node_handles: vec!["n1".into(), "n2".into()],
    };
    assert_eq!(
        SubmitRequest::decode(req.encode_to_vec().as_slice()).expect("ok"),
        req
    );
    let head = SubmitReply {
        part: Some(submit_reply::Part::Head(vec![1; 50])),
    };
    let chunk = SubmitReply {
        part: Some(submit_reply::Part::Chunk(vec![2; 21])),
    };
    for m in [head, chunk] {
        assert_eq!(
            SubmitReply::decode(m.encode_to_vec().as_slice()).expect("ok"),
            m
        );
    }
    // Garbage is an error, not a panic.
    assert!(SubmitReply::decode(&[0xff, 0xff, 0xff][..]).is_err());
}
