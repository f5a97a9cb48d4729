//! The compute node's TOML config (`tandem-node serve --config FILE`).
//!
//! **One measured file for the whole fleet.** The node's release measures this file (artifact
//! kind `node-config`), so every value in it is shared by every node of the release. Values that
//! differ per node are *not* in it: the listen address (`--listen ADDR`) and the node's identity
//! (`--identity DIR`: its root-of-trust key and certificate, and its TLS certificate and key) are
//! command-line flags of `serve` that complete the config. N nodes therefore run one binary, one
//! config file and one release.
//!
//! Relative paths in the file are resolved against the directory holding the file.
//!
//! ```toml
//! log_url = "http://127.0.0.1:7000"            # the tlog-tiles log of releases
//! log_key = "tandem-dev-log+1a2b3c4d+AXk…"      # the log's verifier-note key
//! release_bundle = "release.json"               # signed, logged release of this node image
//! key_lifetime_secs = 86400                     # HPKE key lifetime (default 24 h)
//! tls = true                                    # serve gRPC over TLS (cert/key: --identity DIR)
//! allow_from = ["10.0.0.7", "10.1.0.0/24"]      # accept only these peers (default: all)
//!
//! [[models]]
//! dir = "../models/device"                      # config.json, *.safetensors, tokenizer.json
//! adapters = ["proofread", "truecase"]          # under <dir>/adapters/<name>/ (default: all)
//!
//! [root_of_trust]
//! kind = "software"                             # or "tpm" with tcti = "device:/dev/tpmrm0"
//!
//! [limits]
//! max_prompt_bytes = 65536
//! max_new_tokens = 256
//! deadline_secs = 60
//! queue_depth = 64
//! max_concurrent = 2
//! stall_timeout_ms = 10000                      # end a stream its client stops reading
//! ```
//!
//! Every number has a range (the `RANGE_*` constants, documented on each field and in
//! `node/README-config.md`), checked by [`NodeConfig::validate`] before anything starts,
//! `serve --check` included.
//!
//! [`NodeConfig::from_toml`] checks every field before anything is loaded or bound;
//! [`NodeConfig::resolve`] combines it with the command-line values into a [`ResolvedConfig`]
//! and checks that every file it names exists.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default HPKE key lifetime: 24 hours.
pub const DEFAULT_KEY_LIFETIME_SECS: u64 = 24 * 3600;
/// File name of the software root's identity key inside `--identity DIR` (PKCS#8 PEM, P-256).
pub const IDENTITY_KEY_FILE: &str = "identity.key.pem";
/// File name of the fleet certificate of that key inside `--identity DIR` (JSON, see
/// [`crate::node::identity`]).
pub const IDENTITY_CERT_FILE: &str = "identity.cert.json";
/// Fleet certificate of the TPM attestation key (TPM root), in `--identity DIR`.
pub const AK_CERT_FILE: &str = "ak.cert.json";
/// Where `tandem-launch` writes the launch event log by default, and where a TPM-rooted node
/// reads it unless `--tpm-event-log FILE` says otherwise (tmpfs: gone at reboot, like PCR 13).
pub const DEFAULT_TPM_EVENT_LOG: &str = "/run/tandem/launch.evlog";
/// File name of the TLS certificate chain inside `--identity DIR` (PEM).
pub const TLS_CERT_FILE: &str = "tls.cert.pem";
/// File name of the TLS private key inside `--identity DIR` (PEM).
pub const TLS_KEY_FILE: &str = "tls.key.pem";

