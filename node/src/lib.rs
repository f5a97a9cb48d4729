//! `tandem-node`: the stateless compute node (see `../shared/DESIGN.md`, request flow steps 5–7).
//!
//! - [`config`]: the node's TOML config, validated before any port is bound.
//! - [`node`]: the node itself (`tandem-node serve`): opens sealed requests, runs the shared
//!   model stack, streams sealed chunks ending in a receipt.
//!
//! The gateway is `tandem-gateway`; the dev fleet and the fleet CA are `tandem-fleet`.

pub mod config;
pub mod node;
