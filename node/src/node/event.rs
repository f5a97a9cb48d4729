//! The node's log: one JSON object per line on stderr, from a fixed set of events.
//!
//! Allowed events and their fields (nothing else is ever logged; no field carries request
//! content — prompts and outputs never reach this module):
//!
//! - `node_start`: release digest, models and adapters (names and digests), key id and expiry,
//!   log checkpoint size, listen address, TLS on/off;
//! - `serving`: listen address;
//! - `key_rotated`: new key id;
//! - `log_refreshed`: checkpoint size; `log_refresh_failed`: reason (from the log client);
//! - `request_done`: prompt_tokens, tokens, finish, batch (sequences decoded together), ms;
//! - `request_rejected`: reason kind, gRPC code, ms;
//! - `drain_start`, `drain_done`: requests in flight.

use std::io::Write as _;

/// Writes one event line.
pub fn emit(event: &'static str, fields: serde_json::Value) {
    let mut obj = serde_json::Map::new();
    obj.insert("event".into(), event.into());
    if let serde_json::Value::Object(m) = fields {
        obj.extend(m);
    }
    let line = serde_json::Value::Object(obj).to_string();
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{line}");
}
