//! SHA-256 digests (`sha256:<hex>`): the workspace's one digest type, from `tandem-digest`.

pub use tandem_digest::{DigestParseError, Sha256Digest};
