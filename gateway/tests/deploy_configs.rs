//! The gateway configs shipped in `deploy/kubernetes/` load: they find the nodes through the
//! headless Service's SRV records.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use tandem_gateway::GatewayConfig;

fn load(rel: &str) -> GatewayConfig {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let text = std::fs::read_to_string(root.join(rel)).unwrap();
    // The CA file is mounted in the pod; stand in a file for it here.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), b"-----BEGIN CERTIFICATE-----\n").unwrap();
    let text = text.replace("/etc/tandem/nodes-ca/ca.crt", "ca.crt");
    GatewayConfig::parse(&text, dir.path()).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn kubernetes_gateways_discover_nodes_through_srv() {
    for (rel, tls) in [
        ("base/gateway.toml", true),
        ("overlays/dev/gateway.toml", false),
    ] {
        let c = load(rel);
        let dns = c.dns.expect("a [dns] table");
        assert_eq!(
            dns.srv.as_deref(),
            Some("_grpc._tcp.tandem-nodes.tandem.svc.cluster.local"),
            "{rel}"
        );
        assert_eq!(dns.tls, tls, "{rel}");
        assert!(
            dns.nameserver.is_none(),
            "{rel}: the pod's resolv.conf names the cluster DNS"
        );
        assert!(c.nodes.is_empty(), "{rel}: no hand-kept list");
    }
}
