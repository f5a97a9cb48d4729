//! Tandem's device side: the client SDK app developers call, and the `tandem` CLI.
//!
//! One call generates text; Tandem decides whether it runs on the device or on a verified node
//! and says why:
//!
//! ```no_run
//! # async fn demo() -> Result<(), tandem_device::Error> {
//! use tandem_device::{Client, Config, Event, GenerateRequest};
//!
//! let client = Client::new(Config::default())?; // the embedded device model, local only
//! let mut events = client.generate(GenerateRequest::new("The king said"));
//! while let Some(ev) = events.next().await {
//!     match ev? {
//!         Event::Text { text, .. } => print!("{text}"),
//!         Event::Fallback { reason } => eprintln!("[falling back: {reason}]"),
//!         Event::Done(s) => println!("\n[ran {} because {}]", s.route, s.reason),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Local generation runs candle on the CPU. Set `RAYON_NUM_THREADS` before the app starts
//! threads (or call `tandem_model::default_thread_count()` first thing in `main`, as the
//! `tandem` binary does): without it candle re-reads `/proc/cpuinfo` on every matmul and local
//! generation is 2–4× slower (BENCHMARKS.md, "tandem-node serve").
//!
//! - [`config`]: the device config (models, gateway, trust policy, routing, timeouts).
//! - [`models`]: model and adapter pins (content and per-file digests).
//! - [`router`]: the local-first routing decision.
//! - [`local`]: the local engine (the shared model stack, f32, same sampling as nodes).
//! - [`checkpoints`]: the newest log checkpoint the device has verified; every node's must be
//!   consistent with it.
//! - [`remote`]: discover → verify → seal → submit → open → check the receipt.
//! - [`client`]: [`Client`] and the event stream.
//! - [`daemon_client`]: a thin client for the device daemon (`tandem serve`) over its Unix
//!   socket or loopback TCP, for apps that share the device's one daemon.

pub mod checkpoints;
pub mod client;
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod daemon_client;
pub mod error;
pub mod local;
pub mod models;
pub mod prompt;
pub mod remote;
pub mod router;

pub use client::{Client, Event, EventStream, GenerateRequest, Summary};
pub use config::Config;
pub use error::{ConfigError, Error, RemoteError};
pub use models::{ModelChoice, ModelPin};
pub use remote::VerifiedReceipt;
pub use router::{Decision, Route, RouteChoice};
