//! Every way a request can fail, and the one mapping to gRPC status codes.
//!
//! | failure | code |
//! |---|---|
//! | malformed sealed request, body, or digests that disagree with the header | `INVALID_ARGUMENT` |
//! | sealed to no key this node holds (expired or rotated away, or another node's) | `FAILED_PRECONDITION` |
//! | a wrapping carries our key id but does not open | `FAILED_PRECONDITION` |
//! | request id seen before | `ALREADY_EXISTS` |
//! | created too long ago or too far ahead (clock) | `FAILED_PRECONDITION` |
//! | prompt larger than `limits.max_prompt_bytes`, replay guard full, queue full | `RESOURCE_EXHAUSTED` |
//! | `max_new_tokens` above the limit, prompt + new tokens beyond the context | `OUT_OF_RANGE` |
//! | model or adapter digest not served by this node | `NOT_FOUND` |
//! | deadline passed while queued or generating | `DEADLINE_EXCEEDED` |
//! | node draining (SIGTERM) | `UNAVAILABLE` |
//! | model failure | `INTERNAL` |
//!
//! Before the response head these become a `tonic::Status` that the gateway can read, so it
//! carries only the code and a fixed message per code ([`Failure::public_message`]): the
//! gateway fails over on the code, and learns no size, limit, key id or digest. Once the
//! request is opened, the detail (`NodeError{code, message}`, the [`Failure`]'s `Display`) is
//! also sealed to the device as a sealed status in the status metadata
//! ([`tandem_proto::SEALED_STATUS_METADATA`]); a failure before opening has no one to seal to
//! and only the code. After the head, failures are a sealed `NodeError` final chunk with the
//! same code number. Messages name sizes, ids and digests only — never prompt or output text.

