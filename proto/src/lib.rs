//! Tandem's wire protocol: the gRPC schema and the sealed-message format.
//!
//! - [`key_config`]: node HPKE key configurations, encoded exactly as RFC 9458 §3 so standard
//!   Oblivious HTTP software can read them.
//! - [`request`]: requests sealed to 1–16 recipients: a fresh data key encrypts the body once,
//!   and is HPKE-wrapped (RFC 9180 base mode) to each recipient.
//! - [`response`]: responses keyed from the opening recipient's HPKE export secret, bound to
//!   the request (in the manner of RFC 9458 §4.4).
//! - [`stream`]: the chunked AEAD both directions use (sequence-numbered nonces, explicit
//!   final chunk).
//! - [`replay`]: the node's replay guard.
//! - [`v1`]: the generated gRPC messages (always) and stubs (features `client`, `server`).
//!
//! Features: by default only the prost message types of [`v1`] are generated, so the format
//! and the messages build without tonic. `client` adds the tonic client stubs (the device),
//! `server` adds the server traits (node and gateway); enable both for in-process tests.
//!
//! Everything here is sans-IO: bytes in, bytes out; the caller passes clocks and RNGs. Each
//! function that draws randomness has a `*_with_rng` twin; the plain form uses the operating
//! system's RNG.
//!
//! ```
//! use tandem_proto::{open_request, seal_request, Limits, NodeKey, RoutingMetadata, SealOptions, Suite, SizeBucket};
//!
//! let node = NodeKey::generate(1, &Suite::ALL)?;
//! let routing = RoutingMetadata {
//!     model_id: "tandem-base".into(),
//!     adapter_id: String::new(),
//!     size_bucket: SizeBucket::for_len(5),
//! };
//! let opts = SealOptions::default();
//! let (sealed, ctx) = seal_request(&[node.config().clone()], &routing, 1_700_000_000, b"hello", &opts)?;
//!
//! let opened = open_request(&node, &sealed, &opts.limits)?;
//! assert_eq!(&opened.body[..], b"hello");
//! let (head, sealer) = opened.responder.start(Limits::default());
//! let chunk = sealer.seal_final(b"hi there")?;
//!
//! let mut opener = ctx.open_head(&head, Limits::default())?;
//! assert_eq!(opener.open(&chunk)?.data, b"hi there");
//! opener.finish()?;
//! # Ok::<(), tandem_proto::Error>(())
//! ```

mod cipher;
mod codec;
pub mod error;
#[cfg(any(feature = "client", feature = "server"))]
pub mod grpc_codec;
pub mod key_config;
pub mod replay;
pub mod request;
pub mod response;
pub mod stream;

/// Generated gRPC code for package `tandem.v1` (from `proto/tandem/v1/*.proto`).
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/tandem.v1.rs"));
}

pub use error::{
    Error, KeyConfigError, MisuseError, ReplayError, RequestError, ResponseError, StreamError,
};
/// The `rand_core` version the `*_with_rng` functions take (the one `hpke` uses).
pub use hpke::rand_core;
pub use key_config::{AeadId, KdfId, KemId, KeyConfig, NodeKey, Suite, SymmetricAlgorithm};
pub use replay::{ReplayConfig, ReplayGuard};
pub use request::{
    MAX_RECIPIENTS, OpenedRequest, RequestHeader, RequestId, RoutingMetadata, SealOptions,
    SealedRequest, SizeBucket, open_request, seal_request, seal_request_with_rng,
};
pub use response::{
    MAX_STATUS_DETAIL_LEN, Responder, ResponseContext, ResponseHead, SEALED_STATUS_LEN,
};
pub use stream::{ChunkOpener, ChunkRef, ChunkSealer, Limits, OpenedChunk};

/// The gRPC metadata key (binary) of a node's sealed status: when a node refuses a request it
/// has opened, its `tonic::Status` carries a code, a generic message and, under this key, the
/// [`Responder::seal_status`] bytes with the detail, which only the device can open
/// ([`ResponseContext::open_status`]). The gateway relays the code, the message and this one
/// entry.
pub const SEALED_STATUS_METADATA: &str = "tandem-sealed-status-bin";

/// The operating system's RNG. Panics only if the OS cannot supply randomness, which no input
/// can cause.
pub(crate) fn os_rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}
