//! `tandem-node`: the stateless compute node (see `../shared/DESIGN.md`, request flow steps 5–7).
//!
//! - [`config`]: the node's TOML config, validated before any port is bound.
//! - [`node`]: the node itself (`tandem-node serve`): opens sealed requests, runs the shared
//!   model stack, streams sealed chunks ending in a receipt.
//! - [`zeroing`]: the binary's global allocator, which zeroes every block before freeing it.
//!
//! The gateway is `tandem-gateway`; the dev fleet and the fleet CA are `tandem-fleet`.

pub mod config;
pub mod node;
pub mod zeroing;
