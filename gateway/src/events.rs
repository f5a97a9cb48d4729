//! The gateway's log: an allow-list of structured events. Nothing else is ever printed, so no
//! request bytes, routing metadata, node error messages or response bytes can reach a log line.
//! Each event is one JSON object per line.

use std::net::SocketAddr;
use std::sync::Arc;

/// Why a node left the healthy set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unhealthy {
    /// The health check (GetAttestation) failed or timed out.
    Unreachable(tonic::Code),
    /// The node's attestation bundle does not parse.
    BadBundle,
    /// The node's key has expired (or expires within the next health interval).
    Expired,
}

impl Unhealthy {
    fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::BadBundle => "bad_attestation_bundle",
            Self::Expired => "key_expired",
        }
    }
}

/// One loggable event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The gateway is serving.
    Listening {
        /// gRPC address.
        grpc: SocketAddr,
        /// Metrics address.
        metrics: SocketAddr,
        /// Whether the gRPC listener uses TLS.
        tls: bool,
    },
    /// A node passed a health check after failing one (or for the first time).
    NodeHealthy {
        /// Index of the node in the config.
        node: usize,
        /// Its key expiry (Unix seconds).
        key_expiry: u64,
    },
    /// A node failed a health check after passing one (or for the first time).
    NodeUnhealthy {
        /// Index of the node in the config.
        node: usize,
        /// Why.
        reason: Unhealthy,
    },
    /// A node failed before its first message; the next handle is tried.
    Failover {
        /// Index of the node that failed.
        node: usize,
        /// The gRPC status code it failed with.
        code: tonic::Code,
    },
    /// A node failed after its first message; the device gets an error status.
    MidstreamFailure {
        /// Index of the node.
        node: usize,
        /// Messages relayed before the failure.
        relayed: u64,
    },
    /// A node found through DNS joined the fleet (it is offered once a health check passed).
    NodeAdded {
        /// Its number in logs.
        node: usize,
        /// Its address.
        addr: SocketAddr,
    },
    /// A node DNS no longer names left the fleet.
    NodeRemoved {
        /// Its number in logs.
        node: usize,
        /// Its address.
        addr: SocketAddr,
    },
    /// A DNS resolution changed the fleet (or was the first to succeed, or the first after a
    /// failure).
    DnsResolved {
        /// The names asked for.
        names: String,
        /// Nodes DNS names now.
        nodes: usize,
        /// Records past `dns.max_nodes`, ignored.
        ignored: usize,
    },
    /// A DNS resolution failed (first failure, or a different reason than the last); the last
    /// set of nodes is kept.
    DnsFailed {
        /// The names asked for.
        names: String,
        /// The resolver's reason.
        reason: String,
    },
    /// A DNS resolution answered, but with no node (e.g. NXDOMAIN for a misspelt name, or a
    /// Service without ready pods): the DNS nodes are dropped. Logged when it starts or its
    /// reason changes.
    DnsEmpty {
        /// The names asked for.
        names: String,
        /// Which names had no records, and the answer's code.
        reason: String,
    },
    /// Shutting down.
    ShuttingDown,
}

impl Event {
    /// The event as one line of JSON.
    pub fn to_json_line(&self) -> String {
        let v = match self {
            Self::Listening { grpc, metrics, tls } => serde_json::json!({
                "event": "listening", "grpc": grpc.to_string(),
                "metrics": metrics.to_string(), "tls": tls,
            }),
            Self::NodeHealthy { node, key_expiry } => serde_json::json!({
                "event": "node_healthy", "node": node, "key_expiry": key_expiry,
            }),
            Self::NodeUnhealthy { node, reason } => {
                let mut v = serde_json::json!({
                    "event": "node_unhealthy", "node": node, "reason": reason.as_str(),
                });
                if let Unhealthy::Unreachable(code) = reason {
                    v["code"] = format!("{code:?}").into();
                }
                v
            }
            Self::Failover { node, code } => serde_json::json!({
                "event": "failover", "node": node, "code": format!("{code:?}"),
            }),
            Self::MidstreamFailure { node, relayed } => serde_json::json!({
                "event": "midstream_failure", "node": node, "relayed_messages": relayed,
            }),
            Self::NodeAdded { node, addr } => serde_json::json!({
                "event": "node_added", "node": node, "addr": addr.to_string(), "source": "dns",
            }),
            Self::NodeRemoved { node, addr } => serde_json::json!({
                "event": "node_removed", "node": node, "addr": addr.to_string(), "source": "dns",
            }),
            Self::DnsResolved {
                names,
                nodes,
                ignored,
            } => serde_json::json!({
                "event": "dns_resolved", "names": names, "nodes": nodes, "ignored": ignored,
            }),
            Self::DnsFailed { names, reason } => serde_json::json!({
                "event": "dns_failed", "names": names, "reason": reason,
            }),
            Self::DnsEmpty { names, reason } => serde_json::json!({
                "event": "dns_empty", "names": names, "reason": reason,
            }),
            Self::ShuttingDown => serde_json::json!({ "event": "shutting_down" }),
        };
        v.to_string()
    }
}

/// Where events go.
pub type EventSink = Arc<dyn Fn(&Event) + Send + Sync>;

/// The default sink: one JSON line per event on standard error.
pub fn stderr_sink() -> EventSink {
    Arc::new(|e: &Event| eprintln!("{}", e.to_json_line()))
}
