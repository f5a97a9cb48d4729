//! The gateway's TOML configuration, checked completely before any port is bound.
//!
//! ```toml
//! # gRPC listener for devices (Discover, Submit).
//! listen = "127.0.0.1:7000"
//! # Prometheus text metrics (plain HTTP, GET /metrics). Must differ from `listen`.
//! metrics_listen = "127.0.0.1:7001"
//! # The fleet: node gRPC endpoints (http:// or https://), at least one, no duplicates.
//! nodes = ["http://127.0.0.1:7100", "http://127.0.0.1:7101"]
//! # Candidates returned by Discover (1..=16; a device asking for fewer gets fewer). Default 3.
//! discover_count = 3
//! # Seconds between health checks of every node (1..=3600). Default 10.
//! health_interval_secs = 10
//! # Milliseconds one health check (GetAttestation) may take (1..=60000). Default 2000.
//! health_timeout_ms = 2000
//! # Milliseconds to open a connection to a node (1..=60000). Default 2000.
//! connect_timeout_ms = 2000
//! # Milliseconds a node may take to send its first message (the response head, which a node
//! # sends once a generation slot is free) before the next handle is tried (1..=600000).
//! # Keep it above the nodes' `limits.deadline_secs`. Default 65000.
//! first_message_timeout_ms = 65000
//!
//! # Optional: TLS for the device-facing listener (PEM files).
//! [tls]
//! cert = "gateway.crt"
//! key = "gateway.key"
//!
//! # Optional: CA (PEM) that signs the nodes' TLS certificates; needed for https:// nodes.
//! node_ca = "nodes-ca.crt"
//!
//! # Optional: HTTP/2 keep-alive pings on every node connection with a stream open, so a node
//! # whose host or network vanished mid-stream is noticed (its stream fails with an error
//! # status) instead of the relay waiting on a dead TCP connection. Interval 100..=3600000 ms
//! # (default 10000), reply timeout 100..=600000 ms (default 5000).
//! keepalive_interval_ms = 10000
//! keepalive_timeout_ms = 5000
//!
//! # Optional: find nodes through DNS (e.g. a Kubernetes headless Service), besides or instead
//! # of `nodes`. Re-resolved every `interval_secs`; a node that appears is offered once it
//! # passed a health check, a node that vanishes is dropped. A failed resolution (timeout,
//! # SERVFAIL, unreachable name server) keeps the last set and logs `dns_failed`; an answer with
//! # no records (NXDOMAIN, NODATA) is an empty set and logs `dns_empty`. No DNS cache: each
//! # resolution asks the server.
//! [dns]
//! # A/AAAA: every address of `name` (its A records, or its AAAA records when it has no A
//! # records) is a node at `port`.
//! name = "tandem-nodes.tandem.svc.cluster.local"
//! port = 7100                          # 1..=65535, required with `name`
//! # SRV: every target of `srv` is a node at the record's port (its addresses resolved too).
//! srv = "_grpc._tcp.tandem-nodes.tandem.svc.cluster.local"
//! scheme = "https"                     # "http" (default) or "https" (needs node_ca; the
//!                                      # certificate must name `name`, or the SRV target)
//! interval_secs = 10                   # 1..=3600, default 10
//! max_nodes = 64                       # 1..=1024, default 64: more records are ignored
//! timeout_ms = 2000                    # one DNS query, 1..=60000, default 2000
//! nameserver = "10.96.0.10:53"         # IP:port; default: the system's /etc/resolv.conf
//! ```
//!
//! Relative paths are resolved against the config file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ConfigError;

/// Most candidates one Discover may return (the `count` limit of `DiscoverRequest`).
pub const MAX_DISCOVER: u32 = 16;

fn default_discover_count() -> u32 {
    3
}
fn default_health_interval() -> u64 {
    10
}
fn default_timeout_ms() -> u64 {
    2000
}
fn default_first_message_ms() -> u64 {
    65_000
}
fn default_keepalive_interval_ms() -> u64 {
    10_000
}
fn default_keepalive_timeout_ms() -> u64 {
    5_000
}
fn default_dns_interval() -> u64 {
    10
}
fn default_dns_max_nodes() -> u64 {
    64
}
fn default_dns_scheme() -> String {
    "http".into()
}

