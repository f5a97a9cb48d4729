//! Replay protection for a node: each request id is accepted once, and only requests created
//! within a time window are accepted at all.
//!
//! A node keeps one [`ReplayGuard`] per HPKE key and drops it with the key. An id is
//! remembered until its creation time leaves the window; after that the time check alone
//! rejects it, so a replay is rejected for the whole key lifetime.
//!
//! **Memory bound.** At most `capacity` ids are held. Each costs one `HashSet` entry and one
//! `BTreeSet` entry of 16 + 8 bytes plus container overhead: about 100 bytes, so the default
//! capacity of 1,048,576 ids is about 100 MiB at worst. When the guard is full (that many
//! requests inside one window) it rejects new requests with [`ReplayError::Full`] rather than
//! forget an id, which would let that request be replayed.

use std::collections::{BTreeSet, HashSet};

use crate::error::{Error, MisuseError, ReplayError};
use crate::request::{RequestHeader, RequestId};

/// Replay guard settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayConfig {
    /// Oldest accepted creation time, as seconds before now. Keep it at most the key lifetime.
    pub window_secs: u64,
    /// Newest accepted creation time, as seconds after now (allowed device clock skew).
    pub max_skew_secs: u64,
    /// Most request ids held at once.
    pub capacity: usize,
}

impl Default for ReplayConfig {
    /// A 5-minute window, 60 s of clock skew, 1,048,576 ids.
    fn default() -> Self {
        ReplayConfig {
            window_secs: 300,
            max_skew_secs: 60,
            capacity: 1 << 20,
        }
    }
}

/// Rejects replayed or stale requests. See the module docs for the memory bound.
#[derive(Debug)]
pub struct ReplayGuard {
    config: ReplayConfig,
    seen: HashSet<RequestId>,
    by_time: BTreeSet<(u64, RequestId)>,
    /// Oldest creation time still accepted. Never moves back, even if the clock does, so an
    /// evicted id can never pass the time check again.
    floor: u64,
}

impl ReplayGuard {
    /// A guard with `config`; a zero capacity is misuse.
    pub fn new(config: ReplayConfig) -> Result<ReplayGuard, Error> {
        if config.capacity == 0 {
            return Err(MisuseError::ZeroCapacity.into());
        }
        Ok(ReplayGuard {
            config,
            seen: HashSet::new(),
            by_time: BTreeSet::new(),
            floor: 0,
        })
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Checks a request's header at time `now` (Unix seconds, the node's clock) and records
    /// its id. Checks, in order:
    /// 1. the creation time is not older than the window,
    /// 2. nor further ahead than the allowed skew,
    /// 3. the id was not seen before,
    /// 4. there is room to remember it.
    pub fn check(&mut self, header: &RequestHeader, now: u64) -> Result<(), Error> {
        self.check_id(header.request_id, header.created_at, now)
    }

    /// [`ReplayGuard::check`] on the raw fields.
    pub fn check_id(&mut self, id: RequestId, created_at: u64, now: u64) -> Result<(), Error> {
        self.floor = self.floor.max(now.saturating_sub(self.config.window_secs));
        let oldest = self.floor;
        self.evict_before(oldest);
        if created_at < oldest {
            return Err(ReplayError::TooOld {
                created_at,
                now,
                window_secs: self.config.window_secs,
            }
            .into());
        }
        if created_at > now.saturating_add(self.config.max_skew_secs) {
            return Err(ReplayError::FromFuture {
                created_at,
                now,
                max_skew_secs: self.config.max_skew_secs,
            }
            .into());
        }
        if self.seen.contains(&id) {
            return Err(ReplayError::Replayed {
                request_id: id.to_string(),
            }
            .into());
        }
        if self.seen.len() >= self.config.capacity {
            return Err(ReplayError::Full {
                capacity: self.config.capacity,
            }
            .into());
        }
        self.seen.insert(id);
        self.by_time.insert((created_at, id));
        Ok(())
    }

    /// Forgets ids created before `oldest`: the time check rejects them from now on.
    fn evict_before(&mut self, oldest: u64) {
        while let Some(&(t, id)) = self.by_time.first() {
            if t >= oldest {
                break;
            }
            self.by_time.pop_first();
            self.seen.remove(&id);
        }
    }
}
