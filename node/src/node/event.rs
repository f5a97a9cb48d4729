//! The node's log: one JSON object per line on stderr, from a fixed set of typed events.
//!
//! [`Event`] is the allow-list: every variant's fields are counts, durations, ids, digests,
//! addresses and error kinds. No field can carry request content — prompts and outputs never
//! reach this module. The line format is `tandem_service::emit_json_line`, shared with the
//! gateway's events.

use std::net::SocketAddr;

use tandem_attest::digest::Sha256Digest;

/// Seconds between two `connection_refused` events (a scan cannot flood the log).
pub const REFUSED_LOG_EVERY_SECS: u64 = 10;

/// A model the node serves, as `node_start` names it.
#[derive(Debug, Clone)]
pub struct ServedModel {
    /// The model's name in the config.
    pub name: String,
    /// Its directory digest.
    pub digest: String,
    /// Its adapters: (name, directory digest).
    pub adapters: Vec<(String, String)>,
}

/// One loggable event.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// The node passed its start-up checks.
    NodeStart {
        /// Its release digest.
        release: Sha256Digest,
        /// What it serves.
        models: &'a [ServedModel],
        /// The published key's id.
        key_id: u8,
        /// The published key's expiry (Unix seconds).
        key_expiry: u64,
        /// Size of the log checkpoint its release was proven under.
        checkpoint_size: u64,
        /// The configured listen address.
        listen: SocketAddr,
        /// Whether gRPC runs over TLS.
        tls: bool,
    },
    /// Listening on `listen`.
    Serving {
        /// The bound address.
        listen: SocketAddr,
    },
    /// A new key was made and published.
    KeyRotated {
        /// Its id.
        key_id: u8,
    },
    /// The node re-proved its release under a newer checkpoint.
    LogRefreshed {
        /// The checkpoint's size.
        checkpoint_size: u64,
    },
    /// Re-proving the release failed (the log client's reason: URLs, sizes, digests).
    LogRefreshFailed {
        /// Why.
        reason: String,
    },
    /// A request was answered.
    RequestDone {
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens.
        tokens: usize,
        /// Why generation stopped.
        finish: &'static str,
        /// Sequences decoded together.
        batch: usize,
        /// Wall time.
        ms: u64,
    },
    /// A request was refused.
    RequestRejected {
        /// The failure kind (`node::status`).
        reason: &'static str,
        /// The gRPC code.
        code: i32,
        /// Wall time.
        ms: u64,
    },
    /// Connections from peers outside `allow_from` were closed unserved. The first is logged at
    /// once, later ones at most once every [`REFUSED_LOG_EVERY_SECS`] seconds with a count.
    ConnectionRefused {
        /// The last refused peer.
        peer: SocketAddr,
        /// Connections refused since the last such event (this one included).
        refused: u64,
    },
    /// SIGTERM: no new requests.
    DrainStart {
        /// Requests still running.
        in_flight: u64,
    },
    /// Draining ended.
    DrainDone {
        /// Requests still running (0 unless the grace period ran out).
        in_flight: u64,
    },
}

impl Event<'_> {
    /// The event's name and fields.
    pub fn to_json(&self) -> (&'static str, serde_json::Value) {
        use serde_json::json;
        match self {
            Self::NodeStart {
                release,
                models,
                key_id,
                key_expiry,
                checkpoint_size,
                listen,
                tls,
            } => (
                "node_start",
                json!({
                    "release": release.to_string(),
                    "models": models.iter().map(|m| json!({
                        "name": m.name,
                        "digest": m.digest,
                        "adapters": m.adapters.iter()
                            .map(|(n, d)| json!({"name": n, "digest": d}))
                            .collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                    "key_id": key_id,
                    "key_expiry": key_expiry,
                    "checkpoint_size": checkpoint_size,
                    "listen": listen.to_string(),
                    "tls": tls,
                }),
            ),
            Self::Serving { listen } => ("serving", json!({"listen": listen.to_string()})),
            Self::KeyRotated { key_id } => ("key_rotated", json!({"key_id": key_id})),
            Self::LogRefreshed { checkpoint_size } => {
                ("log_refreshed", json!({"checkpoint_size": checkpoint_size}))
            }
            Self::LogRefreshFailed { reason } => ("log_refresh_failed", json!({"reason": reason})),
            Self::RequestDone {
                prompt_tokens,
                tokens,
                finish,
                batch,
                ms,
            } => (
                "request_done",
                json!({
                    "prompt_tokens": prompt_tokens, "tokens": tokens, "finish": finish,
                    "batch": batch, "ms": ms,
                }),
            ),
            Self::RequestRejected { reason, code, ms } => (
                "request_rejected",
                json!({"reason": reason, "code": code, "ms": ms}),
            ),
            Self::ConnectionRefused { peer, refused } => (
                "connection_refused",
                json!({"peer": peer.to_string(), "refused": refused}),
            ),
            Self::DrainStart { in_flight } => ("drain_start", json!({"in_flight": in_flight})),
            Self::DrainDone { in_flight } => ("drain_done", json!({"in_flight": in_flight})),
        }
    }
}

/// Writes one event line on stderr.
pub fn emit(event: &Event<'_>) {
    let (name, fields) = event.to_json();
    tandem_service::emit_json_line(name, fields);
}