/// A config file could not be read or breaks a rule. Every message names the field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown or mistyped field).
    #[error("config {path} is not a valid node config: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message (names the field and line).
        reason: String,
    },
    /// A field has a value the node cannot run with.
    #[error("config field `{field}`: {reason}")]
    Invalid {
        /// The field, as written in the file (e.g. `limits.queue_depth`).
        field: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// `key_lifetime_secs`: one minute to 30 days.
pub const RANGE_KEY_LIFETIME_SECS: (u64, u64) = (60, 30 * 86_400);
/// `clock_skew_secs`: up to one hour.
pub const RANGE_CLOCK_SKEW_SECS: (u64, u64) = (0, 3600);
/// `log_refresh_secs`: 0 (off) or [`MIN_LOG_REFRESH_SECS`] to 7 days.
pub const RANGE_LOG_REFRESH_SECS: (u64, u64) = (0, 7 * 86_400);
/// The shortest log refresh period other than 0 (off).
pub const MIN_LOG_REFRESH_SECS: u64 = 10;
/// `adapter_cache_bytes`: 1 byte to 1 TiB.
pub const RANGE_ADAPTER_CACHE_BYTES: (u64, u64) = (1, 1 << 40);
/// `limits.max_prompt_bytes`: 1 byte to 8 MiB.
pub const RANGE_MAX_PROMPT_BYTES: (u64, u64) = (1, 8 << 20);
/// `limits.max_new_tokens`: 1 to 65,536.
pub const RANGE_MAX_NEW_TOKENS: (u64, u64) = (1, 65_536);
/// `limits.deadline_secs`: 1 s to 1 hour.
pub const RANGE_DEADLINE_SECS: (u64, u64) = (1, 3600);
/// `limits.queue_depth`: 0 to 65,536 waiting requests.
pub const RANGE_QUEUE_DEPTH: (u64, u64) = (0, 65_536);
/// `limits.max_concurrent`: 1 to 256 generation threads.
pub const RANGE_MAX_CONCURRENT: (u64, u64) = (1, 256);
/// `limits.max_batch`: 1 (off) to 64 sequences per forward pass.
pub const RANGE_MAX_BATCH: (u64, u64) = (1, 64);
/// `limits.stall_timeout_ms`: 100 ms to 10 minutes.
pub const RANGE_STALL_TIMEOUT_MS: (u64, u64) = (100, 600_000);

fn in_range(field: &str, v: u64, lo: u64, hi: u64) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        return Err(invalid(field, format!("{v} is outside {lo}..={hi}")));
    }
    Ok(())
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The node config as written in the TOML file (shared by every node of a release).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Models to serve, at least one. Every model must use the same `tokenizer.json` (the
    /// release measures one tokenizer artifact).
    pub models: Vec<ModelConfig>,
    /// Default listen address (`host:port`). Per node, so normally given with `--listen`,
    /// which overrides this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Base URL of the transparency log of releases (C2SP tlog-tiles read API: `GET
    /// /checkpoint`, `GET /tile/...`), e.g. `http://127.0.0.1:7000`.
    pub log_url: String,
    /// The log's verifier key in C2SP signed-note form (`<name>+<key id>+<base64>`); the
    /// checkpoint the node fetches must be signed by it.
    pub log_key: String,
    /// Path of the signed release bundle (Sigstore bundle JSON made by `attest release sign`,
    /// optionally with a log entry attached). The node recomputes the release from its own
    /// binary, this file, the models and adapters, and refuses to start unless it matches.
    pub release_bundle: PathBuf,
    /// Root of trust that vouches for the node's keys.
    pub root_of_trust: RootOfTrustConfig,
    /// Serve gRPC over TLS (rustls, ring provider). The certificate and key come from
    /// `--identity DIR` (`tls.cert.pem`, `tls.key.pem`) or `--tls-cert`/`--tls-key`. Without
    /// TLS the inner HPKE still protects every request end to end; TLS protects metadata on each
    /// hop. Default: false.
    #[serde(default)]
    pub tls: bool,
    /// Lifetime of each HPKE key in seconds (default 86400 = 24 h). A new key is made at half
    /// its lifetime; the old one keeps opening requests until it expires. 60..=2592000 (30 days).
    #[serde(default = "default_key_lifetime")]
    pub key_lifetime_secs: u64,
    /// How far back a request's creation time may lie, in seconds (replay window; default 300).
    /// At most the key lifetime.
    #[serde(default = "default_replay_window")]
    pub replay_window_secs: u64,
    /// How far ahead of the node's clock a request's creation time may lie (default 60).
    /// 0..=3600.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_secs: u64,
    /// How often the node fetches a fresh checkpoint and inclusion proof of its release, in
    /// seconds (default 3600; 0 = only at start and on key rotation). 0 or 10..=604800 (7 days).
    #[serde(default = "default_log_refresh")]
    pub log_refresh_secs: u64,
    /// Bytes of adapter weights kept loaded (default 256 MiB); evicted adapters are loaded
    /// again from disk and checked against their measured digest. 1..=2^40 (1 TiB).
    #[serde(default = "default_adapter_cache")]
    pub adapter_cache_bytes: usize,
    /// Peers the node accepts connections from, normally the gateways: IP addresses or CIDR
    /// blocks (`"10.0.0.7"`, `"10.1.0.0/24"`, `"fd00::/64"`), at most [`MAX_ALLOW_FROM`].
    /// A connection from any other address is closed as soon as it is accepted, before TLS or
    /// HTTP/2 (event `connection_refused`). Empty (the default): every peer. Defence in depth
    /// beside the network's own rules (e.g. Kubernetes NetworkPolicies); measured with the rest
    /// of the config, so every node of a release accepts the same peers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<String>,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The environment variables that change the node's behaviour (`crate::node::environ`)
    /// this release runs with, e.g. `RUST_LOG = "info"`: at start every such variable present
    /// must be listed here with the same value, and every listed one present; otherwise the node
    /// refuses to start. The config is measured into the release, so these values are too.
    /// Default: none.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub environment: std::collections::BTreeMap<String, String>,
}

/// Most entries of `allow_from`.
pub const MAX_ALLOW_FROM: usize = 256;

