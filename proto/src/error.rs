//! The crate's one error type, [`Error`], built from one sub-enum per area.
//!
//! Errors caused by untrusted input (a malformed or tampered message) are kept apart from
//! caller misuse ([`MisuseError`]); each message says what failed and what to check.

use crate::codec::Short;

/// Every error `tandem-proto` returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key configuration (RFC 9458 §3) could not be decoded or used.
    #[error(transparent)]
    KeyConfig(#[from] KeyConfigError),
    /// A sealed request was malformed, or is not for this node.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// A chunk stream (request body or response) was malformed, tampered, cut or reordered.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A response head was malformed or does not belong to the request.
    #[error(transparent)]
    Response(#[from] ResponseError),
    /// The replay guard rejected a request.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// The caller used the API in a way it does not allow (not caused by received bytes).
    #[error(transparent)]
    Misuse(#[from] MisuseError),
    /// The cryptographic library refused an operation that cannot fail for valid inputs.
    #[error("cryptographic operation failed unexpectedly: {0}; this is a bug in tandem-proto")]
    Crypto(&'static str),
}

impl Error {
    /// Whether the error was caused by received bytes (as opposed to caller misuse).
    pub fn is_untrusted_input(&self) -> bool {
        !matches!(self, Error::Misuse(_) | Error::Crypto(_))
    }
}

/// A sealed request was malformed, or is not for this node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The input ended inside a field.
    #[error(
        "sealed request truncated: field `{field}` needs {needed} bytes but only {available} remain"
    )]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the input.
        available: usize,
    },
    /// The protocol version byte is not one this build speaks.
    #[error("sealed request has protocol version {0}; this build speaks version 1")]
    UnsupportedVersion(u8),
    /// The header names an HPKE suite Tandem does not implement.
    #[error(
        "sealed request uses HPKE suite kem={kem:#06x} kdf={kdf:#06x} aead={aead:#06x}, which Tandem does not implement"
    )]
    UnsupportedSuite {
        /// KEM id.
        kem: u16,
        /// KDF id.
        kdf: u16,
        /// AEAD id.
        aead: u16,
    },
    /// The node's key config does not offer the request's suite.
    #[error("sealed request uses suite {suite}, which key {key_id} does not offer")]
    SuiteNotOffered {
        /// This node's key id.
        key_id: u8,
        /// The request's suite.
        suite: crate::key_config::Suite,
    },
    /// The recipient count is outside 1..=16.
    #[error("sealed request names {0} recipients; 1 to 16 are allowed")]
    RecipientCount(usize),
    /// A routing metadata field is invalid.
    #[error("sealed request routing metadata field `{field}` is invalid: {reason}")]
    InvalidMetadata {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No recipient entry carries this node's key id.
    #[error(
        "sealed request has no wrapping for key id {key_id}; it was sealed to other nodes          (did the gateway route it to the wrong node, or has this node's key rotated?)"
    )]
    NoWrappingForKey {
        /// This node's key id.
        key_id: u8,
    },
    /// Entries carry this node's key id but none opens with its private key.
    #[error(
        "no wrapping with key id {key_id} opens with this node's private key: the request was          sealed to a different key with the same id, or its header or wrapping was altered"
    )]
    WrappingOpen {
        /// This node's key id.
        key_id: u8,
    },
    /// A body chunk's length prefix is larger than any chunk the limits allow.
    #[error("sealed request body chunk {index} declares {len} bytes; at most {max} are allowed")]
    BodyChunkLength {
        /// Index of the chunk in the body.
        index: usize,
        /// Declared framed length.
        len: usize,
        /// Largest framed chunk the limits allow.
        max: usize,
    },
}

impl From<Short> for RequestError {
    fn from(s: Short) -> Self {
        Self::Truncated {
            field: s.field,
            needed: s.needed,
            available: s.available,
        }
    }
}

