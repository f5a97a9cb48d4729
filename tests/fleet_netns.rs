//! A fleet across hosts: the log, two gateways, three nodes and the device each in its own
//! network namespace with its own address (veth pairs to a bridge, made by the test and removed
//! when it ends, failed or not), running the real programs (`attest log serve`,
//! `tandem-gateway`, `tandem-node serve`, `tandem ask`) through `ip netns exec`; the server toy
//! model.
//!
//! - The log unreachable from a node at start: that node refuses to start, naming the log.
//! - Requests from the device succeed through either gateway.
//! - Nodes accept only the gateways' addresses (`allow_from`): a connection from another
//!   address (the host side of the bridge) is closed unserved and logged.
//! - A node's network taken down in the middle of a stream: the request fails cleanly (an
//!   error naming the incomplete response, well before any deadline); the next request
//!   completes on the other nodes.
//!
//! Needs root (namespaces, veth, bridge), as CI runs; otherwise it says why and skips.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tandem_attest::evidence::{CertRole, FleetCa};
use tandem_attest::log::NoteSigner;
use tandem_attest::release::ReleaseSigningKey;
use tandem_node::config::{NodeConfig, Overrides};
use tandem_node::node::identity::write_software_identity;
use tandem_node::node::measure;
use tandem_tests::procs::{Proc, have, is_root};