/// Most nodes one DNS source may add (`dns.max_nodes`).
pub const MAX_DNS_NODES: u64 = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigWire {
    listen: String,
    metrics_listen: String,
    nodes: Vec<String>,
    #[serde(default = "default_discover_count")]
    discover_count: u32,
    #[serde(default = "default_health_interval")]
    health_interval_secs: u64,
    #[serde(default = "default_timeout_ms")]
    health_timeout_ms: u64,
    #[serde(default = "default_timeout_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "default_first_message_ms")]
    first_message_timeout_ms: u64,
    #[serde(default)]
    tls: Option<TlsWire>,
    #[serde(default)]
    node_ca: Option<PathBuf>,
    #[serde(default = "default_keepalive_interval_ms")]
    keepalive_interval_ms: u64,
    #[serde(default = "default_keepalive_timeout_ms")]
    keepalive_timeout_ms: u64,
    #[serde(default)]
    dns: Option<DnsWire>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsWire {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    port: Option<u64>,
    #[serde(default)]
    srv: Option<String>,
    #[serde(default = "default_dns_scheme")]
    scheme: String,
    #[serde(default = "default_dns_interval")]
    interval_secs: u64,
    #[serde(default = "default_dns_max_nodes")]
    max_nodes: u64,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default)]
    nameserver: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsWire {
    cert: PathBuf,
    key: PathBuf,
}

/// PEM bytes of the listener's certificate chain and private key.
#[derive(Clone)]
pub struct TlsIdentity {
    /// Certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// Private key (PEM).
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

/// A node endpoint from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEndpoint {
    /// The URL as written (`http://host:port` or `https://host:port`).
    pub url: String,
    /// Whether the gateway talks TLS to it.
    pub tls: bool,
}

/// HTTP/2 keep-alive on node connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Time between pings while a stream is open.
    pub interval: Duration,
    /// Time a ping's answer may take before the connection (and its streams) is closed.
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(default_keepalive_interval_ms()),
            timeout: Duration::from_millis(default_keepalive_timeout_ms()),
        }
    }
}

/// Where the DNS source finds nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// A/AAAA name and the node port.
    pub name: Option<(String, u16)>,
    /// SRV name.
    pub srv: Option<String>,
    /// Whether the gateway talks TLS to the nodes it finds.
    pub tls: bool,
    /// Time between resolutions.
    pub interval: Duration,
    /// Most nodes the source holds.
    pub max_nodes: usize,
    /// Time one DNS query may take.
    pub timeout: Duration,
    /// The name server (UDP and TCP); `None` is the system's resolver config.
    pub nameserver: Option<SocketAddr>,
}

/// A checked gateway configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Device-facing gRPC address.
    pub listen: SocketAddr,
    /// Metrics HTTP address.
    pub metrics_listen: SocketAddr,
    /// The fleet.
    pub nodes: Vec<NodeEndpoint>,
    /// K: candidates per Discover.
    pub discover_count: u32,
    /// Time between health checks.
    pub health_interval: Duration,
    /// Time one health check may take.
    pub health_timeout: Duration,
    /// Time to connect to a node.
    pub connect_timeout: Duration,
    /// Time a node may take to send its first message before the next handle is tried.
    pub first_message_timeout: Duration,
    /// TLS for the device-facing listener.
    pub tls: Option<TlsIdentity>,
    /// CA certificate (PEM) for `https://` nodes.
    pub node_ca_pem: Option<Vec<u8>>,
    /// Keep-alive pings on node connections.
    pub node_keepalive: Keepalive,
    /// Nodes found through DNS, besides `nodes`.
    pub dns: Option<DnsConfig>,
}

fn addr(field: &'static str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|e| ConfigError::Invalid {
        field,
        reason: format!("{v:?} is not an IP:port address ({e})"),
    })
}

fn read_file(field: &'static str, base: &Path, p: &Path) -> Result<Vec<u8>, ConfigError> {
    let path = base.join(p);
    std::fs::read(&path).map_err(|e| ConfigError::File {
        field,
        path: path.clone(),
        reason: e.to_string(),
    })
}

fn range(field: &'static str, v: u64, lo: u64, hi: u64) -> Result<u64, ConfigError> {
    if v < lo || v > hi {
        return Err(ConfigError::Invalid {
            field,
            reason: format!("{v} is outside {lo}..={hi}"),
        });
    }
    Ok(v)
}

