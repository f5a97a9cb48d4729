//! HPKE keys in memory only, rotated on a schedule, and the attestation bundle that publishes
//! the current one.
//!
//! Each key lives `lifetime` seconds. At half its lifetime a new key (with a different key id)
//! is made and published; the old one keeps opening requests sealed to it until it expires, so
//! a device that verified the previous bundle shortly before rotation still gets served. At any
//! time at most two keys are live. The published bundle lists only the newest key, with that
//! key's expiry, and is re-made (fresh evidence) on every rotation. Each key has its own replay
//! guard, dropped with the key.

use std::sync::{Arc, Mutex};

use tandem_attest::attestation::{AttestationBundle, KeyConfigList};
use tandem_attest::evidence::{EvidenceClaims, RootOfTrust};
use tandem_attest::release::ReleaseBundle;
use tandem_proto::{NodeKey, ReplayConfig, ReplayGuard, Suite};

use super::NodeError;

pub use tandem_service::{Clock, SystemClock};

/// A root of trust the node can share between threads.
pub type SharedRoot = Box<dyn RootOfTrust + Send>;

/// One live key.
#[derive(Debug)]
pub struct LiveKey {
    /// The HPKE key pair.
    pub key: NodeKey,
    /// When it was made.
    pub created: u64,
    /// When it stops opening requests.
    pub expires: u64,
    /// Its replay guard.
    pub replay: Mutex<ReplayGuard>,
}

/// What the node publishes.
#[derive(Debug, Clone)]
pub struct Published {
    /// `AttestationBundle::to_json()` bytes.
    pub document: Arc<Vec<u8>>,
    /// RFC 9458 `application/ohttp-keys` list of the published key.
    pub key_configs: Vec<u8>,
    /// Its expiry.
    pub key_expiry: u64,
    /// Its key id.
    pub key_id: u8,
}

#[derive(Debug)]
struct State {
    keys: Vec<Arc<LiveKey>>,
    next_id: u8,
    published: Option<Published>,
    release: ReleaseBundle,
}

/// The key ring and attestation publisher.
pub struct KeyRing {
    lifetime: u64,
    replay: ReplayConfig,
    root: Mutex<SharedRoot>,
    state: Mutex<State>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// What [`KeyRing::maintain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Maintenance {
    /// A new key was made and published (its id).
    pub rotated_to: Option<u8>,
    /// Expired keys dropped.
    pub expired: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves the state consistent (every update is one
    // assignment), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl KeyRing {
    /// A ring with no key yet; [`KeyRing::maintain`] makes the first one. `release` must carry
    /// its log entry.
    pub fn new(
        lifetime: u64,
        replay: ReplayConfig,
        root: SharedRoot,
        release: ReleaseBundle,
    ) -> Self {
        KeyRing {
            lifetime,
            replay,
            root: Mutex::new(root),
            state: Mutex::new(State {
                keys: Vec::new(),
                next_id: 1,
                published: None,
                release,
            }),
        }
    }

    /// Drops expired keys and makes (and publishes) a new key if there is none or the newest
    /// has reached half its lifetime.
    pub fn maintain(&self, now: u64) -> Result<Maintenance, NodeError> {
        let mut st = lock(&self.state);
        let before = st.keys.len();
        st.keys.retain(|k| k.expires > now);
        let mut m = Maintenance {
            expired: before - st.keys.len(),
            ..Maintenance::default()
        };
        let due = match st.keys.last() {
            None => true,
            Some(k) => now >= k.created.saturating_add(self.lifetime / 2),
        };
        if due {
            // Ids of live keys must differ: the request names the key id it was sealed to.
            let mut id = st.next_id;
            while st.keys.iter().any(|k| k.key.config().key_id() == id) {
                id = id.wrapping_add(1);
            }
            st.next_id = id.wrapping_add(1);
            let key = NodeKey::generate(id, &Suite::ALL)?;
            let live = Arc::new(LiveKey {
                key,
                created: now,
                expires: now.saturating_add(self.lifetime),
                replay: Mutex::new(ReplayGuard::new(self.replay)?),
            });
            st.keys.push(live.clone());
            // At most two live keys: the newest and the one before it.
            while st.keys.len() > 2 {
                st.keys.remove(0);
            }
            let release = st.release.clone();
            st.published = Some(self.publish(&live, release)?);
            m.rotated_to = Some(id);
        }
        Ok(m)
    }

    fn publish(&self, key: &LiveKey, release: ReleaseBundle) -> Result<Published, NodeError> {
        let list = KeyConfigList::from_configs(vec![key.key.config().clone()])
            .map_err(|e| NodeError::Identity(format!("key config list: {e}")))?;
        let claims = EvidenceClaims {
            key_config_digest: list.digest(),
            release_digest: release.release_digest(),
            key_expiry: key.expires,
            nonce: None,
        };
        let evidence = lock(&self.root).attest(&claims)?;
        let bundle = AttestationBundle::new(list.clone(), key.expires, evidence, release);
        Ok(Published {
            document: Arc::new(bundle.to_json()),
            key_configs: list.bytes().to_vec(),
            key_expiry: key.expires,
            key_id: key.key.config().key_id(),
        })
    }

    /// Replaces the release bundle (a fresher log proof) and re-publishes the current key.
    pub fn set_release(&self, release: ReleaseBundle) -> Result<(), NodeError> {
        let mut st = lock(&self.state);
        st.release = release.clone();
        if let Some(k) = st.keys.last().cloned() {
            st.published = Some(self.publish(&k, release)?);
        }
        Ok(())
    }

    /// The published attestation, if a key exists.
    pub fn published(&self) -> Option<Published> {
        lock(&self.state).published.clone()
    }

    /// Live (unexpired at `now`) keys whose id is in `ids`, newest first.
    pub fn live_keys_for(&self, ids: &[u8], now: u64) -> Vec<Arc<LiveKey>> {
        lock(&self.state)
            .keys
            .iter()
            .rev()
            .filter(|k| k.expires > now && ids.contains(&k.key.config().key_id()))
            .cloned()
            .collect()
    }

    /// Ids of the live keys (for error messages).
    pub fn live_ids(&self, now: u64) -> Vec<u8> {
        lock(&self.state)
            .keys
            .iter()
            .filter(|k| k.expires > now)
            .map(|k| k.key.config().key_id())
            .collect()
    }
}

impl KeyRing {
    /// The release bundle currently published.
    pub fn current_release(&self) -> Option<ReleaseBundle> {
        Some(lock(&self.state).release.clone())
    }
}
