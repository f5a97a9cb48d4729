//! The device config: where the local models are, which gateway to use, the trust policy, and
//! the routing and timeout settings. JSON, as written by `tandem config init` or by
//! `tandem-fleet dev --write-config FILE`:
//!
//! ```json
//! {
//!   "models": {"device": "models/device", "server": "models/server"},
//!   "gateway": "http://127.0.0.1:7000",
//!   "tls_ca_pem": null,
//!   "policy": { "...": "a tandem-attest verification policy (see `attest verify --help`)" },
//!   "log_url": "http://127.0.0.1:7001",
//!   "checkpoint_file": "checkpoint",
//!   "routing": {"local_token_budget": 2048 /* optional: default the device model's context */,
//!               "fallback_to_local": true, "candidates": 3,
//!               "discover_cache_ms": 10000},
//!   "timeouts": {"connect_ms": 5000, "first_chunk_ms": 60000, "request_ms": 300000}
//! }
//! ```
//!
//! Numbers have ranges (the `RANGE_*` constants), checked on load: `routing.candidates`
//! 1..=16, `routing.local_token_budget` 1..=262144, `routing.discover_cache_ms` 0..=86400000,
//! `timeouts.connect_ms` 1..=600000, `timeouts.first_chunk_ms` 1..=3600000,
//! `timeouts.request_ms` 1..=86400000. The document must be a JSON object.
//!
//! Every field is optional; missing ones take the defaults shown (models default to the
//! embedded ones, see [`crate::models::default_models_dir`]). Relative model paths are resolved
//! against the config file's directory. Unknown fields are ignored, so configs written by newer
//! fleets still load.
//!
//! With `log_url` set, every node's log checkpoint must be consistent with the newest one this
//! device has verified (see [`crate::checkpoints`]); `checkpoint_file` keeps that checkpoint
//! across runs (a C2SP signed note; relative to the config file's directory). Without
//! `checkpoint_file` it is kept for the client's lifetime only; without `log_url` each node's
//! checkpoint is trusted on first use and the verification report says so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// `routing.candidates`: 1..=16 nodes per request.
pub const RANGE_CANDIDATES: (u64, u64) = (1, 16);
/// `routing.local_token_budget`: 1..=[`tandem_model::config::MAX_CONTEXT`] tokens.
pub const RANGE_LOCAL_TOKEN_BUDGET: (u64, u64) = (1, tandem_model::config::MAX_CONTEXT as u64);
/// `routing.discover_cache_ms`: 0 (off) to one day.
pub const RANGE_DISCOVER_CACHE_MS: (u64, u64) = (0, 86_400_000);
/// `timeouts.connect_ms`: 1 ms to 10 minutes.
pub const RANGE_CONNECT_MS: (u64, u64) = (1, 600_000);
/// `timeouts.first_chunk_ms`: 1 ms to one hour.
pub const RANGE_FIRST_CHUNK_MS: (u64, u64) = (1, 3_600_000);
/// `timeouts.request_ms`: 1 ms to one day.
pub const RANGE_REQUEST_MS: (u64, u64) = (1, 86_400_000);

/// How requests are routed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoutingConfig {
    /// Largest prompt + new tokens the device runs locally. Unset: the device model's own
    /// context (`max_position_embeddings` of its config); set: at most that.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_token_budget: Option<usize>,
    /// Run locally when the remote path fails before the first chunk (and local is possible).
    pub fallback_to_local: bool,
    /// How many candidate nodes to ask the gateway for (and seal to), 1..=16.
    pub candidates: u32,
    /// How long the verified candidates of one Discover are reused for later requests for the
    /// same model and adapter (never past a node's verification expiry; a failed Submit
    /// discards them and asks again). 0 asks the gateway on every request.
    pub discover_cache_ms: u64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            local_token_budget: None,
            fallback_to_local: true,
            candidates: 3,
            discover_cache_ms: 10_000,
        }
    }
}