impl GatewayConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            field: "(config file)",
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base)
    }

    /// Parses and checks config text; relative file paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let w: ConfigWire = toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let listen = addr("listen", &w.listen)?;
        let metrics_listen = addr("metrics_listen", &w.metrics_listen)?;
        if listen == metrics_listen && listen.port() != 0 {
            return Err(ConfigError::Invalid {
                field: "metrics_listen",
                reason: format!("{metrics_listen} is also the gRPC listen address"),
            });
        }
        if w.nodes.is_empty() && w.dns.is_none() {
            return Err(ConfigError::Invalid {
                field: "nodes",
                reason: "the fleet is empty; list at least one node URL, or find nodes \
                         through DNS with a [dns] table"
                    .into(),
            });
        }
        let mut nodes = Vec::with_capacity(w.nodes.len());
        for url in &w.nodes {
            let tls = if url.starts_with("https://") {
                true
            } else if url.starts_with("http://") {
                false
            } else {
                return Err(ConfigError::Invalid {
                    field: "nodes",
                    reason: format!("{url:?} must start with http:// or https://"),
                });
            };
            if tonic::transport::Endpoint::from_shared(url.clone()).is_err() {
                return Err(ConfigError::Invalid {
                    field: "nodes",
                    reason: format!("{url:?} is not a valid URL"),
                });
            }
            if nodes.iter().any(|n: &NodeEndpoint| &n.url == url) {
                return Err(ConfigError::Invalid {
                    field: "nodes",
                    reason: format!("{url:?} is listed twice"),
                });
            }
            nodes.push(NodeEndpoint {
                url: url.clone(),
                tls,
            });
        }
        let discover_count = range(
            "discover_count",
            u64::from(w.discover_count),
            1,
            u64::from(MAX_DISCOVER),
        )? as u32;
        let health_interval = Duration::from_secs(range(
            "health_interval_secs",
            w.health_interval_secs,
            1,
            3600,
        )?);
        let health_timeout =
            Duration::from_millis(range("health_timeout_ms", w.health_timeout_ms, 1, 60_000)?);
        let connect_timeout = Duration::from_millis(range(
            "connect_timeout_ms",
            w.connect_timeout_ms,
            1,
            60_000,
        )?);
        let first_message_timeout = Duration::from_millis(range(
            "first_message_timeout_ms",
            w.first_message_timeout_ms,
            1,
            600_000,
        )?);
        let tls = match &w.tls {
            Some(t) => Some(TlsIdentity {
                cert_pem: read_file("tls.cert", base, &t.cert)?,
                key_pem: read_file("tls.key", base, &t.key)?,
            }),
            None => None,
        };
        let node_ca_pem = match &w.node_ca {
            Some(p) => Some(read_file("node_ca", base, p)?),
            None => None,
        };
        if node_ca_pem.is_none() && nodes.iter().any(|n| n.tls) {
            return Err(ConfigError::Invalid {
                field: "node_ca",
                reason: "https:// nodes are listed but no node_ca is given to check their \
                         certificates"
                    .into(),
            });
        }
        let node_keepalive = Keepalive {
            interval: Duration::from_millis(range(
                "keepalive_interval_ms",
                w.keepalive_interval_ms,
                100,
                3_600_000,
            )?),
            timeout: Duration::from_millis(range(
                "keepalive_timeout_ms",
                w.keepalive_timeout_ms,
                100,
                600_000,
            )?),
        };
        let dns = match w.dns {
            Some(d) => Some(dns_config(d)?),
            None => None,
        };
        if node_ca_pem.is_none() && dns.as_ref().is_some_and(|d| d.tls) {
            return Err(ConfigError::Invalid {
                field: "node_ca",
                reason: "dns.scheme is \"https\" but no node_ca is given to check the nodes' \
                         certificates"
                    .into(),
            });
        }
        Ok(Self {
            listen,
            metrics_listen,
            nodes,
            discover_count,
            health_interval,
            health_timeout,
            connect_timeout,
            first_message_timeout,
            tls,
            node_ca_pem,
            node_keepalive,
            dns,
        })
    }
}

/// Whether `v` is a DNS name the resolver can ask for (RFC 1035 §2.3.4 lengths; letters,
/// digits, `-` and `_` (SRV labels, RFC 2782); an optional final `.`).
fn dns_name(field: &'static str, v: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| ConfigError::Invalid {
        field,
        reason: format!("{v:?} is not a DNS name: {why}"),
    };
    let body = v.strip_suffix('.').unwrap_or(v);
    if body.is_empty() || body.len() > 253 {
        return Err(bad("it must have 1..=253 characters"));
    }
    for label in body.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("every label must have 1..=63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad("labels hold letters, digits, '-' and '_' only"));
        }
    }
    Ok(v.to_owned())
}

