//! The one harness of Tandem's end-to-end tests (`tests/*.rs`) and fleet benches
//! (`tests/benches/`): every test here runs real programs or real servers on loopback sockets.
//!
//! - [`bins`]: the workspace's executables (`tandem-node`, `tandem-gateway`, `tandem-fleet`).
//! - [`node`]: one node's files (config, identity, a signed release measuring the node binary),
//!   the transparency log they are logged in (the library's own log server,
//!   `tandem_attest::log::server`), and a sealing client speaking to a node directly.
//! - [`fleet`]: `tandem-fleet dev` as a child process, candidates verified with the policy it
//!   wrote, sealed requests through its gateway.
//! - [`device`]: the same fleet seen through the device SDK (`tandem_device::Client`).
//! - [`procs`]: fleet programs as child processes (ready lines, stderr kept) and a real DNS
//!   server (`dnsmasq`), for the multi-host tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

pub mod bins;
pub mod daemon;
pub mod device;
pub mod fleet;
pub mod node;
pub mod procs;
pub mod real_model;

pub use tandem_service::unix_now as now;
