//! `tandem-log`: the transparency log's I/O. The verifying code (RFC 9162 proofs, C2SP
//! checkpoints, signed notes, tiles) is pure and lives in `tandem_attest::log`; this crate moves
//! its bytes.
//!
//! - [`http`]: [`LogClient`], the one HTTP client of a log (tlog-tiles reads, proofs built from
//!   tiles, `POST /add`), shared by node start-up, the device, the fleet tools and the `attest`
//!   CLI. Nothing it fetches is trusted until a `tandem_attest::log` function has checked it.
//! - [`store`] (feature `server`): the log's durable files, with group commit.
//! - [`server`] (feature `server`): its HTTP API, run by `attest log serve` and, in-process, by
//!   `tandem-fleet dev` and the end-to-end tests.
//! - [`witness`] (feature `server`): the log's side of C2SP tlog-witness, submitting each new
//!   checkpoint to witnesses and collecting their cosignatures.

pub mod http;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod witness;

pub use http::{
    FetchError, LogClient, MAX_APPEND_ANSWER_BYTES, MAX_CHECKPOINT_BYTES, MAX_ENTRY_BUNDLE_BYTES,
    MAX_HASH_TILE_BYTES, max_response_bytes,
};