/// Time limits of the remote path, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeoutConfig {
    /// Connecting to the gateway.
    pub connect_ms: u64,
    /// From sending the request to the first response chunk.
    pub first_chunk_ms: u64,
    /// The whole request.
    pub request_ms: u64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            connect_ms: 5_000,
            first_chunk_ms: 60_000,
            request_ms: 300_000,
        }
    }
}

impl TimeoutConfig {
    /// Connect timeout.
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
    /// First-chunk timeout.
    pub fn first_chunk(&self) -> Duration {
        Duration::from_millis(self.first_chunk_ms)
    }
    /// Whole-request timeout.
    pub fn request(&self) -> Duration {
        Duration::from_millis(self.request_ms)
    }
}

/// Model directories by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ModelsConfig {
    /// The device model (runs locally, and on nodes that serve the same files).
    pub device: Option<PathBuf>,
    /// The server model (runs only on nodes; its files pin the digests the device requires).
    pub server: Option<PathBuf>,
}

/// The device config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    /// Model directories.
    pub models: ModelsConfig,
    /// Gateway URL (`http://` or `https://`).
    pub gateway: Option<String>,
    /// PEM of the CA that signed the gateway's TLS certificate (for `https://`).
    pub tls_ca_pem: Option<String>,
    /// The trust policy (a tandem-attest policy document, inline).
    pub policy: Option<serde_json::Value>,
    /// The transparency log's URL (tlog-tiles read API): where the device fetches consistency
    /// proofs between node checkpoints and the newest one it knows. The policy holds its key.
    pub log_url: Option<String>,
    /// Where the newest verified log checkpoint is kept between runs.
    pub checkpoint_file: Option<PathBuf>,
    /// Routing.
    pub routing: RoutingConfig,
    /// Timeouts.
    pub timeouts: TimeoutConfig,
}

