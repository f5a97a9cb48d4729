//! An in-memory cache of loaded adapters keyed by digest, least-recently-used eviction under a
//! byte budget. It does no I/O: on a miss the caller's loader runs.

use std::collections::HashMap;
use std::sync::Arc;

use crate::digest::AdapterDigest;
use crate::lora::Adapter;

/// Counters of an [`AdapterCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups served from the cache.
    pub hits: u64,
    /// Lookups that had to load.
    pub misses: u64,
    /// Adapters evicted to make room.
    pub evictions: u64,
    /// Adapters currently held.
    pub entries: usize,
    /// Bytes currently held.
    pub bytes: usize,
}

#[derive(Debug)]
struct Entry {
    adapter: Arc<Adapter>,
    last_used: u64,
}

/// LRU adapter cache bounded by bytes. Eviction scans the entries (adapter counts are small).
/// An adapter larger than the whole budget is returned to the caller but not kept.
#[derive(Debug)]
pub struct AdapterCache {
    budget: usize,
    entries: HashMap<AdapterDigest, Entry>,
    clock: u64,
    stats: CacheStats,
}

impl AdapterCache {
    /// An empty cache holding at most `budget_bytes` of adapter tensors.
    pub fn new(budget_bytes: usize) -> Self {
        AdapterCache {
            budget: budget_bytes,
            entries: HashMap::new(),
            clock: 0,
            stats: CacheStats::default(),
        }
    }

    /// The adapter with `digest`, loading it with `load` on a miss.
    pub fn get_or_try_insert_with<E>(
        &mut self,
        digest: AdapterDigest,
        load: impl FnOnce() -> Result<Adapter, E>,
    ) -> Result<Arc<Adapter>, E> {
        self.clock += 1;
        if let Some(e) = self.entries.get_mut(&digest) {
            e.last_used = self.clock;
            self.stats.hits += 1;
            return Ok(e.adapter.clone());
        }
        self.stats.misses += 1;
        let adapter = Arc::new(load()?);
        let size = adapter.bytes();
        if size > self.budget {
            return Ok(adapter);
        }
        while self.stats.bytes + size > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(d, _)| *d)
            else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.stats.bytes -= e.adapter.bytes();
                self.stats.evictions += 1;
            }
        }
        self.stats.bytes += size;
        self.entries.insert(
            digest,
            Entry {
                adapter: adapter.clone(),
                last_used: self.clock,
            },
        );
        self.stats.entries = self.entries.len();
        Ok(adapter)
    }

    /// Whether `digest` is cached (does not count as a lookup).
    pub fn contains(&self, digest: &AdapterDigest) -> bool {
        self.entries.contains_key(digest)
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.entries.len(),
            ..self.stats
        }
    }
}
