//! `attest verify node ADDRESS`: the CLI fetches the bundle with `tandem.v1.Node/GetAttestation`
//! and verifies it. The node here is a fixture on a loopback socket that answers with bundle
//! bytes made like every other test's; what is under test is the CLI's client and the checklist
//! it runs on what it received (a tampered answer fails, a dead address is a clear error).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tandem_attest::test_util::*;
use tandem_proto::v1::node_server::{Node, NodeServer};
use tandem_proto::v1::{
    AttestationBundle, GetAttestationRequest, GetKeyConfigsRequest, KeyConfigs, SubmitReply,
    SubmitRequest,
};
use tonic::codegen::tokio_stream;
use tonic::{Request, Response, Status};

/// Answers `GetAttestation` with fixed bytes; nothing else.
struct FixtureNode {
    document: Vec<u8>,
}

#[tonic::async_trait]
impl Node for FixtureNode {
    type SubmitStream = tokio_stream::Empty<Result<SubmitReply, Status>>;

    async fn submit(
        &self,
        _request: Request<SubmitRequest>,
    ) -> Result<Response<Self::SubmitStream>, Status> {
        Err(Status::unimplemented("fixture: attestation only"))
    }

    async fn get_attestation(
        &self,
        _request: Request<GetAttestationRequest>,
    ) -> Result<Response<AttestationBundle>, Status> {
        Ok(Response::new(AttestationBundle {
            document: self.document.clone(),
            served_digests: Vec::new(),
        }))
    }

    async fn get_key_configs(
        &self,
        _request: Request<GetKeyConfigsRequest>,
    ) -> Result<Response<KeyConfigs>, Status> {
        Err(Status::unimplemented("fixture: attestation only"))
    }
}

/// Serve `document` on 127.0.0.1:<random>; returns the runtime (keep it alive) and the address.
fn serve(document: Vec<u8>) -> (tokio::runtime::Runtime, String) {
    let (rt, addr) = serve_with(document, None);
    (rt, addr.to_string())
}

/// Like [`serve`], over TLS with a fresh self-signed certificate for `localhost`; also returns
/// that certificate (PEM), the CA a client must trust.
fn serve_tls(document: Vec<u8>) -> (tokio::runtime::Runtime, u16, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = cert.cert.pem();
    let identity =
        tonic::transport::Identity::from_pem(&cert_pem, cert.signing_key.serialize_pem());
    let (rt, addr) = serve_with(document, Some(identity));
    (rt, addr.port(), cert_pem)
}

/// The fixture node on a loopback port, over TLS with `identity` if given.
fn serve_with(
    document: Vec<u8>,
    identity: Option<tonic::transport::Identity>,
) -> (tokio::runtime::Runtime, std::net::SocketAddr) {
    let rt = tandem_service::runtime(1).unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        let mut server = tonic::transport::Server::builder();
        if let Some(identity) = identity {
            server = server
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .unwrap();
        }
        server
            .add_service(NodeServer::new(FixtureNode { document }))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    (rt, addr)
}

fn verify_node(target: &str, policy: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attest"))
        .args(["verify", "node", target, "--policy"])
        .arg(policy)
        .args(["--now", &NOW.to_string(), "--json"])
        .output()
        .expect("run attest")
}

#[test]
fn verify_node_by_address_fetches_and_verifies_the_bundle() {
    let f = Fixture::new();
    let d = tempfile::tempdir().unwrap();
    let policy = d.path().join("policy.json");
    std::fs::write(&policy, f.policy_json(serde_json::json!({}))).unwrap();
    let (_rt, addr) = serve(f.bundle.to_json());

    for target in [addr.clone(), format!("http://{addr}")] {
        let out = verify_node(&target, &policy);
        assert!(
            out.status.success(),
            "{target}: stderr {}\nstdout {}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["passed"], true);
        let kc = B64
            .decode(report["verified"]["keyConfigs"].as_str().unwrap())
            .unwrap();
        assert_eq!(kc, key_configs().bytes());
    }
}

#[test]
fn a_node_serving_a_tampered_bundle_fails_verification() {
    let f = Fixture::new();
    let d = tempfile::tempdir().unwrap();
    let policy = d.path().join("policy.json");
    std::fs::write(&policy, f.policy_json(serde_json::json!({}))).unwrap();
    // Same bundle, key expiry moved: the evidence no longer binds it.
    let json = String::from_utf8(f.bundle.to_json()).unwrap();
    let expiry = KEY_EXPIRY.to_string();
    assert!(json.contains(&expiry));
    let tampered = json.replacen(&expiry, &(KEY_EXPIRY + 1).to_string(), 1);
    let (_rt, addr) = serve(tampered.into_bytes());

    let out = verify_node(&addr, &policy);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], false);
    assert_eq!(report["verified"], serde_json::Value::Null);
}

#[test]
fn a_closed_address_is_a_clear_error() {
    let f = Fixture::new();
    let d = tempfile::tempdir().unwrap();
    let policy = d.path().join("policy.json");
    std::fs::write(&policy, f.policy_json(serde_json::json!({}))).unwrap();
    // A port nothing listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let out = verify_node(&format!("127.0.0.1:{port}"), &policy);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot connect to node http://127.0.0.1:{port}")),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    // https without a CA is refused before connecting.
    let out = verify_node(&format!("https://127.0.0.1:{port}"), &policy);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-ca"));

    // Neither a file nor an address.
    let out = verify_node("no-such-bundle.json", &policy);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading bundle no-such-bundle.json"));
}

#[test]
fn verify_node_over_https_with_the_node_ca() {
    let f = Fixture::new();
    let d = tempfile::tempdir().unwrap();
    let policy = d.path().join("policy.json");
    std::fs::write(&policy, f.policy_json(serde_json::json!({}))).unwrap();
    let (_rt, port, cert_pem) = serve_tls(f.bundle.to_json());
    let ca = d.path().join("node-ca.pem");
    std::fs::write(&ca, &cert_pem).unwrap();
    let target = format!("https://localhost:{port}");
    let run = |ca: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_attest"))
            .args(["verify", "node", &target, "--policy"])
            .arg(&policy)
            .arg("--tls-ca")
            .arg(ca)
            .args(["--now", &NOW.to_string(), "--json"])
            .output()
            .expect("run attest")
    };
    let out = run(&ca);
    assert!(
        out.status.success(),
        "stderr {}\nstdout {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], true);

    // A CA that did not issue the node's certificate: the TLS handshake fails, clearly.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let wrong = d.path().join("other-ca.pem");
    std::fs::write(&wrong, other.cert.pem()).unwrap();
    let out = run(&wrong);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("node https://localhost:{port}")),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}