impl Config {
    /// Reads a config file; relative model paths become relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut c = Config::from_json(&bytes)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for m in [
            &mut c.models.device,
            &mut c.models.server,
            &mut c.checkpoint_file,
        ]
        .into_iter()
        .flatten()
        {
            if m.is_relative() {
                *m = base.join(&*m);
            }
        }
        Ok(c)
    }

    /// Parses config JSON and checks every field.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let not_config = |e: String| {
            ConfigError::invalid(
                "(document)",
                format!("not a device config: {e} (see `tandem config init`)"),
            )
        };
        // serde reads a struct from a JSON array too (`[]` would be every default): only an
        // object is a config.
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| not_config(e.to_string()))?;
        if !v.is_object() {
            let shape = match v {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "a boolean",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::Object(_) => "an object",
            };
            return Err(not_config(format!(
                "the document is {shape}; a config is a JSON object"
            )));
        }
        let c: Config = serde_json::from_value(v).map_err(|e| not_config(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// Checks value ranges and formats.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(g) = &self.gateway
            && !(g.starts_with("http://") || g.starts_with("https://"))
        {
            return Err(ConfigError::invalid(
                "gateway",
                format!("`{g}` must start with http:// or https://"),
            ));
        }
        if let Some(l) = &self.log_url
            && !(l.starts_with("http://") || l.starts_with("https://"))
        {
            return Err(ConfigError::invalid(
                "log_url",
                format!("`{l}` must start with http:// or https://"),
            ));
        }
        if self.checkpoint_file.is_some() && self.log_url.is_none() {
            return Err(ConfigError::invalid(
                "checkpoint_file",
                "is set but `log_url` is not: the device needs the log to check node checkpoints \
                 against the saved one",
            ));
        }
        if let Some(p) = &self.tls_ca_pem
            && !p.contains("-----BEGIN CERTIFICATE-----")
        {
            return Err(ConfigError::invalid(
                "tls_ca_pem",
                "is not a PEM certificate (no BEGIN CERTIFICATE line)",
            ));
        }
        let budget = self.routing.local_token_budget.map(|b| b as u64);
        for (field, v, (lo, hi)) in [
            (
                "routing.candidates",
                Some(u64::from(self.routing.candidates)),
                RANGE_CANDIDATES,
            ),
            (
                "routing.local_token_budget",
                budget,
                RANGE_LOCAL_TOKEN_BUDGET,
            ),
            (
                "routing.discover_cache_ms",
                Some(self.routing.discover_cache_ms),
                RANGE_DISCOVER_CACHE_MS,
            ),
            (
                "timeouts.connect_ms",
                Some(self.timeouts.connect_ms),
                RANGE_CONNECT_MS,
            ),
            (
                "timeouts.first_chunk_ms",
                Some(self.timeouts.first_chunk_ms),
                RANGE_FIRST_CHUNK_MS,
            ),
            (
                "timeouts.request_ms",
                Some(self.timeouts.request_ms),
                RANGE_REQUEST_MS,
            ),
        ] {
            if let Some(v) = v
                && !(lo..=hi).contains(&v)
            {
                return Err(ConfigError::invalid(
                    field,
                    format!("{v} is outside {lo}..={hi}"),
                ));
            }
        }
        Ok(())
    }

    /// The config as pretty JSON.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_is_all_defaults() {
        let c = Config::from_json(b"{}").expect("defaults");
        assert_eq!(c, Config::default());
        assert_eq!(c.routing.candidates, 3);
    }

    #[test]
    fn bad_values_name_the_field() {
        for (doc, field) in [
            (r#"{"gateway":"127.0.0.1:1"}"#, "gateway"),
            (r#"{"routing":{"candidates":0}}"#, "routing.candidates"),
            (r#"{"routing":{"candidates":17}}"#, "routing.candidates"),
            (r#"{"timeouts":{"connect_ms":0}}"#, "timeouts.connect_ms"),
            (r#"{"tls_ca_pem":"hello"}"#, "tls_ca_pem"),
            (r#"{"log_url":"127.0.0.1:7001"}"#, "log_url"),
            (r#"{"checkpoint_file":"cp"}"#, "checkpoint_file"),
            (
                r#"{"routing":{"local_token_budget":0}}"#,
                "routing.local_token_budget",
            ),
        ] {
            let e = Config::from_json(doc.as_bytes()).expect_err(doc);
            assert!(e.to_string().starts_with(field), "{doc}: {e}");
        }
        // Only an object is a config: serde alone would read `[]` as every default.
        for doc in ["[]", "[1]", "null", "1", "\"{}\"", "true", "[{}]"] {
            let e = Config::from_json(doc.as_bytes()).expect_err(doc);
            assert!(e.to_string().contains("not a device config"), "{doc}: {e}");
            assert!(e.to_string().contains("JSON object"), "{doc}: {e}");
        }
    }

    #[test]
    fn truncated_and_flipped_configs_never_panic() {
        let doc = Config {
            gateway: Some("http://127.0.0.1:7000".into()),
            ..Config::default()
        }
        .to_json_pretty()
        .into_bytes();
        for n in 0..doc.len() {
            let _ = Config::from_json(&doc[..n]);
        }
        for i in 0..doc.len() {
            let mut d = doc.clone();
            d[i] ^= 0x20;
            let _ = Config::from_json(&d);
        }
        assert!(Config::from_json(&doc).is_ok());
    }

    #[test]
    fn relative_model_paths_resolve_against_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("device.json");
        std::fs::write(
            &p,
            br#"{"models":{"device":"m/device","server":"/abs/server"}}"#,
        )
        .expect("write");
        let c = Config::load(&p).expect("load");
        assert_eq!(c.models.device, Some(dir.path().join("m/device")));
        assert_eq!(c.models.server, Some(PathBuf::from("/abs/server")));
        let e = Config::load(&dir.path().join("missing.json")).expect_err("missing");
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