/// An IP address block (`addr/prefix`; a bare address is a block of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpBlock {
    /// Parses `"10.0.0.7"`, `"10.0.0.0/24"`, `"fd00::/64"`. Host bits set below the prefix are
    /// refused (`"10.0.0.7/24"` is most likely a typo for one address or for `10.0.0.0/24`).
    pub fn parse(text: &str) -> Result<IpBlock, String> {
        let (a, p) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: std::net::IpAddr = a
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{text:?}: the prefix length must be 0..={max}")),
            },
        };
        let block = IpBlock { addr, prefix };
        if block.bits(addr) != Self::mask_bits(addr, prefix) {
            return Err(format!(
                "{text:?} has host bits set below /{prefix}; write the block's first address"
            ));
        }
        Ok(block)
    }

    fn bits(&self, addr: std::net::IpAddr) -> u128 {
        match addr {
            std::net::IpAddr::V4(a) => u128::from(u32::from(a)),
            std::net::IpAddr::V6(a) => u128::from(a),
        }
    }

    fn mask_bits(addr: std::net::IpAddr, prefix: u8) -> u128 {
        let (width, v) = match addr {
            std::net::IpAddr::V4(a) => (32u32, u128::from(u32::from(a))),
            std::net::IpAddr::V6(a) => (128u32, u128::from(a)),
        };
        let host = width - u32::from(prefix);
        if host >= 128 { 0 } else { (v >> host) << host }
    }

    /// Whether `peer` is in the block (an IPv4-mapped IPv6 peer counts as its IPv4 address).
    pub fn contains(&self, peer: std::net::IpAddr) -> bool {
        let peer = match peer {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, std::net::IpAddr::V4),
            v4 => v4,
        };
        if peer.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        Self::mask_bits(peer, self.prefix) == self.bits(self.addr)
    }
}

/// One model directory to serve.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The model directory (`config.json`, `*.safetensors`, `tokenizer.json`), as
    /// `tandem_model::load_model` reads it, or a `.gguf` file (imported to f16 into Tandem's
    /// cache on first start, `tandem_model::resolve_model_path`). Its last path component
    /// (without `.gguf`) names the model inside the release (`<name>/config.json`), so it must
    /// be unique among the models.
    pub dir: PathBuf,
    /// Adapters to serve, by directory name under `<dir>/adapters/`. Omitted: every
    /// subdirectory of `<dir>/adapters/`; empty list: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapters: Option<Vec<String>>,
    /// Compute dtype: `"f32"` (default; what the device's local path uses, so greedy outputs
    /// match) or `"f16"`.
    #[serde(default = "default_dtype")]
    pub dtype: String,
}

/// The root of trust.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum RootOfTrustConfig {
    /// Development root: a P-256 identity key certified by the fleet CA signs the evidence.
    /// Key and certificate come from `--identity DIR` (`identity.key.pem`,
    /// `identity.cert.json`).
    Software,
    /// TPM 2.0 quote of PCR 13 (extended before the node ran by `tandem-launch` with the
    /// launcher, node binary, config and release digest; only a reboot resets it) by the TPM's
    /// attestation key, certified by the fleet CA (`ak.cert.json` in `--identity DIR`;
    /// `tandem-node tpm-ak` prints the key to certify), carrying the launch event log
    /// (`--tpm-event-log`).
    Tpm {
        /// TSS2 TCTI string, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`;
        /// `--tpm-tcti` overrides it per node.
        tcti: String,
    },
}

/// Per-request and capacity limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest prompt in bytes (UTF-8); larger prompts get `RESOURCE_EXHAUSTED`. Default 65536;
    /// 1..=8388608 (8 MiB).
    pub max_prompt_bytes: usize,
    /// Most new tokens one request may ask for; more gets `OUT_OF_RANGE`. Default 256;
    /// 1..=65536.
    pub max_new_tokens: u32,
    /// Seconds a request may take from arrival to its last chunk (queue wait included). Past
    /// it: `DEADLINE_EXCEEDED` before the head, or a sealed error chunk after. Default 60;
    /// 1..=3600.
    pub deadline_secs: u64,
    /// Requests that may wait for a generation slot; when full, new requests get
    /// `RESOURCE_EXHAUSTED`. Default 64; 0..=65536.
    pub queue_depth: usize,
    /// Generations running at once (each on its own blocking thread). Default 2. With
    /// batching, the number of batch worker threads. 1..=256.
    pub max_concurrent: usize,
    /// Most sequences decoded together in one forward pass (same model and adapter, waiting at
    /// the same time). 1 (default) turns batching off: each request runs alone, exactly the
    /// device's single-sequence path. 1..=64.
    pub max_batch: usize,
    /// Milliseconds a response stream may take no chunk (a client that stops reading, e.g. an
    /// HTTP/2 flow-control window held at zero) before the node ends it and frees its
    /// generation slot; generation never waits on a client. 100..=600000, default 10000.
    pub stall_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_prompt_bytes: 64 * 1024,
            max_new_tokens: 256,
            deadline_secs: 60,
            queue_depth: 64,
            max_concurrent: 2,
            max_batch: 1,
            stall_timeout_ms: 10_000,
        }
    }
}