/// A chunk stream was malformed, tampered with, cut short or reordered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The chunk is shorter than its header and tag.
    #[error("chunk truncated: field `{field}` needs {needed} bytes but only {available} remain")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the input.
        available: usize,
    },
    /// Flag bits other than the final-chunk bit are set.
    #[error("chunk {seq} has unknown flag bits {flags:#04x}")]
    UnknownFlags {
        /// Sequence number in the chunk header.
        seq: u32,
        /// The flags byte.
        flags: u8,
    },
    /// A chunk carries more plaintext than the chunk limit.
    #[error("chunk of {len} bytes exceeds the chunk limit of {max} bytes")]
    ChunkTooLarge {
        /// Plaintext length of the chunk.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream's plaintext so far exceeds the message limit.
    #[error("message of at least {len} bytes exceeds the message limit of {max} bytes")]
    MessageTooLarge {
        /// Plaintext length so far.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A chunk with an already-seen sequence number arrived again.
    #[error("chunk {seq} arrived twice (duplicated or replayed chunk)")]
    Duplicate {
        /// Its sequence number.
        seq: u32,
    },
    /// A later chunk arrived before the expected one: chunks were dropped or reordered.
    #[error("expected chunk {expected} but got chunk {got}: chunks were dropped or reordered")]
    Missing {
        /// The next sequence number expected.
        expected: u32,
        /// The one received.
        got: u32,
    },
    /// The chunk did not authenticate: altered, or from another stream.
    #[error("chunk {seq} failed authentication: it was altered, or spliced in from another stream")]
    Authentication {
        /// Its sequence number.
        seq: u32,
    },
    /// A chunk arrived after the final chunk.
    #[error("chunk {seq} arrived after the final chunk")]
    AfterFinal {
        /// Its sequence number.
        seq: u32,
    },
    /// The stream ended without a final chunk: it was truncated.
    #[error("stream ended after {received} chunks without a final chunk: it was truncated")]
    MissingFinal {
        /// Chunks received.
        received: u32,
    },
}

impl From<Short> for StreamError {
    fn from(s: Short) -> Self {
        Self::Truncated {
            field: s.field,
            needed: s.needed,
            available: s.available,
        }
    }
}

/// A response head was malformed or does not belong to the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseError {
    /// The input ended inside a field.
    #[error(
        "response head truncated: field `{field}` needs {needed} bytes but only {available} remain"
    )]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the input.
        available: usize,
    },
    /// Bytes follow the response head.
    #[error("{0} unexpected bytes after the response head")]
    TrailingBytes(usize),
    /// The protocol version byte is not one this build speaks.
    #[error("response head has protocol version {0}; this build speaks version 1")]
    UnsupportedVersion(u8),
    /// The head names a recipient the request was not sealed to.
    #[error("response head names recipient {index}, but the request had {count} recipients")]
    UnknownRecipient {
        /// Index in the head.
        index: u8,
        /// Recipients in the request.
        count: usize,
    },
    /// The head's binding tag does not match: wrong request, or altered head.
    #[error(
        "response head does not belong to this request: it answers another request, or the head          was altered in transit"
    )]
    WrongRequest,
    /// A sealed status is not the one fixed length every sealed status has.
    #[error(
        "sealed status is {len} bytes; every sealed status is {expected} bytes (head, one final \
         chunk of a padded detail): it was cut or extended in transit"
    )]
    StatusLength {
        /// Bytes received.
        len: usize,
        /// The fixed length.
        expected: usize,
    },
    /// A sealed status's chunk is not marked final.
    #[error("sealed status chunk is not marked final: it is not a sealed status")]
    StatusNotFinal,
    /// A sealed status opened, but its padding is malformed (the node that sealed it is faulty).
    #[error(
        "sealed status detail declares {len} bytes but at most {max} fit, or its padding is not \
         zero: the node sealed a malformed status"
    )]
    StatusPadding {
        /// Declared detail length.
        len: usize,
        /// Most detail bytes a sealed status holds.
        max: usize,
    },
}

impl From<Short> for ResponseError {
    fn from(s: Short) -> Self {
        Self::Truncated {
            field: s.field,
            needed: s.needed,
            available: s.available,
        }
    }
}

/// The replay guard rejected a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The request id was already accepted.
    #[error("request {request_id} was already seen: replayed request")]
    Replayed {
        /// Hex of the request id.
        request_id: String,
    },
    /// The creation time is older than the window.
    #[error(
        "request created at {created_at} is older than the {window_secs} s window (now {now});          replayed, or the device clock is behind"
    )]
    TooOld {
        /// Creation time in the header (Unix seconds).
        created_at: u64,
        /// The node's time.
        now: u64,
        /// The window.
        window_secs: u64,
    },
    /// The creation time is further in the future than the allowed clock skew.
    #[error(
        "request created at {created_at} is more than {max_skew_secs} s ahead of now ({now});          is the device clock ahead?"
    )]
    FromFuture {
        /// Creation time in the header (Unix seconds).
        created_at: u64,
        /// The node's time.
        now: u64,
        /// The allowed skew.
        max_skew_secs: u64,
    },
    /// The guard holds as many request ids as its memory bound allows.
    #[error(
        "replay guard is full ({capacity} request ids inside the window); rejecting rather than          forgetting ids; raise the capacity or shorten the window"
    )]
    Full {
        /// The configured capacity.
        capacity: usize,
    },
}

