//! The gateway finds its nodes through DNS: a real DNS server (Debian's `dnsmasq`, started by
//! the test on a loopback port), real `tandem-gateway` processes and three real `tandem-node`
//! processes on 127.0.0.11–13 (one release, one config; the embedded device model).
//!
//! - Nodes serve gRPC over TLS; the gateway checks each certificate against the DNS name the
//!   node was found under (a name the certificate lacks: found, never offered).
//! - A/AAAA: the nodes a name lists are offered, and only once they passed a health check (an
//!   address where nothing listens joins the fleet but is never offered); a node added to the
//!   name is offered after the next resolution; a node removed is dropped (its old handle is
//!   unknown); a request runs end to end through a node found this way.
//! - SRV: targets and ports come from the records; a changed record set is followed.
//! - `dns.max_nodes` bounds the nodes taken from one answer (the rest counted as ignored).
//! - The DNS server going away: `dns_failed` is logged and the last set is kept; when it is
//!   back, the gateway follows it again.
//! - A name that does not exist (NXDOMAIN) and a name server that does not answer are log
//!   events and a clear Discover refusal, never a crash.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tandem_proto::v1;
use tandem_proto::v1::gateway_client::GatewayClient;
use tandem_tests::node::{connect_tls, digests, fleet, seal};
use tandem_tests::procs::{Dnsmasq, Proc, free_dns_port, free_port, have};
use tonic::transport::Channel;

const DOMAIN: &str = "tandem.test";

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Starts `tandem-node serve` on `addr` with the shared config and identity.
fn start_node(f: &tandem_tests::node::Fleet, addr: SocketAddr, logs: &Path) -> Proc {
    let mut cmd = Command::new(tandem_tests::bins::path("tandem-node"));
    tandem_node::node::environ::scrub(&mut cmd);
    cmd.arg("serve")
        .arg("--config")
        .arg(&f.config_path)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--identity")
        .arg(&f.identity);
    Proc::spawn(&format!("node-{}", addr.ip()), &mut cmd, logs)
}

/// Starts a gateway whose fleet is only the `[dns]` table `dns`.
fn start_gateway(name: &str, dns: &str, logs: &Path) -> (Proc, GatewayAddr) {
    let config = logs.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nnodes = []\n\
             health_interval_secs = 1\nhealth_timeout_ms = 1000\nconnect_timeout_ms = 500\n\
             node_ca = \"{}\"\n\
             [dns]\ninterval_secs = 1\ntimeout_ms = 500\nscheme = \"https\"\n{dns}\n",
            logs.join("nodes-ca.pem").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(tandem_tests::bins::path("tandem-gateway"));
    cmd.arg("--config").arg(&config);
    let p = Proc::spawn(name, &mut cmd, logs);
    let line = p
        .wait_line("gateway listening on ", Duration::from_secs(30))
        .unwrap();
    let grpc = line.split_whitespace().next().unwrap().to_owned();
    (p, GatewayAddr(format!("http://{grpc}")))
}

struct GatewayAddr(String);

