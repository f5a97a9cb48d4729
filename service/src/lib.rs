//! `tandem-service`: the few things every Tandem program does the same way, in one place.
//!
//! - [`Clock`] / [`SystemClock`] / [`unix_now`]: the one clock (Unix seconds). Libraries that
//!   must not read a clock take a `now` argument or a `&dyn Clock`; programs pass
//!   [`SystemClock`], tests pass their own.
//! - [`shutdown_signal`]: resolves on SIGTERM or Ctrl-C; every server drains on it.
//! - [`emit_json_line`]: one structured log event as one JSON object per line on stderr. Each
//!   program keeps its own typed, allow-listed event enum and renders it through this.
//!
//! This crate links no model, crypto or protocol code, so the gateway, node, fleet tooling and
//! device can all use it.

use std::io::Write as _;

/// A source of the current time in seconds since the Unix epoch, injectable for tests.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Now, in Unix seconds.
    fn now(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        unix_now()
    }
}

/// Seconds since the Unix epoch by the system clock (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Resolves on SIGTERM or Ctrl-C (Ctrl-C only where there are no Unix signals).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Writes `{"event": event, …fields}` as one line on stderr. `fields` that is not a JSON object
/// is ignored (events carry named fields only).
pub fn emit_json_line(event: &str, fields: serde_json::Value) {
    let mut obj = serde_json::Map::new();
    obj.insert("event".into(), event.into());
    if let serde_json::Value::Object(m) = fields {
        obj.extend(m);
    }
    let line = serde_json::Value::Object(obj).to_string();
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{line}");
}

/// A multi-threaded Tokio runtime with `workers` worker threads and every driver enabled: what
/// each Tandem server runs on.
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_after_2025() {
        assert!(
            SystemClock.now() > 1_735_689_600,
            "clock {}",
            SystemClock.now()
        );
    }
}