/// A key configuration or `application/ohttp-keys` list was malformed or unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyConfigError {
    /// The input ended inside a field.
    #[error(
        "key config truncated: field `{field}` needs {needed} bytes but only {available} remain; \
         was the config copied whole?"
    )]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the input.
        available: usize,
    },
    /// The KEM is not one Tandem implements (only DHKEM(X25519, HKDF-SHA256), 0x0020).
    #[error(
        "key config uses HPKE KEM {0:#06x}; Tandem supports only DHKEM(X25519, HKDF-SHA256) (0x0020)"
    )]
    UnsupportedKem(u16),
    /// The symmetric algorithm list length is not a non-zero multiple of 4 (RFC 9458 §3).
    #[error(
        "key config symmetric algorithm list is {0} bytes; RFC 9458 §3 requires a non-zero multiple of 4 (at most 65532)"
    )]
    SymmetricListLength(usize),
    /// Bytes were left after a single key config.
    #[error("{0} unexpected bytes after the key config; a single config was expected, not a list")]
    TrailingBytes(usize),
    /// In the `application/ohttp-keys` list form, a length prefix did not match the config it framed.
    #[error(
        "ohttp-keys entry {index} declares {declared} bytes but its key config is {parsed} bytes"
    )]
    ListEntryLength {
        /// Position of the entry in the list.
        index: usize,
        /// Length in the 2-byte prefix.
        declared: usize,
        /// Length of the key config found in it.
        parsed: usize,
    },
    /// The config lists no symmetric algorithm pair this implementation supports.
    #[error(
        "key config {key_id} offers no supported HPKE suite; Tandem needs HKDF-SHA256 (0x0001) with \
         AES-128-GCM (0x0001) or ChaCha20-Poly1305 (0x0003)"
    )]
    NoSupportedSuite {
        /// The config's key id.
        key_id: u8,
    },
    /// The public key is not a valid key for the KEM.
    #[error("key config {key_id} holds a public key that is not a valid X25519 key")]
    InvalidPublicKey {
        /// The config's key id.
        key_id: u8,
    },
    /// The config does not list the suite that was asked for.
    #[error("key config {key_id} does not offer the requested suite {suite}")]
    SuiteNotOffered {
        /// The config's key id.
        key_id: u8,
        /// The suite asked for.
        suite: crate::key_config::Suite,
    },
}

impl From<Short> for KeyConfigError {
    fn from(s: Short) -> Self {
        Self::Truncated {
            field: s.field,
            needed: s.needed,
            available: s.available,
        }
    }
}

/// The caller asked for something the API does not allow. Never caused by received bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MisuseError {
    /// A key config needs at least one symmetric algorithm and at most 16383.
    #[error("a key config needs between 1 and 16383 symmetric algorithms, got {0}")]
    SymmetricAlgorithmCount(usize),
    /// A chunk larger than the stream's chunk limit was given to seal.
    #[error("cannot seal a chunk of {len} bytes: the chunk limit is {max}")]
    ChunkTooLarge {
        /// Plaintext length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Sealing would exceed the stream's message limit.
    #[error("cannot seal {len} bytes: the message limit is {max}")]
    MessageTooLarge {
        /// Plaintext length including this chunk.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream used up its 2^32 sequence numbers.
    #[error("stream sequence numbers exhausted (2^32 chunks); start a new stream")]
    SequenceExhausted,
    /// Requests go to 1..=16 recipients.
    #[error("a request goes to 1 to 16 recipients, got {0}")]
    RecipientCount(usize),
    /// A routing metadata field cannot be encoded.
    #[error("routing metadata field `{field}` is invalid: {reason}")]
    InvalidMetadata {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The replay guard was configured with a zero capacity.
    #[error("a replay guard needs a capacity of at least 1")]
    ZeroCapacity,
    /// A private key had the wrong length.
    #[error("an X25519 private key is 32 bytes, got {0}")]
    PrivateKeyLength(usize),
}