use prost::Message as _;
use tandem_proto::{MAX_STATUS_DETAIL_LEN, Responder};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// The sealed request or its body is malformed.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// No live key of this node is among the recipients.
    #[error(
        "the request is sealed to key ids {sealed_to:?} but this node's live keys are {live:?}: \
         the key expired or rotated away, or the request is for another node; fetch a fresh \
         attestation"
    )]
    NoLiveKey {
        /// Key ids in the request.
        sealed_to: Vec<u8>,
        /// This node's live key ids.
        live: Vec<u8>,
    },
    /// A wrapping with our key id did not open.
    #[error("{0}")]
    WrongKey(String),
    /// Replayed request id.
    #[error("{0}")]
    Replayed(String),
    /// Creation time outside the window.
    #[error("{0}")]
    Stale(String),
    /// Prompt too large.
    #[error("prompt is {len} bytes; this node accepts at most {max}")]
    PromptTooLarge {
        /// Prompt bytes.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Too many new tokens asked for.
    #[error("max_new_tokens {asked} is above this node's limit of {max}")]
    TooManyTokens {
        /// Asked.
        asked: u32,
        /// Limit.
        max: u32,
    },
    /// Prompt plus new tokens do not fit the model's context.
    #[error("{prompt} prompt tokens + {new} new tokens exceed the model's context of {context}")]
    ContextTooLong {
        /// Prompt tokens.
        prompt: usize,
        /// New tokens asked.
        new: u32,
        /// Context length.
        context: usize,
    },
    /// Model not served.
    #[error("model {0} is not served by this node")]
    UnknownModel(String),
    /// Adapter not served (for that model).
    #[error("adapter {adapter} is not served for model {model} by this node")]
    UnknownAdapter {
        /// Adapter digest.
        adapter: String,
        /// Model digest.
        model: String,
    },
    /// Capacity exhausted (queue or replay guard).
    #[error("{0}")]
    Busy(String),
    /// Deadline passed.
    #[error("deadline of {0} s passed")]
    Deadline(u64),
    /// Draining for shutdown.
    #[error("node is shutting down; retry on another node")]
    Draining,
    /// Model or internal failure (message has no request content).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Failure {
    /// The gRPC code (the table in the module docs).
    pub fn code(&self) -> Code {
        match self {
            Failure::Malformed(_) => Code::InvalidArgument,
            Failure::NoLiveKey { .. } | Failure::WrongKey(_) | Failure::Stale(_) => {
                Code::FailedPrecondition
            }
            Failure::Replayed(_) => Code::AlreadyExists,
            Failure::PromptTooLarge { .. } | Failure::Busy(_) => Code::ResourceExhausted,
            Failure::TooManyTokens { .. } | Failure::ContextTooLong { .. } => Code::OutOfRange,
            Failure::UnknownModel(_) | Failure::UnknownAdapter { .. } => Code::NotFound,
            Failure::Deadline(_) => Code::DeadlineExceeded,
            Failure::Draining => Code::Unavailable,
            Failure::Internal(_) => Code::Internal,
        }
    }

    /// Short machine name for log events.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Malformed(_) => "malformed",
            Failure::NoLiveKey { .. } => "no_live_key",
            Failure::WrongKey(_) => "wrong_key",
            Failure::Replayed(_) => "replayed",
            Failure::Stale(_) => "stale",
            Failure::PromptTooLarge { .. } => "prompt_too_large",
            Failure::TooManyTokens { .. } => "too_many_tokens",
            Failure::ContextTooLong { .. } => "context_too_long",
            Failure::UnknownModel(_) => "unknown_model",
            Failure::UnknownAdapter { .. } => "unknown_adapter",
            Failure::Busy(_) => "busy",
            Failure::Deadline(_) => "deadline",
            Failure::Draining => "draining",
            Failure::Internal(_) => "internal",
        }
    }

    /// The message of the gRPC status the gateway relays: fixed per code, no number, id or
    /// digest of the request or of this node.
    pub fn public_message(&self) -> &'static str {
        match self.code() {
            Code::InvalidArgument => "the node refused the request as malformed",
            Code::FailedPrecondition => {
                "the node cannot take this request: its key expired or rotated away, the \
                 request is for another node, or it was sealed too long ago; fetch a fresh \
                 attestation and seal again"
            }
            Code::AlreadyExists => "the node has seen this request id before; seal it again",
            Code::ResourceExhausted => "the node is at capacity or the request is too large for it",
            Code::OutOfRange => "the request asks for more tokens than the node allows",
            Code::NotFound => "the node does not serve the requested model or adapter",
            Code::DeadlineExceeded => "the node's deadline passed before generation started",
            Code::Unavailable => "the node is shutting down; retry on another node",
            _ => "the node failed",
        }
    }

    /// As a gRPC status (before the response head): the code and [`Failure::public_message`];
    /// with the opened request's `responder`, the detail sealed to the device under
    /// [`tandem_proto::SEALED_STATUS_METADATA`].
    pub fn to_status(&self, responder: Option<Responder>) -> Status {
        let mut metadata = MetadataMap::new();
        if let Some(sealed) = responder.and_then(|r| r.seal_status(&self.detail()).ok()) {
            metadata.insert_bin(
                tandem_proto::SEALED_STATUS_METADATA,
                MetadataValue::from_bytes(&sealed),
            );
        }
        Status::with_metadata(self.code(), self.public_message(), metadata)
    }

    /// The sealed detail: `NodeError{code, message}`, the message cut (at a character
    /// boundary) to fit a sealed status.
    fn detail(&self) -> Vec<u8> {
        let mut message = self.to_string();
        // Room for the two fields' tags, lengths and the code varint.
        let max = MAX_STATUS_DETAIL_LEN - 16;
        if message.len() > max {
            let mut cut = max;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        tandem_proto::v1::NodeError {
            code: self.code() as u32,
            message,
        }
        .encode_to_vec()
    }

    /// From a `tandem-proto` error while opening a request. These messages carry lengths, ids
    /// and field names, never plaintext.
    pub fn from_proto(e: tandem_proto::Error) -> Failure {
        use tandem_proto::{Error as E, ReplayError, RequestError};
        match e {
            E::Replay(ReplayError::Replayed { .. }) => Failure::Replayed(e.to_string()),
            E::Replay(ReplayError::Full { .. }) => Failure::Busy(e.to_string()),
            E::Replay(_) => Failure::Stale(e.to_string()),
            E::Request(RequestError::NoWrappingForKey { .. })
            | E::Request(RequestError::WrappingOpen { .. })
            | E::Request(RequestError::SuiteNotOffered { .. }) => Failure::WrongKey(e.to_string()),
            E::Misuse(_) | E::Crypto(_) => Failure::Internal(e.to_string()),
            _ => Failure::Malformed(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_table() {
        let cases = [
            (Failure::Malformed("x".into()), Code::InvalidArgument),
            (
                Failure::NoLiveKey {
                    sealed_to: vec![1],
                    live: vec![2],
                },
                Code::FailedPrecondition,
            ),
            (Failure::Replayed("x".into()), Code::AlreadyExists),
            (
                Failure::PromptTooLarge { len: 2, max: 1 },
                Code::ResourceExhausted,
            ),
            (
                Failure::TooManyTokens { asked: 2, max: 1 },
                Code::OutOfRange,
            ),
            (Failure::UnknownModel("m".into()), Code::NotFound),
            (Failure::Busy("queue".into()), Code::ResourceExhausted),
            (Failure::Deadline(1), Code::DeadlineExceeded),
            (Failure::Draining, Code::Unavailable),
        ];
        for (f, c) in cases {
            assert_eq!(f.code(), c, "{f:?}");
            assert_eq!(f.to_status(None).code(), c);
        }
    }

    /// What the gateway can read names no number; the device opens the detail.
    #[test]
    fn the_status_says_only_the_code_and_the_detail_is_sealed() {
        use tandem_proto::{Limits, NodeKey, RoutingMetadata, SealOptions, SizeBucket, Suite};
        let node = NodeKey::generate(3, &Suite::ALL).expect("key");
        let routing = RoutingMetadata {
            model_id: "m".into(),
            adapter_id: String::new(),
            size_bucket: SizeBucket(0),
        };
        let (sealed, ctx) = tandem_proto::seal_request(
            &[node.config().clone()],
            &routing,
            1,
            b"q",
            &SealOptions::default(),
        )
        .expect("seal");
        let opened = tandem_proto::open_request(&node, &sealed, &Limits::default()).expect("open");
        let f = Failure::ContextTooLong {
            prompt: 1237,
            new: 211,
            context: 256,
        };
        let status = f.to_status(Some(opened.responder));
        assert_eq!(status.code(), Code::OutOfRange);
        assert!(!status.message().contains("1237") && !status.message().contains("211"));
        let bytes = status
            .metadata()
            .get_bin(tandem_proto::SEALED_STATUS_METADATA)
            .expect("sealed status attached")
            .to_bytes()
            .expect("binary metadata");
        let detail = ctx.open_status(&bytes).expect("opens");
        let e = tandem_proto::v1::NodeError::decode(&detail[..]).expect("NodeError");
        assert_eq!(e.code, Code::OutOfRange as u32);
        assert_eq!(e.message, f.to_string());
        assert!(e.message.contains("1237 prompt tokens + 211 new tokens"));
        // A long message is cut to fit, never refused.
        let long = Failure::Internal("é".repeat(400));
        let (sealed, _) = tandem_proto::seal_request(
            &[node.config().clone()],
            &routing,
            1,
            b"q",
            &SealOptions::default(),
        )
        .expect("seal");
        let opened = tandem_proto::open_request(&node, &sealed, &Limits::default()).expect("open");
        assert!(
            long.to_status(Some(opened.responder))
                .metadata()
                .get_bin(tandem_proto::SEALED_STATUS_METADATA)
                .is_some()
        );
    }
}
