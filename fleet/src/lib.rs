//! `tandem-fleet`: tools for whoever runs a fleet (operators) or develops against one.
//!
//! - [`dev`]: the one-command local fleet (`tandem-fleet dev`): log, signed release, N
//!   `tandem-node serve` processes and a gateway on loopback, and the device config to use them.
//!
//! The fleet CA (`tandem-fleet ca …`) is a thin command over `tandem_attest::evidence::FleetCa`
//! and `tandem_node::node::identity`.

pub mod dev;
