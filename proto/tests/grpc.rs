//! The generated `tandem.v1` messages carry the sealed-message bytes unchanged.

use prost::Message;
use tandem_proto::v1::{
    AttestationBundle, InclusionProof, SubmitReply, SubmitRequest, submit_reply,
};

#[test]
fn attestation_bundle_carries_the_document_bytes_unchanged() {
    let document = br#"{"mediaType":"application/vnd.tandem.attestation.v1+json"}"#.to_vec();
    let bundle = AttestationBundle {
        document: document.clone(),
        served_digests: vec![vec![7; 32], vec![9; 32]],
    };
    let bytes = bundle.encode_to_vec();
    let back = AttestationBundle::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(back.document, document);
    assert_eq!(back.served_digests, bundle.served_digests);
}

#[test]
fn inclusion_proof_round_trips() {
    let proof = InclusionProof {
        leaf_index: 7,
        tree_size: 9,
        hashes: vec![vec![0xab; 32]],
    };
    let back = InclusionProof::decode(proof.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(back, proof);
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