fn dns_config(d: DnsWire) -> Result<DnsConfig, ConfigError> {
    let name = match (&d.name, d.port) {
        (Some(n), Some(p)) => Some((
            dns_name("dns.name", n)?,
            range("dns.port", p, 1, 65_535)? as u16,
        )),
        (Some(_), None) => {
            return Err(ConfigError::Invalid {
                field: "dns.port",
                reason: "the nodes' port is needed with dns.name (A/AAAA records carry no \
                         port); SRV records (dns.srv) carry their own"
                    .into(),
            });
        }
        (None, Some(_)) => {
            return Err(ConfigError::Invalid {
                field: "dns.port",
                reason: "dns.port is only used with dns.name".into(),
            });
        }
        (None, None) => None,
    };
    let srv = match &d.srv {
        Some(s) => Some(dns_name("dns.srv", s)?),
        None => None,
    };
    if name.is_none() && srv.is_none() {
        return Err(ConfigError::Invalid {
            field: "dns",
            reason: "give dns.name (A/AAAA records, with dns.port) or dns.srv (SRV records), \
                     or both"
                .into(),
        });
    }
    let tls = match d.scheme.as_str() {
        "http" => false,
        "https" => true,
        other => {
            return Err(ConfigError::Invalid {
                field: "dns.scheme",
                reason: format!("{other:?}; expected \"http\" or \"https\""),
            });
        }
    };
    let nameserver = match &d.nameserver {
        Some(ns) => Some(addr("dns.nameserver", ns)?),
        None => None,
    };
    Ok(DnsConfig {
        name,
        srv,
        tls,
        interval: Duration::from_secs(range("dns.interval_secs", d.interval_secs, 1, 3600)?),
        max_nodes: range("dns.max_nodes", d.max_nodes, 1, MAX_DNS_NODES)? as usize,
        timeout: Duration::from_millis(range("dns.timeout_ms", d.timeout_ms, 1, 60_000)?),
        nameserver,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
nodes = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
"#;

    #[test]
    fn defaults() {
        let c = GatewayConfig::parse(OK, Path::new(".")).expect("valid");
        assert_eq!(c.discover_count, 3);
        assert_eq!(c.health_interval, Duration::from_secs(10));
        assert_eq!(c.nodes.len(), 2);
        assert!(c.tls.is_none());
    }

    fn err(text: &str) -> String {
        GatewayConfig::parse(text, Path::new("."))
            .expect_err("must be rejected")
            .to_string()
    }

    /// A TOML value for a numeric setting: an edge case, a random integer of random size, or a
    /// float (which a whole-number setting must refuse).
    fn random_value(rng: &mut rand::rngs::StdRng, edges: &[i128]) -> String {
        use rand::Rng as _;
        match rng.gen_range(0..3) {
            0 => edges[rng.gen_range(0..edges.len())].to_string(),
            1 => (rng.r#gen::<u64>() >> rng.gen_range(0..64)).to_string(),
            _ => format!("{:.1}", rng.r#gen::<f64>() * 1e5),
        }
    }

    /// Random values in every numeric setting: an error naming the field, or a config whose
    /// durations start-up can add to `Instant::now()`; never a panic.
    #[test]
    fn random_numeric_settings_error_or_start() {
        use rand::{Rng as _, SeedableRng as _};
        let fields = [
            "discover_count",
            "health_interval_secs",
            "health_timeout_ms",
            "connect_timeout_ms",
            "first_message_timeout_ms",
            "keepalive_interval_ms",
            "keepalive_timeout_ms",
        ];
        let edges: [i128; 10] = [
            0,
            1,
            16,
            17,
            3600,
            60_000,
            600_001,
            1 << 62,
            u64::MAX as i128,
            -1,
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        for _ in 0..2000 {
            let mut text = OK.to_string();
            for f in fields {
                if rng.gen_bool(0.5) {
                    let v = random_value(&mut rng, &edges);
                    text.push_str(&format!("{f} = {v}\n"));
                }
            }
            match GatewayConfig::parse(&text, Path::new(".")) {
                Ok(c) => {
                    let now = std::time::Instant::now();
                    for d in [
                        c.health_interval,
                        c.health_timeout,
                        c.connect_timeout,
                        c.first_message_timeout,
                        c.node_keepalive.interval,
                        c.node_keepalive.timeout,
                    ] {
                        assert!(now.checked_add(d).is_some(), "{text}");
                    }
                    assert!((1..=MAX_DISCOVER).contains(&c.discover_count));
                }
                Err(e) => {
                    let e = e.to_string();
                    assert!(fields.iter().any(|f| e.contains(f)), "{text}\n{e}");
                }
            }
        }
    }

    /// The same for every numeric setting of the `[dns]` table.
    #[test]
    fn random_dns_settings_error_or_start() {
        use rand::{Rng as _, SeedableRng as _};
        let fields = ["port", "interval_secs", "max_nodes", "timeout_ms"];
        let edges: [i128; 10] = [0, 1, 1024, 1025, 3600, 3601, 65_535, 65_536, 1 << 62, -1];
        let mut rng = rand::rngs::StdRng::seed_from_u64(20);
        for _ in 0..2000 {
            let mut text = format!("{OK}[dns]\nname = \"nodes.tandem.test\"\n");
            let mut port = false;
            for f in fields {
                if rng.gen_bool(0.5) {
                    port |= f == "port";
                    let v = random_value(&mut rng, &edges);
                    text.push_str(&format!("{f} = {v}\n"));
                }
            }
            match GatewayConfig::parse(&text, Path::new(".")) {
                Ok(c) => {
                    assert!(port, "dns.name without dns.port must be refused: {text}");
                    let d = c.dns.expect("the [dns] table");
                    let now = std::time::Instant::now();
                    for t in [d.interval, d.timeout] {
                        assert!(now.checked_add(t).is_some(), "{text}");
                    }
                    assert!((1..=MAX_DNS_NODES as usize).contains(&d.max_nodes));
                    assert!(d.name.is_some_and(|(_, p)| p >= 1));
                }
                Err(e) => {
                    let e = e.to_string();
                    assert!(fields.iter().any(|f| e.contains(f)), "{text}\n{e}");
                }
            }
        }
    }

    #[test]
    fn dns_table() {
        let dns = |t: &str| format!("{OK}[dns]\n{t}\n");
        let c = GatewayConfig::parse(
            &dns("name = \"nodes.tandem.test.\"\nport = 7100\nnameserver = \"127.0.0.1:5353\""),
            Path::new("."),
        )
        .expect("valid");
        let d = c.dns.expect("dns");
        assert_eq!(d.name, Some(("nodes.tandem.test.".into(), 7100)));
        assert_eq!(d.interval, Duration::from_secs(10));
        assert_eq!(d.max_nodes, 64);
        assert!(!d.tls && d.srv.is_none());
        assert_eq!(d.nameserver, Some("127.0.0.1:5353".parse().expect("addr")));
        let only_dns = "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\nnodes = []\n\
                        [dns]\nsrv = \"_grpc._tcp.nodes.tandem.test\"\n";
        let c = GatewayConfig::parse(only_dns, Path::new(".")).expect("DNS alone is a fleet");
        assert!(c.nodes.is_empty());
        assert_eq!(
            c.dns.and_then(|d| d.srv).as_deref(),
            Some("_grpc._tcp.nodes.tandem.test")
        );
        assert!(err(&dns("name = \"nodes.test\"")).contains("dns.port"));
        assert!(err(&dns("srv = \"s.test\"\nport = 1")).contains("dns.port"));
        assert!(err(&dns("interval_secs = 5")).contains("dns.name"));
        assert!(err(&dns("name = \"bad name\"\nport = 1")).contains("dns.name"));
        assert!(err(&dns("name = \"a..b\"\nport = 1")).contains("dns.name"));
        assert!(err(&dns("srv = \"s.test\"\nscheme = \"ftp\"")).contains("dns.scheme"));
        assert!(err(&dns("srv = \"s.test\"\nscheme = \"https\"")).contains("node_ca"));
        assert!(err(&dns("srv = \"s.test\"\nnameserver = \"dns.test\"")).contains("nameserver"));
        assert!(err(&dns("srv = \"s.test\"\nsurprise = 1")).contains("surprise"));
    }

    #[test]
    fn rejects_bad_configs() {
        assert!(err("listen = 1").contains("config"));
        assert!(
            err(&OK.replace("127.0.0.1:0\"\nmetrics", "nowhere\"\nmetrics")).contains("listen")
        );
        assert!(err(&format!("{OK}\ndiscover_count = 0")).contains("discover_count"));
        assert!(err(&format!("{OK}\ndiscover_count = 17")).contains("discover_count"));
        assert!(err(&format!("{OK}\nhealth_interval_secs = 0")).contains("health_interval"));
        assert!(err(&format!("{OK}\nsurprise = 1")).contains("surprise"));
        assert!(err(&OK.replace("http://127.0.0.1:2", "http://127.0.0.1:1")).contains("twice"));
        assert!(err(&OK.replace("http://127.0.0.1:2", "ftp://x")).contains("http"));
        assert!(err(&OK.replace("http://127.0.0.1:2", "https://x:1")).contains("node_ca"));
        assert!(
            err(&OK.replace(
                "nodes = [\"http://127.0.0.1:1\", \"http://127.0.0.1:2\"]",
                "nodes = []"
            ))
            .contains("empty")
        );
        assert!(
            err(&format!(
                "{OK}\n[tls]\ncert = \"/nonexistent/c\"\nkey = \"k\""
            ))
            .contains("tls.cert")
        );
    }
}