impl GatewayAddr {
    async fn client(&self) -> GatewayClient<Channel> {
        let ch = tonic::transport::Endpoint::from_shared(self.0.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        GatewayClient::new(ch)
    }

    /// A Discover this gateway must refuse (no node to offer): its status.
    async fn refused_discover(&self) -> tonic::Status {
        self.client()
            .await
            .discover(v1::DiscoverRequest {
                model_id: model_id(),
                adapter_id: String::new(),
                count: 3,
            })
            .await
            .expect_err("no node")
    }
}

/// The gateway's events (one JSON object per stderr line) named `event`.
fn events(p: &Proc, event: &str) -> Vec<serde_json::Value> {
    p.stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

async fn wait_event(p: &Proc, event: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !events(p, event).iter().any(&pred) {
        assert!(
            Instant::now() < deadline,
            "{} logged no matching {event}:\n{}",
            p.name,
            p.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn model_id() -> String {
    tandem_attest::digest::Sha256Digest(digests().model).to_string()
}

/// Discover (as many as the gateway gives): each candidate as (handle, node number).
async fn offered(
    gw: &mut GatewayClient<Channel>,
    docs: &[Vec<u8>],
) -> Result<Vec<(String, usize, Vec<u8>)>, tonic::Status> {
    let cands = gw
        .discover(v1::DiscoverRequest {
            model_id: model_id(),
            adapter_id: String::new(),
            count: 16,
        })
        .await?
        .into_inner()
        .candidates;
    Ok(cands
        .into_iter()
        .map(|c| {
            let doc = c.attestation.unwrap().document;
            let i = docs
                .iter()
                .position(|d| *d == doc)
                .expect("every candidate is one of the test's nodes");
            (c.node_handle, i, doc)
        })
        .collect())
}

/// Waits until Discover offers exactly the nodes `want` (numbers into `docs`).
async fn wait_offered(gw: &mut GatewayClient<Channel>, docs: &[Vec<u8>], want: &[usize]) {
    let want: BTreeSet<usize> = want.iter().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got: BTreeSet<usize> = match offered(gw, docs).await {
            Ok(c) => c.iter().map(|(_, i, _)| *i).collect(),
            Err(_) => BTreeSet::new(),
        };
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Discover offers nodes {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn gateway_follows_dns_a_and_srv_records() {
    if !have("dnsmasq") {
        // scripts/test-deps.sh installs it (Debian package dnsmasq-base); CI runs that first.
        panic!("dnsmasq is not installed; run scripts/test-deps.sh (apt-get install dnsmasq-base)");
    }
    let rt = tandem_service::runtime(2).unwrap();
    rt.block_on(async {
        let logs = tempfile::tempdir().unwrap();
        let logs = logs.path();
        let node_bin = tandem_tests::bins::path("tandem-node");
        // gRPC over TLS: the gateway checks each node's certificate against the DNS name it
        // came from (`nodes.tandem.test`, or the SRV target), not the address it dials.
        let f = fleet(&node_bin, "tls = true", true).await;
        let names = [
            "localhost",
            "nodes.tandem.test",
            "n12.tandem.test",
            "n13.tandem.test",
        ];
        let tls = rcgen::generate_simple_self_signed(names.map(String::from).to_vec()).unwrap();
        let ca_pem = tls.cert.pem();
        std::fs::write(f.identity.join("tls.cert.pem"), &ca_pem).unwrap();
        std::fs::write(
            f.identity.join("tls.key.pem"),
            tls.signing_key.serialize_pem(),
        )
        .unwrap();
        std::fs::write(logs.join("nodes-ca.pem"), &ca_pem).unwrap();

        // Three nodes on one port at three loopback addresses (A records carry no port).
        let port = free_port(ip(11));
        let addrs: Vec<SocketAddr> = [11, 12, 13]
            .iter()
            .map(|l| SocketAddr::new(ip(*l), port))
            .collect();
        let nodes: Vec<Proc> = addrs.iter().map(|a| start_node(&f, *a, logs)).collect();
        let mut docs = Vec::new();
        for (p, a) in nodes.iter().zip(&addrs) {
            let served = p.wait_line("serving ", Duration::from_secs(60)).unwrap();
            assert_eq!(served, a.to_string());
            let mut c = connect_tls(*a, ca_pem.as_bytes()).await;
            docs.push(tandem_tests::node::attestation_document(&mut c).await);
        }

        // The DNS server: nodes.tandem.test lists nodes 0 and 1; the SRV name lists node 1.
        let dns_port = free_dns_port(ip(1));
        let srv_for = |last: u8| {
            vec![
                format!("--srv-host=_tandem._tcp.srv.{DOMAIN},n{last}.{DOMAIN},{port}"),
                format!("--host-record=n{last}.{DOMAIN},{}", ip(last)),
            ]
        };
        let mut dns = Dnsmasq::start(logs, dns_port, DOMAIN, &srv_for(12));
        dns.set_hosts(&[
            (ip(11), "nodes.tandem.test"),
            (ip(12), "nodes.tandem.test"),
            (ip(11), "other.tandem.test"),
        ]);
        let ns = format!("nameserver = \"{}\"", dns.addr);

        let (gw_a, a) = start_gateway(
            "gateway-a",
            &format!("name = \"nodes.{DOMAIN}\"\nport = {port}\n{ns}"),
            logs,
        );
        let (gw_srv, srv) = start_gateway(
            "gateway-srv",
            &format!("srv = \"_tandem._tcp.srv.{DOMAIN}\"\n{ns}"),
            logs,
        );
        let (mut gw_missing, missing) = start_gateway(
            "gateway-missing",
            &format!("name = \"missing.{DOMAIN}\"\nport = {port}\n{ns}"),
            logs,
        );
        let silent = SocketAddr::new(ip(1), free_dns_port(ip(1)));
        let (mut gw_silent, silent_gw) = start_gateway(
            "gateway-silent",
            &format!("name = \"nodes.{DOMAIN}\"\nport = {port}\nnameserver = \"{silent}\""),
            logs,
        );
        // A name the nodes' certificate does not carry: they are found but never pass a
        // health check, so never offered.
        let (gw_wrong, wrong) = start_gateway(
            "gateway-wrong-name",
            &format!("name = \"other.{DOMAIN}\"\nport = {port}\n{ns}"),
            logs,
        );
        // At most one node from DNS: the rest of the answer is ignored, and counted.
        let (gw_max, max1) = start_gateway(
            "gateway-max-1",
            &format!("name = \"nodes.{DOMAIN}\"\nport = {port}\nmax_nodes = 1\n{ns}"),
            logs,
        );
        let mut ga = a.client().await;
        let mut gs = srv.client().await;

        // 1. A records: nodes 0 and 1 are offered, node 2 (not in DNS) is not.
        wait_offered(&mut ga, &docs, &[0, 1]).await;
        let before = offered(&mut ga, &docs).await.unwrap();
        wait_event(&gw_wrong, "node_unhealthy", |v| v["node"] == 0).await;
        wait_event(&gw_max, "dns_resolved", |v| {
            v["nodes"] == 1 && v["ignored"] == 1
        })
        .await;
        let mut gm = max1.client().await;
        wait_offered(&mut gm, &docs, &[0]).await;
        assert!(offered(&mut wrong.client().await, &docs).await.is_err());
        wait_event(&gw_a, "dns_resolved", |v| v["nodes"] == 2).await;

        // A request end to end through a node the gateway found in DNS.
        let (handle, _, doc) = before[0].clone();
        let bundle = tandem_attest::attestation::AttestationBundle::from_json(&doc).unwrap();
        let d = digests();
        let (sealed, ctx) = seal(
            bundle.key_configs().entries(),
            d.model,
            None,
            "Once upon a time",
            8,
            tandem_tests::now(),
        );
        let mut stream = ga
            .submit(v1::SubmitRequest {
                sealed_request: sealed,
                node_handles: vec![handle],
            })
            .await
            .unwrap()
            .into_inner();
        let receipt = tandem_tests::fleet::read_answer(&mut stream, ctx, |_, _| {})
            .await
            .unwrap();
        assert!(receipt.completion_tokens >= 1);

        // 2. Node 2 and an address where nothing listens are added: node 2 is offered once it
        //    passed its health check; the empty address joins the fleet but is never offered.
        let nothing = SocketAddr::new(ip(14), port);
        dns.set_hosts(&[
            (ip(11), "nodes.tandem.test"),
            (ip(12), "nodes.tandem.test"),
            (ip(13), "nodes.tandem.test"),
            (ip(14), "nodes.tandem.test"),
        ]);
        wait_offered(&mut ga, &docs, &[0, 1, 2]).await;
        wait_event(&gw_a, "node_added", |v| v["addr"] == nothing.to_string()).await;
        let idx = events(&gw_a, "node_added")
            .into_iter()
            .find(|v| v["addr"] == nothing.to_string())
            .unwrap()["node"]
            .clone();
        wait_event(&gw_a, "node_unhealthy", |v| v["node"] == idx).await;
        for _ in 0..5 {
            let c = offered(&mut ga, &docs).await.unwrap();
            assert_eq!(c.len(), 3, "only the three checked nodes are offered");
        }

        // 3. Node 0 leaves DNS: it is dropped, and its old handle is no longer known.
        dns.set_hosts(&[(ip(12), "nodes.tandem.test"), (ip(13), "nodes.tandem.test")]);
        wait_offered(&mut ga, &docs, &[1, 2]).await;
        wait_event(&gw_a, "node_removed", |v| v["addr"] == addrs[0].to_string()).await;
        wait_event(&gw_a, "node_removed", |v| v["addr"] == nothing.to_string()).await;
        let old = before.iter().find(|(_, i, _)| *i == 0).unwrap().0.clone();
        let (sealed, _) = seal(
            bundle.key_configs().entries(),
            d.model,
            None,
            "x",
            1,
            tandem_tests::now(),
        );
        let e = ga
            .submit(v1::SubmitRequest {
                sealed_request: sealed,
                node_handles: vec![old],
            })
            .await
            .expect_err("a dropped node's handle is unknown");
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

        // 4. SRV: the target and port come from the record.
        wait_offered(&mut gs, &docs, &[1]).await;

        // 5. The DNS server goes away: failures are logged, the last set is kept.
        dns.proc.stop(Duration::from_secs(5));
        wait_event(&gw_a, "dns_failed", |v| {
            v["reason"]
                .as_str()
                .is_some_and(|r| r.contains("nodes.tandem.test"))
        })
        .await;
        wait_event(&gw_srv, "dns_failed", |_| true).await;
        wait_offered(&mut ga, &docs, &[1, 2]).await;
        wait_offered(&mut gs, &docs, &[1]).await;

        // 6. It comes back with the SRV name now pointing at node 2 only.
        let _dns = Dnsmasq::start(logs, dns_port, DOMAIN, &srv_for(13));
        wait_offered(&mut gs, &docs, &[2]).await;
        wait_offered(&mut ga, &docs, &[1, 2]).await;
        wait_event(&gw_srv, "node_removed", |v| {
            v["addr"] == addrs[1].to_string()
        })
        .await;

        // 7. A name that does not exist, and a name server that never answers: logged, a clear
        //    refusal, the gateway keeps running.
        wait_event(&gw_missing, "dns_empty", |v| {
            v["reason"]
                .as_str()
                .is_some_and(|r| r.contains("missing.tandem.test") && r.contains("NXDomain"))
        })
        .await;
        let e = missing.refused_discover().await;
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(
            e.message().contains("missing.tandem.test") && e.message().contains("NXDomain"),
            "{}",
            e.message()
        );
        wait_event(&gw_silent, "dns_failed", |v| {
            v["reason"].as_str().is_some_and(|r| !r.is_empty())
        })
        .await;
        let e = silent_gw.refused_discover().await;
        assert!(
            e.message().contains("node discovery through DNS"),
            "{}",
            e.message()
        );
        assert!(gw_missing.exited().is_none(), "{}", gw_missing.stderr());
        assert!(gw_silent.exited().is_none(), "{}", gw_silent.stderr());
        if std::env::var_os("SHOW_LOGS").is_some() {
            for p in [&gw_a, &gw_srv, &gw_missing, &gw_silent, &gw_wrong, &gw_max] {
                eprintln!("== {}\n{}", p.name, p.stderr());
            }
        }
        for p in [&gw_a, &gw_srv, &gw_missing, &gw_silent, &gw_wrong, &gw_max] {
            assert!(!p.stderr().contains("panicked"), "{}", p.stderr());
        }
    });
}
