//! A cache of verified nodes, keyed by SHA-256 of the bundle bytes and the newest known
//! checkpoint, valid until the node's earliest expiry.
//!
//! A hit skips steps 0–5 (they depend only on the key: the bundle bytes, the policy this
//! cache belongs to, and the known checkpoint) and re-runs the cheap, caller-dependent steps:
//! 6 (required digests) and 7 (expiry, against the cached `valid_until`). A nonce request
//! always bypasses the cache: a nonce exists to force fresh evidence.

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};

use super::report::{Report, StepReport, StepStatus};
use super::{NODE_STEPS, NodeVerification, VerifiedNode, Verifier, VerifyContext};

/// Most entries kept; the entry expiring soonest is evicted first.
pub const DEFAULT_CAPACITY: usize = 1024;

/// Verified nodes by (bundle digest, known checkpoint digest). Belongs to one [`Verifier`].
#[derive(Debug)]
pub struct VerificationCache {
    verifier: Verifier,
    entries: HashMap<[u8; 32], VerifiedNode>,
    capacity: usize,
}

impl VerificationCache {
    /// A cache in front of `verifier`.
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            entries: HashMap::new(),
            capacity: DEFAULT_CAPACITY,
        }
    }

    /// Number of cached nodes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn key(bundle: &[u8], cx: &VerifyContext<'_>) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(Sha256::digest(bundle));
        match cx.known {
            Some(k) => {
                h.update([1]);
                h.update(k.digest());
            }
            None => h.update([0]),
        }
        h.finalize().into()
    }

    /// Verifies, using and filling the cache.
    pub fn verify_node(&mut self, bundle: &[u8], cx: &VerifyContext<'_>) -> NodeVerification {
        if cx.nonce.is_some() {
            return self.verifier.verify_node(bundle, cx);
        }
        let key = Self::key(bundle, cx);
        if let Some(node) = self.entries.get(&key) {
            if cx.now <= node.valid_until() {
                let missing = cx
                    .required_digests
                    .iter()
                    .find(|d| !node.release().manifest().contains_digest(d));
                let mut report = Report::new("node");
                report.cached = true;
                for (n, name) in NODE_STEPS.iter().enumerate() {
                    let (status, detail) = match (n, missing) {
                        (6, Some(d)) => (
                            StepStatus::Fail,
                            format!(
                                "release {} does not contain {}; the node serves a different model or adapter than the request needs",
                                node.release().digest().short(),
                                d.short()
                            ),
                        ),
                        (7, Some(_)) => {
                            (StepStatus::NotRun, "not run: an earlier step failed".into())
                        }
                        (7, None) => (
                            StepStatus::Pass,
                            format!("cached verification good until {}", node.valid_until()),
                        ),
                        _ => (StepStatus::Pass, "cached".into()),
                    };
                    report.steps.push(StepReport {
                        number: n as u8,
                        name,
                        status,
                        detail,
                    });
                }
                let node = missing.is_none().then(|| node.clone());
                return NodeVerification { report, node };
            }
            self.entries.remove(&key);
        }
        let v = self.verifier.verify_node(bundle, cx);
        // Cache only full passes, and only if they hold without the caller's required digests
        // having been the reason to stop (they are re-checked on every hit anyway).
        if let Some(node) = &v.node {
            if self.entries.len() >= self.capacity {
                self.evict(cx.now);
            }
            self.entries.insert(key, node.clone());
        }
        v
    }

    fn evict(&mut self, now: u64) {
        self.entries.retain(|_, n| n.valid_until() >= now);
        if self.entries.len() >= self.capacity
            && let Some(k) = self
                .entries
                .iter()
                .min_by_key(|(_, n)| n.valid_until())
                .map(|(k, _)| *k)
        {
            self.entries.remove(&k);
        }
    }
}
