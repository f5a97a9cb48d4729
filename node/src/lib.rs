//! Tandem's server side (see `../shared/DESIGN.md`, request flow steps 1–7):
//!
//! - [`config`]: the node's TOML config, validated before any port is bound.
//! - [`node`]: the stateless compute node (`tandem-node serve`): opens sealed requests, runs the
//!   shared model stack, streams sealed chunks ending in a receipt.
//! - [`gateway`]: the fleet gateway (`tandem-node gateway`): discovery and forwarding of sealed
//!   bytes; it holds no key that opens anything.
//! - [`dev`]: the one-command local fleet (`tandem-node dev`).

pub mod config;
pub mod dev;
pub mod gateway;
pub mod node;