/// Runs `ip ARGS`; panics with its stderr if it fails.
/// `ip link set eth0 up|down` inside namespace `ns`.
fn set_eth0(ns: &str, state: &str) {
    ip(&["netns", "exec", ns, "ip", "link", "set", "eth0", state]);
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One host: a namespace, its address, and the host-side end of its veth pair.
struct Host {
    ns: String,
    addr: Ipv4Addr,
    veth: String,
}

/// The namespaces, veth pairs and bridge of one run; all removed on drop.
struct Net {
    bridge: String,
    hosts: Vec<Host>,
    gateway_ip: Ipv4Addr,
}

impl Net {
    /// A bridge with address `<subnet>.1/24` and one namespace per `(name, last octet)`.
    /// Names carry a per-run tag, so parallel runs do not collide.
    fn new(hosts: &[(&str, u8)]) -> Net {
        let pid = std::process::id();
        let tag = format!("{:x}", pid % 0xfffff);
        let subnet = [10u8, 100 + (pid % 100) as u8, ((pid / 100) % 250) as u8];
        let addr = |last: u8| Ipv4Addr::new(subnet[0], subnet[1], subnet[2], last);
        let mut net = Net {
            bridge: format!("tdb{tag}"),
            hosts: Vec::new(),
            gateway_ip: addr(1),
        };
        ip(&["link", "add", &net.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.gateway_ip),
            "dev",
            &net.bridge,
        ]);
        ip(&["link", "set", &net.bridge, "up"]);
        for (i, (name, last)) in hosts.iter().enumerate() {
            let host = Host {
                ns: format!("tandem-{tag}-{name}"),
                addr: addr(*last),
                veth: format!("td{tag}h{i}"),
            };
            let peer = format!("td{tag}p{i}");
            ip(&["netns", "add", &host.ns]);
            // Pushed before anything else is made, so a failure below is cleaned up too.
            net.hosts.push(host);
            let host = net.hosts.last().unwrap();
            ip(&[
                "link", "add", &host.veth, "type", "veth", "peer", "name", &peer,
            ]);
            ip(&["link", "set", &peer, "netns", &host.ns]);
            let in_ns = |args: &[&str]| {
                let mut a = vec!["netns", "exec", &host.ns, "ip"];
                a.extend_from_slice(args);
                ip(&a);
            };
            in_ns(&["link", "set", &peer, "name", "eth0"]);
            in_ns(&["addr", "add", &format!("{}/24", host.addr), "dev", "eth0"]);
            in_ns(&["link", "set", "eth0", "up"]);
            in_ns(&["link", "set", "lo", "up"]);
            ip(&["link", "set", &host.veth, "master", &net.bridge]);
            ip(&["link", "set", &host.veth, "up"]);
        }
        net
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.ns.ends_with(&format!("-{name}")))
            .unwrap()
    }

    /// `ip netns exec <ns of name> program`.
    fn exec(&self, name: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host(name).ns]).arg(program);
        c
    }

    /// Bytes the host `name` has sent into the bridge (received by the host-side veth end).
    fn sent_bytes(&self, name: &str) -> u64 {
        std::fs::read_to_string(format!(
            "/sys/class/net/{}/statistics/rx_bytes",
            self.host(name).veth
        ))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            // Deleting one end of a veth pair deletes both.
            let _ = Command::new("ip")
                .args(["link", "del", &h.veth])
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("ip")
                .args(["netns", "del", &h.ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .canonicalize()
        .unwrap()
}

const NODE_PORT: u16 = 7100;
const GATEWAY_PORT: u16 = 7000;

/// `tandem ask` in the device namespace: (success, stdout, stderr).
fn ask(net: &Net, device_config: &Path, gateway: Ipv4Addr, max_tokens: u32) -> (bool, String) {
    let out = net
        .exec("dev", &tandem_tests::bins::path("tandem"))
        .args(["ask", "The king said to his son that the"])
        .args(["--model", "server", "--route", "remote", "--json"])
        .args(["--max-tokens", &max_tokens.to_string()])
        .arg("--config")
        .arg(device_config)
        .arg("--gateway")
        .arg(format!("http://{gateway}:{GATEWAY_PORT}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    tandem_tests::procs::outcome(&out)
}

#[test]
fn fleet_across_network_namespaces() {
    if !is_root() {
        eprintln!(
            "fleet_netns: skipped: making network namespaces, veth pairs and a bridge needs \
             root (CI runs as root)"
        );
        return;
    }
    assert!(
        have("ip"),
        "the `ip` program (Debian iproute2) is missing; run scripts/test-deps.sh"
    );
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let net = Net::new(&[
        ("log", 2),
        ("gw1", 3),
        ("gw2", 4),
        ("n1", 11),
        ("n2", 12),
        ("n3", 13),
        ("dev", 20),
    ]);
    let addr_of = |name: &str| net.host(name).addr;

    // The log, in its namespace.
    let (signer, skey) =
        NoteSigner::generate_with_rng(&mut rand::rngs::OsRng, "log.netns.tandem.test").unwrap();
    std::fs::write(dir.join("log.key"), skey).unwrap();
    let mut log_cmd = net.exec("log", &tandem_tests::bins::path("attest"));
    log_cmd
        .args(["log", "serve", "--dir"])
        .arg(dir.join("log"))
        .args(["--listen", &format!("{}:8080", addr_of("log"))])
        .arg("--key")
        .arg(dir.join("log.key"));
    let log = Proc::spawn("log", &mut log_cmd, dir);
    let log_url = log
        .wait_line("listening on ", Duration::from_secs(20))
        .unwrap();
    assert_eq!(log_url, format!("http://{}:8080", addr_of("log")));

    // One node config and release for the three nodes: only the gateways may connect.
    let node_bin = tandem_tests::bins::path("tandem-node");
    let config_path = dir.join("node.toml");
    let text = format!(
        "log_url = \"{log_url}\"\nlog_key = \"{}\"\nrelease_bundle = \"release.json\"\n\
         key_lifetime_secs = 3600\nallow_from = [\"{}\", \"{}\"]\n\
         [[models]]\ndir = \"{}\"\n[root_of_trust]\nkind = \"software\"\n",
        signer.vkey(),
        addr_of("gw1"),
        addr_of("gw2"),
        models().join("server").display(),
    );
    std::fs::write(&config_path, &text).unwrap();
    let cfg = NodeConfig::from_toml(text.as_bytes(), &config_path).unwrap();
    let mut rng = rand::rngs::OsRng;
    let ca = FleetCa::generate_with_rng(&mut rng);
    let now = tandem_tests::now();
    let mut identities = Vec::new();
    for i in 1..=3 {
        let key = p256::ecdsa::SigningKey::random(&mut rng);
        let cert = ca
            .certify(
                CertRole::NodeIdentity,
                &format!("node-{i}"),
                key.verifying_key(),
                now - 60,
                now + 86400,
            )
            .unwrap();
        let id = dir.join(format!("identity-{i}"));
        write_software_identity(&id, &key, &cert).unwrap();
        identities.push(id);
    }
    std::fs::write(dir.join("release.json"), b"{}").unwrap();
    let resolved = cfg
        .resolve(
            &config_path,
            &Overrides {
                listen: Some("127.0.0.1:0".into()),
                identity: Some(identities[0].clone()),
                ..Overrides::default()
            },
        )
        .unwrap();
    let arts =
        measure::expected_artifacts(&node_bin, "node.toml", text.as_bytes(), &resolved.models)
            .unwrap();
    let release_key = ReleaseSigningKey::generate();
    let release = release_key.sign(measure::manifest("tandem-node netns test", arts).unwrap());
    let rt = tandem_service::runtime(2).unwrap();
    rt.block_on(async {
        let client = tandem_log::LogClient::new(&log_url, Duration::from_secs(10)).unwrap();
        client.append(&release.log_entry_body()).await.unwrap();
    });
    std::fs::write(dir.join("release.json"), release.to_json()).unwrap();

    let node_cmd = |i: usize| {
        let name = format!("n{i}");
        let mut c = net.exec(&name, &node_bin);
        tandem_node::node::environ::scrub(&mut c);
        c.args(["serve", "--config"])
            .arg(&config_path)
            .args(["--listen", &format!("{}:{NODE_PORT}", addr_of(&name))])
            .arg("--identity")
            .arg(&identities[i - 1]);
        c
    };

    // 1. Node 3's network is down at start: the log is unreachable, it refuses to start.
    set_eth0(&net.host("n3").ns, "down");
    let mut refused = Proc::spawn("n3-no-log", &mut node_cmd(3), dir);
    let status = refused
        .wait_exit(Duration::from_secs(60))
        .expect("a node that cannot reach the log exits");
    assert!(!status.success());
    let err = refused.stderr();
    assert!(
        err.contains("transparency log") && err.contains(&log_url),
        "the refusal names the log: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    set_eth0(&net.host("n3").ns, "up");

    // The three nodes.
    let nodes: Vec<Proc> = (1..=3)
        .map(|i| Proc::spawn(&format!("n{i}"), &mut node_cmd(i), dir))
        .collect();
    for (i, n) in nodes.iter().enumerate() {
        let served = n.wait_line("serving ", Duration::from_secs(60)).unwrap();
        assert_eq!(
            served,
            format!("{}:{NODE_PORT}", addr_of(&format!("n{}", i + 1)))
        );
    }

    // Two gateways, each listing the three nodes. Health checks rarely (the first round runs
    // before serving), so node traffic during a stream is that stream; keep-alive pings
    // notice a vanished node within 1.5 s.
    let node_urls: Vec<String> = (1..=3)
        .map(|i| format!("\"http://{}:{NODE_PORT}\"", addr_of(&format!("n{i}"))))
        .collect();
    let gateways: Vec<Proc> = ["gw1", "gw2"]
        .iter()
        .map(|g| {
            let path = dir.join(format!("{g}.toml"));
            std::fs::write(
                &path,
                format!(
                    "listen = \"{a}:{GATEWAY_PORT}\"\nmetrics_listen = \"{a}:7001\"\n\
                     nodes = [{}]\nhealth_interval_secs = 60\nconnect_timeout_ms = 1000\n\
                     first_message_timeout_ms = 20000\nkeepalive_interval_ms = 500\n\
                     keepalive_timeout_ms = 1000\n",
                    node_urls.join(", "),
                    a = addr_of(g)
                ),
            )
            .unwrap();
            let mut c = net.exec(g, &tandem_tests::bins::path("tandem-gateway"));
            c.arg("--config").arg(&path);
            let p = Proc::spawn(g, &mut c, dir);
            p.wait_line("gateway listening on ", Duration::from_secs(30))
                .unwrap();
            p
        })
        .collect();

    // The device: its config names the log (consistency proofs) and the fleet's trust roots.
    let device_config = dir.join("device.json");
    std::fs::write(
        &device_config,
        serde_json::to_vec_pretty(&serde_json::json!({
            "models": {
                "device": models().join("device"),
                "server": models().join("server"),
            },
            "gateway": format!("http://{}:{GATEWAY_PORT}", addr_of("gw1")),
            "policy": {
                "fleetCaKeys": [ca.public_key().to_pem()],
                "releaseSigners": [release_key.public_key().to_pem()],
                "logKeys": [signer.vkey()],
                "requiredWitnesses": 0,
                "clockSkewSecs": 60,
            },
            "log_url": log_url,
            "routing": {"fallback_to_local": false, "candidates": 3, "discover_cache_ms": 0},
            "timeouts": {"connect_ms": 5000, "first_chunk_ms": 30000, "request_ms": 40000},
        }))
        .unwrap(),
    )
    .unwrap();

    // 2. Requests succeed through either gateway.
    for g in ["gw1", "gw2"] {
        let (ok, out) = ask(&net, &device_config, addr_of(g), 8);
        assert!(ok, "a request through {g} failed: {out}");
        let v: serde_json::Value =
            serde_json::from_str(out.lines().next().unwrap_or_default()).unwrap();
        assert_eq!(v["route"], "remote", "{out}");
        assert!(
            v["receipt"]["node"]
                .as_str()
                .is_some_and(|n| n.starts_with("node-")),
            "{out}"
        );
    }

    // 3. A connection from an address that is not a gateway's (the bridge's, on the host) is
    //    closed unserved, and the node logs it.
    rt.block_on(async {
        let target = SocketAddr::new(IpAddr::V4(addr_of("n1")), NODE_PORT);
        let r = tokio::time::timeout(Duration::from_secs(10), async {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
                .unwrap()
                .connect()
                .await?;
            tandem_proto::v1::node_client::NodeClient::new(ch)
                .get_attestation(tandem_proto::v1::GetAttestationRequest {})
                .await
                .map_err(|s| Box::new(s) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .await
        .expect("a refused connection fails at once, it does not hang");
        assert!(
            r.is_err(),
            "a peer outside allow_from got an answer from the node"
        );
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !nodes[0].stderr().contains("connection_refused") {
        assert!(Instant::now() < deadline, "{}", nodes[0].stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        nodes[0]
            .stderr()
            .contains(&format!("\"peer\":\"{}:", net.gateway_ip)),
        "{}",
        nodes[0].stderr()
    );

    // 4. A node's network goes down mid-stream.
    let mut child = net
        .exec("dev", &tandem_tests::bins::path("tandem"))
        .args(["ask", "The king said to his son that the"])
        .args(["--model", "server", "--route", "remote"])
        .args(["--max-tokens", "240"])
        .arg("--config")
        .arg(&device_config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let got_text = Arc::new(AtomicBool::new(false));
    let stdout_text = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let (got, text) = (got_text.clone(), stdout_text.clone());
        let mut out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                text.lock().unwrap().extend_from_slice(&buf[..n]);
                got.store(true, Ordering::SeqCst);
            }
        })
    };
    let stderr_reader = {
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        })
    };
    let names = ["n1", "n2", "n3"];
    let before: Vec<u64> = names.iter().map(|n| net.sent_bytes(n)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !got_text.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "no text from the stream");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The streaming node is the one sending: the gateways' health checks are a minute apart,
    // so the others send only the odd ARP or neighbour packet. Wait until one clearly leads.
    let lead_deadline = Instant::now() + Duration::from_secs(3);
    let (victim, sent) = loop {
        std::thread::sleep(Duration::from_millis(50));
        let sent: Vec<u64> = names
            .iter()
            .zip(&before)
            .map(|(n, b)| net.sent_bytes(n) - b)
            .collect();
        let mut order: Vec<usize> = (0..3).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(sent[i]));
        let (top, second) = (sent[order[0]], sent[order[1]]);
        if (top >= 400 && top >= 3 * second) || Instant::now() > lead_deadline {
            break (order[0], sent);
        }
    };
    ip(&["link", "set", &net.host(names[victim]).veth, "down"]);
    let cut = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(20),
            "the request hangs after its node's network went down"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let after_cut = cut.elapsed();
    reader.join().unwrap();
    let err = stderr_reader.join().unwrap();
    let text = String::from_utf8_lossy(&stdout_text.lock().unwrap()).into_owned();
    eprintln!(
        "fleet_netns: node {} cut after {sent:?} bytes sent; the request ended {after_cut:?} \
         later, success: {}; device said: {}",
        names[victim],
        status.success(),
        err.trim()
    );
    if status.success() {
        // Completed (it can only have been answered in full before the cut).
        assert!(err.contains("[ran remote"), "{err}");
    } else {
        assert!(
            err.contains("incomplete"),
            "a clean failure says the response is incomplete: {err}\n(text so far: {text})"
        );
        assert!(!err.contains("panicked"), "{err}");
    }

    // The next request completes on the nodes that are still up.
    let (ok, out) = ask(&net, &device_config, addr_of("gw1"), 8);
    assert!(ok, "after a node went down: {out}");
    let v: serde_json::Value =
        serde_json::from_str(out.lines().next().unwrap_or_default()).unwrap();
    assert_ne!(
        v["receipt"]["node"].as_str(),
        Some(format!("node-{}", victim + 1).as_str()),
        "{out}"
    );

    for p in nodes.iter().chain(&gateways).chain([&log]) {
        assert!(!p.stderr().contains("panicked"), "{}", p.stderr());
    }
    eprintln!("fleet_netns: {:?}", started.elapsed());
    drop(gateways);
    drop(nodes);
    drop(log);
    drop(net);
}
