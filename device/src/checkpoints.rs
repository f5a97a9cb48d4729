//! The newest transparency-log checkpoint this device has verified, and the consistency check of
//! every node's checkpoint against it (step 5 of node verification).
//!
//! Without this a device accepts whatever checkpoint a node's bundle carries, so a log that
//! shows one history to this device and another to an auditor goes unnoticed. With a log URL in
//! the device config the device:
//!
//! 1. starts from the checkpoint saved in `checkpoint_file` (if any), opened under the policy's
//!    log keys; a saved checkpoint that does not verify is a config error, never ignored;
//! 2. for each candidate whose bundle's checkpoint differs in size from the newest known one,
//!    builds an RFC 9162 consistency proof between the two from the log's tiles (C2SP
//!    tlog-tiles; the proof is untrusted and checked by the verifier);
//! 3. hands the verifier the newest known checkpoint plus that proof, so a fork (two
//!    checkpoints of one size with different roots, or a tree that does not extend the known
//!    one) fails verification with the evidence named, and nothing is sent to that node;
//! 4. after a node passes, advances the newest known checkpoint if the node's is larger and
//!    saves it (the signed note, the format `attest log checkpoint --out` writes), by rename.
//!
//! The first checkpoint a device ever sees is trusted on first use unless the config ships one;
//! the verification report says which.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tandem_attest::log::Hash;
use tandem_attest::release::LogEntry;
use tandem_attest::verify::{KnownCheckpoint, Policy};
use tandem_log::LogClient;

use crate::error::{ConfigError, RemoteError};

/// The device's newest known checkpoint and a reader of the log that signs it.
#[derive(Debug)]
pub struct CheckpointBook {
    policy: Policy,
    reader: LogClient,
    file: Option<PathBuf>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    newest: Option<KnownCheckpoint>,
    /// Consistency proofs fetched so far, by (smaller size, larger size, larger root).
    proofs: HashMap<(u64, u64, [u8; 32]), Vec<Hash>>,
}

fn lock_err() -> RemoteError {
    RemoteError::Response("checkpoint state poisoned".into())
}

impl CheckpointBook {
    /// A book for the log at `log_url` whose checkpoints `policy`'s log keys sign, starting from
    /// the checkpoint saved in `file` if it exists.
    pub fn open(
        policy: Policy,
        log_url: &str,
        file: Option<PathBuf>,
        timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let reader = LogClient::new(log_url, timeout)
            .map_err(|e| ConfigError::invalid("log_url", e.to_string()))?;
        let newest = match &file {
            Some(p) if p.exists() => Some(load(&policy, p)?),
            _ => None,
        };
        Ok(Self {
            policy,
            reader,
            file,
            state: Mutex::new(State {
                newest,
                proofs: HashMap::new(),
            }),
        })
    }

    /// The newest checkpoint this device has verified: (tree size, signed note).
    pub fn newest(&self) -> Option<(u64, Vec<u8>)> {
        let s = self.state.lock().ok()?;
        s.newest
            .as_ref()
            .map(|k| (k.checkpoint.size, k.checkpoint.note().to_vec()))
    }

    /// What the verifier needs to check `entry`'s checkpoint against the newest known one: that
    /// checkpoint plus a consistency proof between the two (fetched from the log's tiles once
    /// per pair of trees). `None` until the device has seen its first checkpoint.
    pub async fn known_for(
        &self,
        entry: Option<&LogEntry>,
    ) -> Result<Option<KnownCheckpoint>, RemoteError> {
        let (newest, cached) = {
            let s = self.state.lock().map_err(|_| lock_err())?;
            let Some(newest) = s.newest.clone() else {
                return Ok(None);
            };
            let cached = entry.and_then(|e| s.proofs.get(&key(&newest, e)).cloned());
            (newest, cached)
        };
        // A bundle without a log entry fails inclusion anyway; the same size needs no proof.
        let Some(e) = entry.filter(|e| e.tree_size != newest.checkpoint.size) else {
            return Ok(Some(newest));
        };
        let proof = match cached {
            Some(p) => p,
            None => {
                let (old, new) = sizes(&newest, e);
                if old == 0 {
                    Vec::new()
                } else {
                    let p = self
                        .reader
                        .consistency_proof(old, new)
                        .await
                        .map_err(|err| {
                            RemoteError::Response(format!(
                                "fetching the consistency proof between log checkpoints of size \
                                 {old} and {new}: {err}"
                            ))
                        })?;
                    self.state
                        .lock()
                        .map_err(|_| lock_err())?
                        .proofs
                        .insert(key(&newest, e), p.clone());
                    p
                }
            }
        };
        Ok(Some(KnownCheckpoint { proof, ..newest }))
    }

    /// Records the checkpoint of a bundle that passed verification (so its signature and its
    /// consistency with the newest known checkpoint were checked): it becomes the newest known
    /// one if it is larger, and is saved.
    pub fn advance(&self, entry: &LogEntry) -> Result<(), RemoteError> {
        let mut s = self.state.lock().map_err(|_| lock_err())?;
        if s.newest
            .as_ref()
            .is_some_and(|n| n.checkpoint.size >= entry.tree_size)
        {
            return Ok(());
        }
        let k =
            KnownCheckpoint::open(&self.policy, &entry.checkpoint, Vec::new()).map_err(|e| {
                RemoteError::Response(format!("a verified node's checkpoint did not reopen: {e}"))
            })?;
        if let Some(p) = &self.file {
            save(p, k.checkpoint.note())?;
        }
        s.newest = Some(k);
        s.proofs.clear();
        Ok(())
    }
}

fn sizes(newest: &KnownCheckpoint, e: &LogEntry) -> (u64, u64) {
    let a = newest.checkpoint.size;
    (a.min(e.tree_size), a.max(e.tree_size))
}

fn key(newest: &KnownCheckpoint, e: &LogEntry) -> (u64, u64, [u8; 32]) {
    let (old, new) = sizes(newest, e);
    let root = if e.tree_size >= newest.checkpoint.size {
        e.root_hash
    } else {
        newest.checkpoint.root_hash
    };
    (old, new, root)
}

fn load(policy: &Policy, path: &Path) -> Result<KnownCheckpoint, ConfigError> {
    let invalid = |reason: String| ConfigError::invalid("checkpoint_file", reason);
    let note = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("reading {}: {e}", path.display())))?;
    KnownCheckpoint::open(policy, &note, Vec::new()).map_err(|e| {
        invalid(format!(
            "{} does not verify under the policy's log keys: {e}; it is the newest checkpoint \
             this device saw, so remove it only if the policy's log really changed",
            path.display()
        ))
    })
}

fn save(path: &Path, note: &[u8]) -> Result<(), RemoteError> {
    let err = |e: std::io::Error| {
        RemoteError::Response(format!(
            "saving the newest log checkpoint to {}: {e}",
            path.display()
        ))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, note).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