impl NodeConfig {
    /// A config with every optional setting at its default.
    pub fn new(
        models: Vec<ModelConfig>,
        log_url: String,
        log_key: String,
        release_bundle: PathBuf,
        root_of_trust: RootOfTrustConfig,
    ) -> Self {
        NodeConfig {
            models,
            listen: None,
            log_url,
            log_key,
            release_bundle,
            root_of_trust,
            tls: false,
            key_lifetime_secs: default_key_lifetime(),
            replay_window_secs: default_replay_window(),
            clock_skew_secs: default_clock_skew(),
            log_refresh_secs: default_log_refresh(),
            adapter_cache_bytes: default_adapter_cache(),
            limits: LimitsConfig::default(),
            environment: std::collections::BTreeMap::new(),
            allow_from: Vec::new(),
        }
    }

    /// The config as TOML text, which [`NodeConfig::from_toml`] reads back to an equal value.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self)
            .map_err(|e| invalid("(whole config)", format!("not writable as TOML: {e}")))
    }
}

impl ModelConfig {
    /// Serve the model in `dir` with every adapter under it, in f32.
    pub fn new(dir: PathBuf) -> Self {
        ModelConfig {
            dir,
            adapters: None,
            dtype: default_dtype(),
        }
    }
}

fn default_key_lifetime() -> u64 {
    DEFAULT_KEY_LIFETIME_SECS
}
fn default_replay_window() -> u64 {
    300
}
fn default_clock_skew() -> u64 {
    60
}
fn default_log_refresh() -> u64 {
    3600
}
fn default_adapter_cache() -> usize {
    256 << 20
}
fn default_dtype() -> String {
    "f32".into()
}

