//! The SDK's one error type, built from one enum per stage so callers can match on what failed.

use thiserror::Error;

/// Any failure of [`crate::Client`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable.
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    /// The request cannot be routed as asked.
    #[error("routing: {0}")]
    Route(String),
    /// Local inference failed.
    #[error("local model: {0}")]
    Local(#[from] tandem_model::Error),
    /// Pinned model files changed on disk.
    #[error("{0}")]
    ModelChanged(String),
    /// The remote path failed.
    #[error("remote: {0}")]
    Remote(#[from] RemoteError),
}

/// A configuration file or value is wrong.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A field is missing or malformed.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field (JSON path).
        field: String,
        /// What is wrong and what to check.
        reason: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The remote path failed. Every variant says which step and what to check.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// No gateway is configured.
    #[error("no gateway is configured (set `gateway` in the device config or pass --gateway)")]
    NoGateway,
    /// No trust policy is configured.
    #[error("no trust policy is configured (set `policy` in the device config or pass --policy)")]
    NoPolicy,
    /// Connecting to the gateway failed.
    #[error("cannot reach gateway {url}: {reason}")]
    Connect {
        /// The gateway URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A gRPC call failed.
    #[error("{call} failed: {code}: {message}")]
    Status {
        /// The call (`Discover`, `Submit`).
        call: &'static str,
        /// The gRPC status code name.
        code: String,
        /// The status message.
        message: String,
    },
    /// The gateway offered no candidate that passed verification; nothing was sent.
    #[error("no node passed verification, nothing was sent: {0}")]
    NoVerifiedNode(String),
    /// Sealing the request failed.
    #[error("sealing the request: {0}")]
    Seal(#[from] tandem_proto::Error),
    /// The response stream is malformed, truncated or fails authentication.
    #[error("response: {0}")]
    Response(String),
    /// A node refused the request before answering; the detail (exact sizes and limits) was
    /// sealed to this device and opened here, the gateway saw only `code`.
    #[error("{call} failed: {code}: the node refused the request: {detail}")]
    Refused {
        /// The call (`Submit`).
        call: &'static str,
        /// The gRPC status code name the gateway relayed.
        code: String,
        /// The node's own code number (google.rpc.Code), from the sealed detail.
        node_code: u32,
        /// The node's detail message.
        detail: String,
    },
    /// The node reported an error after the response started.
    #[error("node error {code}: {message}")]
    Node {
        /// gRPC status code number.
        code: u32,
        /// The node's message.
        message: String,
    },
    /// The receipt does not match what was verified and requested.
    #[error("receipt rejected: {0}")]
    Receipt(String),
    /// No reply in time.
    #[error("timed out after {0:?} {1}")]
    Timeout(std::time::Duration, &'static str),
}
