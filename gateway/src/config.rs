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
        if w.nodes.is_empty() {
            return Err(ConfigError::Invalid {
                field: "nodes",
                reason: "the fleet is empty; list at least one node URL".into(),
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
        })
    }
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
                    let v = match rng.gen_range(0..3) {
                        0 => edges[rng.gen_range(0..edges.len())].to_string(),
                        1 => (rng.r#gen::<u64>() >> rng.gen_range(0..64)).to_string(),
                        _ => format!("{:.1}", rng.r#gen::<f64>() * 1e5),
                    };
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