impl NodeConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<(NodeConfig, Vec<u8>), ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg = Self::from_toml(&bytes, path)?;
        Ok((cfg, bytes))
    }

    /// Parses and checks config bytes (`path` is for messages only).
    pub fn from_toml(bytes: &[u8], path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            reason: format!("not UTF-8: {e}"),
        })?;
        let cfg: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every field's value (not the files it names: see [`NodeConfig::resolve`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.models.is_empty() {
            return Err(invalid(
                "models",
                "no model to serve; add a [[models]] table with `dir`",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, m) in self.models.iter().enumerate() {
            let name = model_name(&m.dir).ok_or_else(|| {
                invalid(format!("models[{i}].dir"), "has no final path component")
            })?;
            if !names.insert(name.clone()) {
                return Err(invalid(
                    format!("models[{i}].dir"),
                    format!("a second model named {name:?}; model directory names must be unique"),
                ));
            }
            if m.dtype != "f32" && m.dtype != "f16" {
                return Err(invalid(
                    format!("models[{i}].dtype"),
                    format!("{:?}; expected \"f32\" or \"f16\"", m.dtype),
                ));
            }
            if let Some(list) = &m.adapters {
                let mut seen = std::collections::BTreeSet::new();
                for a in list {
                    if a.is_empty() || a.contains(['/', '\\']) || a == "." || a == ".." {
                        return Err(invalid(
                            format!("models[{i}].adapters"),
                            format!("{a:?} is not a plain directory name"),
                        ));
                    }
                    if !seen.insert(a) {
                        return Err(invalid(
                            format!("models[{i}].adapters"),
                            format!("{a:?} is listed twice"),
                        ));
                    }
                }
            }
        }
        if let Some(l) = &self.listen {
            l.parse::<SocketAddr>()
                .map_err(|e| invalid("listen", format!("{l:?} is not host:port ({e})")))?;
        }
        if !(self.log_url.starts_with("http://") || self.log_url.starts_with("https://")) {
            return Err(invalid(
                "log_url",
                format!("{:?} must start with http:// or https://", self.log_url),
            ));
        }
        tandem_attest::log::NoteVerifier::new(&self.log_key)
            .map_err(|e| invalid("log_key", format!("not a signed-note verifier key: {e}")))?;
        for (field, v, (lo, hi)) in [
            (
                "key_lifetime_secs",
                self.key_lifetime_secs,
                RANGE_KEY_LIFETIME_SECS,
            ),
            (
                "clock_skew_secs",
                self.clock_skew_secs,
                RANGE_CLOCK_SKEW_SECS,
            ),
            (
                "log_refresh_secs",
                self.log_refresh_secs,
                RANGE_LOG_REFRESH_SECS,
            ),
        ] {
            in_range(field, v, lo, hi)?;
        }
        if self.log_refresh_secs != 0 && self.log_refresh_secs < MIN_LOG_REFRESH_SECS {
            return Err(invalid(
                "log_refresh_secs",
                format!(
                    "{} s; 0 (off) or {MIN_LOG_REFRESH_SECS}..={}",
                    self.log_refresh_secs, RANGE_LOG_REFRESH_SECS.1
                ),
            ));
        }
        if self.replay_window_secs == 0 || self.replay_window_secs > self.key_lifetime_secs {
            return Err(invalid(
                "replay_window_secs",
                format!(
                    "{} s; must be 1..=key_lifetime_secs ({})",
                    self.replay_window_secs, self.key_lifetime_secs
                ),
            ));
        }
        if let RootOfTrustConfig::Tpm { tcti } = &self.root_of_trust
            && tcti.is_empty()
        {
            return Err(invalid("root_of_trust.tcti", "empty TCTI string"));
        }
        if self.allow_from.len() > MAX_ALLOW_FROM {
            return Err(invalid(
                "allow_from",
                format!(
                    "{} entries; at most {MAX_ALLOW_FROM} (use CIDR blocks)",
                    self.allow_from.len()
                ),
            ));
        }
        for a in &self.allow_from {
            IpBlock::parse(a).map_err(|e| invalid("allow_from", e))?;
        }
        in_range(
            "adapter_cache_bytes",
            self.adapter_cache_bytes as u64,
            RANGE_ADAPTER_CACHE_BYTES.0,
            RANGE_ADAPTER_CACHE_BYTES.1,
        )?;
        let l = &self.limits;
        for (field, v, (lo, hi)) in [
            (
                "limits.max_prompt_bytes",
                l.max_prompt_bytes as u64,
                RANGE_MAX_PROMPT_BYTES,
            ),
            (
                "limits.max_new_tokens",
                u64::from(l.max_new_tokens),
                RANGE_MAX_NEW_TOKENS,
            ),
            ("limits.deadline_secs", l.deadline_secs, RANGE_DEADLINE_SECS),
            (
                "limits.queue_depth",
                l.queue_depth as u64,
                RANGE_QUEUE_DEPTH,
            ),
            (
                "limits.max_concurrent",
                l.max_concurrent as u64,
                RANGE_MAX_CONCURRENT,
            ),
            ("limits.max_batch", l.max_batch as u64, RANGE_MAX_BATCH),
            (
                "limits.stall_timeout_ms",
                l.stall_timeout_ms,
                RANGE_STALL_TIMEOUT_MS,
            ),
        ] {
            in_range(field, v, lo, hi)?;
        }
        Ok(())
    }

    /// Completes the config with the per-node command-line values and checks every file it
    /// names. `config_path` is where the config was read from (relative paths resolve against
    /// its directory).
    pub fn resolve(
        &self,
        config_path: &Path,
        overrides: &Overrides,
    ) -> Result<ResolvedConfig, ConfigError> {
        let base = config_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let abs = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        let listen_text = overrides
            .listen
            .clone()
            .or_else(|| self.listen.clone())
            .ok_or_else(|| invalid("listen", "no listen address: pass --listen ADDR"))?;
        let listen: SocketAddr = listen_text.parse().map_err(|e| {
            invalid(
                "--listen",
                format!("{listen_text:?} is not host:port ({e})"),
            )
        })?;
        let need_file = |field: &str, p: PathBuf| -> Result<PathBuf, ConfigError> {
            if p.is_file() {
                Ok(p)
            } else {
                Err(invalid(
                    field,
                    format!("{} does not exist or is not a file", p.display()),
                ))
            }
        };
        let identity = |file: &str, flag: &str| -> Result<PathBuf, ConfigError> {
            let dir = overrides.identity.as_ref().ok_or_else(|| {
                invalid(
                    flag,
                    format!("no {file}: pass --identity DIR holding {file}"),
                )
            })?;
            need_file(flag, dir.join(file))
        };
        let mut models = Vec::with_capacity(self.models.len());
        for (i, m) in self.models.iter().enumerate() {
            let dir = abs(&m.dir);
            // A `.gguf` file stands for its f16 import in Tandem's cache (made on first use).
            let dir = tandem_model::resolve_model_path(
                &dir,
                &tandem_model::gguf::cache_dir(),
                tandem_model::DType::F16,
                &mut |_| {},
            )
            .map_err(|e| invalid(format!("models[{i}].dir"), e.to_string()))?;
            if !dir.join("config.json").is_file() {
                return Err(invalid(
                    format!("models[{i}].dir"),
                    format!("{} has no config.json", dir.display()),
                ));
            }
            let adir = dir.join("adapters");
            let adapters = match &m.adapters {
                Some(list) => list.clone(),
                None if adir.is_dir() => {
                    let mut v = Vec::new();
                    let rd = std::fs::read_dir(&adir).map_err(|e| {
                        invalid(
                            format!("models[{i}].dir"),
                            format!("listing {}: {e}", adir.display()),
                        )
                    })?;
                    for e in rd.flatten() {
                        if e.path().is_dir() {
                            v.push(e.file_name().to_string_lossy().into_owned());
                        }
                    }
                    v.sort();
                    v
                }
                None => Vec::new(),
            };
            for a in &adapters {
                if !adir.join(a).join("adapter_config.json").is_file() {
                    return Err(invalid(
                        format!("models[{i}].adapters"),
                        format!("{} has no adapter_config.json", adir.join(a).display()),
                    ));
                }
            }
            models.push(ResolvedModel {
                name: model_name(&m.dir).unwrap_or_default(),
                dir,
                adapters,
                f16: m.dtype == "f16",
            });
        }
        let tls = if self.tls {
            let cert = match &overrides.tls_cert {
                Some(p) => need_file("--tls-cert", p.clone())?,
                None => identity(TLS_CERT_FILE, "--identity")?,
            };
            let key = match &overrides.tls_key {
                Some(p) => need_file("--tls-key", p.clone())?,
                None => identity(TLS_KEY_FILE, "--identity")?,
            };
            Some((cert, key))
        } else {
            None
        };
        let root = match &self.root_of_trust {
            RootOfTrustConfig::Software => ResolvedRoot::Software {
                key: identity(IDENTITY_KEY_FILE, "--identity")?,
                cert: identity(IDENTITY_CERT_FILE, "--identity")?,
            },
            RootOfTrustConfig::Tpm { tcti } => ResolvedRoot::Tpm {
                tcti: overrides.tpm_tcti.clone().unwrap_or_else(|| tcti.clone()),
                cert: identity(AK_CERT_FILE, "--identity")?,
                event_log: overrides
                    .tpm_event_log
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_TPM_EVENT_LOG)),
            },
        };
        let release_bundle = match &overrides.release_bundle {
            Some(p) => need_file("--release", p.clone())?,
            None => need_file("release_bundle", abs(&self.release_bundle))?,
        };
        Ok(ResolvedConfig {
            config_path: config_path.to_owned(),
            listen,
            models,
            log_url: self.log_url.trim_end_matches('/').to_owned(),
            log_key: self.log_key.clone(),
            release_bundle,
            root,
            tls,
            key_lifetime_secs: self.key_lifetime_secs,
            replay_window_secs: self.replay_window_secs,
            clock_skew_secs: self.clock_skew_secs,
            log_refresh_secs: self.log_refresh_secs,
            adapter_cache_bytes: self.adapter_cache_bytes,
            limits: self.limits.clone(),
            allow_from: self
                .allow_from
                .iter()
                .map(|a| IpBlock::parse(a).map_err(|e| invalid("allow_from", e)))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// The model's name inside the release: the last component of its directory (for a `.gguf`
/// file, its name without the extension).
pub fn model_name(dir: &Path) -> Option<String> {
    let name = if dir
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        dir.file_stem()
    } else {
        dir.file_name()
    };
    name.map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
}

/// Per-node values given on the command line of `serve`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--listen ADDR`.
    pub listen: Option<String>,
    /// `--identity DIR`.
    pub identity: Option<PathBuf>,
    /// `--tls-cert FILE`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key FILE`.
    pub tls_key: Option<PathBuf>,
    /// `--release FILE` (overrides `release_bundle`).
    pub release_bundle: Option<PathBuf>,
    /// `--tpm-tcti TCTI` (overrides `root_of_trust.tcti`).
    pub tpm_tcti: Option<String>,
    /// `--tpm-event-log FILE` (default [`DEFAULT_TPM_EVENT_LOG`]).
    pub tpm_event_log: Option<PathBuf>,
}

