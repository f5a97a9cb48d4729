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
        let c: Config = serde_json::from_slice(bytes).map_err(|e| {
            ConfigError::invalid(
                "(document)",
                format!("not a device config: {e} (see `tandem config init`)"),
            )
        })?;
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
        if !(1..=16).contains(&self.routing.candidates) {
            return Err(ConfigError::invalid(
                "routing.candidates",
                format!("{} is outside 1..=16", self.routing.candidates),
            ));
        }
        if self.routing.local_token_budget == Some(0) {
            return Err(ConfigError::invalid(
                "routing.local_token_budget",
                "must be at least 1",
            ));
        }
        for (field, v) in [
            ("timeouts.connect_ms", self.timeouts.connect_ms),
            ("timeouts.first_chunk_ms", self.timeouts.first_chunk_ms),
            ("timeouts.request_ms", self.timeouts.request_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(field, "must be at least 1 ms"));
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
        let e = Config::from_json(b"[1]").expect_err("array");
        assert!(e.to_string().contains("not a device config"), "{e}");
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