/// A model to serve, with absolute paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// Name inside the release (last component of `dir`).
    pub name: String,
    /// The model directory.
    pub dir: PathBuf,
    /// Adapter directory names under `dir/adapters/`, sorted as listed.
    pub adapters: Vec<String>,
    /// Compute in f16 instead of f32.
    pub f16: bool,
}

/// The root of trust with its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedRoot {
    /// Software root: identity key and certificate files.
    Software {
        /// PKCS#8 PEM P-256 key.
        key: PathBuf,
        /// Fleet certificate JSON.
        cert: PathBuf,
    },
    /// TPM 2.0 through a TCTI.
    Tpm {
        /// The TCTI string.
        tcti: String,
        /// Fleet certificate of the attestation key.
        cert: PathBuf,
        /// The launch event log `tandem-launch` wrote (read at start; its absence is reported
        /// then, with what to do).
        event_log: PathBuf,
    },
}

/// Everything the node needs to start, every file checked to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedConfig {
    /// Where the config file is (it is measured).
    pub config_path: PathBuf,
    /// Listen address.
    pub listen: SocketAddr,
    /// Models.
    pub models: Vec<ResolvedModel>,
    /// Log base URL (no trailing `/`).
    pub log_url: String,
    /// Log verifier key.
    pub log_key: String,
    /// Release bundle file.
    pub release_bundle: PathBuf,
    /// Root of trust.
    pub root: ResolvedRoot,
    /// TLS certificate and key files, if TLS is on.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Key lifetime.
    pub key_lifetime_secs: u64,
    /// Replay window.
    pub replay_window_secs: u64,
    /// Allowed clock skew.
    pub clock_skew_secs: u64,
    /// Log refresh period (0 = off).
    pub log_refresh_secs: u64,
    /// Adapter cache budget.
    pub adapter_cache_bytes: usize,
    /// Limits.
    pub limits: LimitsConfig,
    /// Peers accepted (empty: every peer).
    pub allow_from: Vec<IpBlock>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key() -> String {
        let (s, _) = tandem_attest::log::NoteSigner::generate_with_rng(
            &mut rand::rngs::OsRng,
            "log.example",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        s.vkey().to_owned()
    }

    fn base_with(key: &str) -> String {
        format!(
            "log_url = \"http://127.0.0.1:1\"\nlog_key = \"{key}\"\nrelease_bundle = \"r.json\"\n\
             [[models]]\ndir = \"models/device\"\n[root_of_trust]\nkind = \"software\"\n"
        )
    }

    fn base() -> String {
        base_with(&key())
    }

    fn parse(s: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::from_toml(s.as_bytes(), Path::new("node.toml"))
    }

    #[test]
    fn written_config_reads_back_equal() {
        let mut c = NodeConfig::new(
            vec![
                ModelConfig::new("models/device \"quoted\"".into()),
                ModelConfig::new("models/server".into()),
            ],
            "http://127.0.0.1:1".into(),
            key(),
            "release.json".into(),
            RootOfTrustConfig::Tpm {
                tcti: "swtpm:host=127.0.0.1,port=2321".into(),
            },
        );
        c.models[1].adapters = Some(vec!["proofread".into()]);
        c.limits.max_batch = 8;
        let text = c.to_toml().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}")), c);
        // Defaults written out are the defaults read in.
        let d = parse(&base()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.limits, LimitsConfig::default());
        assert_eq!(
            d.key_lifetime_secs,
            NodeConfig::new(
                vec![],
                String::new(),
                String::new(),
                PathBuf::new(),
                RootOfTrustConfig::Software
            )
            .key_lifetime_secs
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let Ok(c) = parse(&base()) else {
            panic!("{:?}", parse(&base()))
        };
        assert_eq!(c.key_lifetime_secs, DEFAULT_KEY_LIFETIME_SECS);
        assert_eq!(c.limits, LimitsConfig::default());
        assert!(!c.tls);
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            ("key_lifetime_secs = 5\n", "key_lifetime_secs"),
            ("replay_window_secs = 0\n", "replay_window_secs"),
            ("listen = \"nope\"\n", "listen"),
            (
                "[limits]\nqueue_depth = 1\nmax_concurrent = 0\n",
                "limits.max_concurrent",
            ),
            ("[limits]\nmax_new_tokens = 0\n", "limits.max_new_tokens"),
        ];
        for (extra, field) in cases {
            // Top-level keys must come before the tables.
            let text = if extra.starts_with('[') {
                format!("{}{extra}", base())
            } else {
                format!("{extra}{}", base())
            };
            let err = parse(&text).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(field), "{extra:?}: {err}");
        }
        let err = parse(&base_with("garbage")).unwrap_err().to_string();
        assert!(err.contains("log_key"), "{err}");
        let err = parse(&base().replace("http://", "ftp://"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("log_url"), "{err}");
        let err = parse(&format!("{}[[models]]\ndir = \"x/device\"\n", base()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("models[1].dir"), "{err}");
        let err = parse(&format!("bogus = 1\n{}", base()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        let err = parse(&base().replace("models/device\"", "models/device\"\ndtype = \"q4\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("models[0].dtype"), "{err}");
    }

    /// The issue's values, refused with the field's name before anything starts.
    #[test]
    fn huge_values_are_refused_by_name() {
        for (top, limits, field) in [
            (
                "",
                "deadline_secs = 9223372036854775807\n",
                "limits.deadline_secs",
            ),
            ("", "deadline_secs = 3601\n", "limits.deadline_secs"),
            (
                "",
                "queue_depth = 4611686018427387904\n",
                "limits.queue_depth",
            ),
            ("", "queue_depth = 18446744073709551615\n", "queue_depth"),
            ("", "stall_timeout_ms = 0\n", "limits.stall_timeout_ms"),
            ("", "max_new_tokens = 4294967295\n", "limits.max_new_tokens"),
            (
                "key_lifetime_secs = 18446744073709551615\n",
                "",
                "key_lifetime_secs",
            ),
            (
                "key_lifetime_secs = 9223372036854775807\n",
                "",
                "key_lifetime_secs",
            ),
            (
                "clock_skew_secs = 9223372036854775807\n",
                "",
                "clock_skew_secs",
            ),
            ("log_refresh_secs = 1\n", "", "log_refresh_secs"),
            (
                "adapter_cache_bytes = 9223372036854775807\n",
                "",
                "adapter_cache_bytes",
            ),
        ] {
            let text = format!("{top}{}[limits]\n{limits}", base());
            let err = parse(&text).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(field), "{top}{limits}: {err}");
        }
    }

    /// What start-up computes from a checked config, with the same operations: none may fail
    /// for a config `validate` accepted.
    fn start_arithmetic(c: &NodeConfig) {
        let l = &c.limits;
        let now = std::time::Instant::now();
        assert!(
            now.checked_add(Duration::from_secs(l.deadline_secs))
                .is_some()
        );
        assert!(
            now.checked_add(Duration::from_millis(l.stall_timeout_ms))
                .is_some()
        );
        let places = l.queue_depth.checked_add(l.max_concurrent).unwrap();
        assert!(places <= tokio::sync::Semaphore::MAX_PERMITS);
        // Key expiry (unix seconds) far in the future still fits.
        assert!(4_000_000_000u64.checked_add(c.key_lifetime_secs).is_some());
        assert!(c.replay_window_secs <= c.key_lifetime_secs);
        let _ = Duration::from_secs(l.deadline_secs.saturating_add(5))
            + Duration::from_millis(l.stall_timeout_ms);
    }

    /// Random values (edge values, powers of two, random widths, negatives, floats) in every
    /// numeric setting: a clear error naming a field, or a config start-up can use.
    #[test]
    fn random_numeric_settings_error_or_start() {
        use rand::{Rng as _, SeedableRng as _};
        use std::fmt::Write as _;
        let key = key();
        let top = [
            "key_lifetime_secs",
            "replay_window_secs",
            "clock_skew_secs",
            "log_refresh_secs",
            "adapter_cache_bytes",
        ];
        let limits = [
            "max_prompt_bytes",
            "max_new_tokens",
            "deadline_secs",
            "queue_depth",
            "max_concurrent",
            "max_batch",
            "stall_timeout_ms",
        ];
        let edges: [i128; 16] = [
            0,
            1,
            2,
            10,
            60,
            64,
            100,
            3600,
            65_536,
            1 << 31,
            1 << 32,
            1 << 53,
            1 << 62,
            i64::MAX as i128,
            u64::MAX as i128,
            -1,
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        let mut accepted = 0;
        for _ in 0..3000 {
            let value = |rng: &mut rand::rngs::StdRng| -> String {
                match rng.gen_range(0..5) {
                    0 | 1 => edges[rng.gen_range(0..edges.len())].to_string(),
                    2 => (rng.r#gen::<u64>() >> rng.gen_range(0..64)).to_string(),
                    3 => rng.gen_range(0..100_000u64).to_string(),
                    _ => format!("{:.1}", rng.r#gen::<f64>() * 1e6),
                }
            };
            let mut head = String::new();
            for f in top {
                if rng.gen_bool(0.4) {
                    let _ = writeln!(head, "{f} = {}", value(&mut rng));
                }
            }
            let mut lim = String::from("[limits]\n");
            for f in limits {
                if rng.gen_bool(0.4) {
                    let _ = writeln!(lim, "{f} = {}", value(&mut rng));
                }
            }
            let text = format!("{head}{}{lim}", base_with(&key));
            match parse(&text) {
                Ok(c) => {
                    accepted += 1;
                    start_arithmetic(&c);
                }
                Err(e) => {
                    let e = e.to_string();
                    let named = top.iter().chain(&limits).any(|f| e.contains(f));
                    assert!(named, "error names no field:\n{text}\n{e}");
                }
            }
        }
        assert!(accepted > 50, "only {accepted} configs accepted");
    }

    #[test]
    fn allow_from_blocks() {
        let ip = |s: &str| -> std::net::IpAddr { s.parse().unwrap() };
        let b = IpBlock::parse("10.1.0.0/24").unwrap();
        assert!(b.contains(ip("10.1.0.0")) && b.contains(ip("10.1.0.255")));
        assert!(!b.contains(ip("10.1.1.0")) && !b.contains(ip("fd00::1")));
        assert!(
            b.contains(ip("::ffff:10.1.0.9")),
            "IPv4-mapped peers count as IPv4"
        );
        let one = IpBlock::parse("10.0.0.7").unwrap();
        assert!(one.contains(ip("10.0.0.7")) && !one.contains(ip("10.0.0.8")));
        assert!(
            IpBlock::parse("0.0.0.0/0")
                .unwrap()
                .contains(ip("192.0.2.1"))
        );
        let v6 = IpBlock::parse("fd00::/64").unwrap();
        assert!(v6.contains(ip("fd00::1:2")) && !v6.contains(ip("fd00:0:0:1::1")));
        assert!(IpBlock::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        for bad in [
            "10.0.0.7/24",
            "10.0.0.0/33",
            "fd00::/129",
            "host",
            "10.0.0.0/",
            "",
        ] {
            assert!(IpBlock::parse(bad).is_err(), "{bad}");
        }
        let c = parse(&format!(
            "allow_from = [\"10.0.0.7\", \"fd00::/64\"]\n{}",
            base()
        ))
        .unwrap();
        assert_eq!(c.allow_from.len(), 2);
        let written = c.to_toml().unwrap();
        assert_eq!(parse(&written).unwrap(), c);
        let err = parse(&format!("allow_from = [\"10.0.0.7/8\"]\n{}", base()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("allow_from") && err.contains("host bits"),
            "{err}"
        );
        let many: Vec<String> = (0..=MAX_ALLOW_FROM)
            .map(|i| format!("\"10.0.{}.{}\"", i / 256, i % 256))
            .collect();
        let err = parse(&format!("allow_from = [{}]\n{}", many.join(","), base()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("allow_from"), "{err}");
    }

    #[test]
    fn resolve_requires_listen_and_identity() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let c = parse(&base()).unwrap_or_else(|e| panic!("{e}"));
        let cfg_path = dir.path().join("node.toml");
        let err = c
            .resolve(&cfg_path, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--listen"), "{err}");
        let o = Overrides {
            listen: Some("127.0.0.1:0".into()),
            ..Overrides::default()
        };
        let err = c.resolve(&cfg_path, &o).unwrap_err().to_string();
        assert!(err.contains("models[0].dir"), "{err}");
    }
}
