//! Test fixtures (feature `test-util`): real keys, a real RFC 9162 tree, real signed
//! checkpoints, real bundles. The Merkle tree and note signing here are written independently
//! of the crate's own code, so tests check one against the other. Shared by this crate's tests
//! and the `attest` CLI's.
#![allow(
    missing_debug_implementations,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::new_without_default
)]

use crate::attestation::{AttestationBundle, KeyConfigList};
use crate::digest::Sha256Digest;
use crate::evidence::software::generate_identity_key_with_rng;
use crate::evidence::{CertRole, EvidenceClaims, FleetCa, RootOfTrust, SoftwareRoot};
use crate::release::{
    Artifact, ArtifactKind, LogEntry, ReleaseBundle, ReleaseManifest, ReleaseSigningKey,
};
use crate::verify::Policy;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::Signer as _;
use rand_core::{OsRng, SeedableRng};
use sha2::{Digest as _, Sha256};
use signed_note::{Note, Signature as NoteSig, Signer as _, StandardSigner};

pub const ORIGIN: &str = "log.tandem.example/releases";
pub const NOW: u64 = 1_800_000_000;
pub const KEY_EXPIRY: u64 = NOW + 3600;

// ---- RFC 9162 §2.1 Merkle tree (independent of the crate's code) ------------------------------

pub fn leaf_hash(d: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0]);
    h.update(d);
    h.finalize().into()
}

fn node(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

pub fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// RFC 9162 §2.1.3.1 PATH(m, D[n]).
pub fn inclusion_proof(m: usize, leaves: &[[u8; 32]]) -> Vec<[u8; 32]> {
    let n = leaves.len();
    if n <= 1 {
        return vec![];
    }
    let k = split(n);
    if m < k {
        let mut p = inclusion_proof(m, &leaves[..k]);
        p.push(mth(&leaves[k..]));
        p
    } else {
        let mut p = inclusion_proof(m - k, &leaves[k..]);
        p.push(mth(&leaves[..k]));
        p
    }
}

/// RFC 9162 §2.1.4.1 SUBPROOF(m, D[n], b).
fn subproof(m: usize, leaves: &[[u8; 32]], b: bool) -> Vec<[u8; 32]> {
    let n = leaves.len();
    if m == n {
        return if b { vec![] } else { vec![mth(leaves)] };
    }
    let k = split(n);
    if m <= k {
        let mut p = subproof(m, &leaves[..k], b);
        p.push(mth(&leaves[k..]));
        p
    } else {
        let mut p = subproof(m - k, &leaves[k..], false);
        p.push(mth(&leaves[..k]));
        p
    }
}

pub fn consistency_proof(m: usize, leaves: &[[u8; 32]]) -> Vec<[u8; 32]> {
    subproof(m, leaves, true)
}

// ---- checkpoints -----------------------------------------------------------------------------

pub struct LogKeys {
    pub signer: StandardSigner,
    pub vkey: String,
}

pub fn log_keys(name: &str) -> LogKeys {
    let (skey, vkey) = signed_note::generate_key(&mut OsRng, name);
    LogKeys {
        signer: StandardSigner::new(&skey).unwrap(),
        vkey,
    }
}

pub struct Witness {
    pub name: String,
    pub key: ed25519_dalek::SigningKey,
    pub vkey: String,
    pub id: u32,
}

pub fn witness(name: &str) -> Witness {
    let key = ed25519_dalek::SigningKey::generate(&mut OsRng);
    let mut raw = vec![0x04];
    raw.extend_from_slice(key.verifying_key().as_bytes());
    let id = signed_note::key_id(name, &raw);
    Witness {
        name: name.into(),
        key,
        vkey: format!("{name}+{id:08x}+{}", B64.encode(&raw)),
        id,
    }
}

pub fn checkpoint_text(size: u64, root: &[u8; 32]) -> String {
    format!("{ORIGIN}\n{size}\n{}\n", B64.encode(root))
}

/// A checkpoint note signed by the log and cosigned (C2SP tlog-cosignature v1) by `witnesses`
/// at time `ts`.
pub fn signed_checkpoint(
    log: &LogKeys,
    size: u64,
    root: &[u8; 32],
    witnesses: &[&Witness],
    ts: u64,
) -> String {
    let text = checkpoint_text(size, root);
    let mut sigs = Vec::new();
    for w in witnesses {
        let mut msg = format!("cosignature/v1\ntime {ts}\n").into_bytes();
        msg.extend_from_slice(text.as_bytes());
        let mut sig = ts.to_be_bytes().to_vec();
        sig.extend_from_slice(&w.key.sign(&msg).to_bytes());
        sigs.push(NoteSig::new(w.name.clone(), w.id, sig).unwrap());
    }
    let mut note = Note::new(text.as_bytes(), &sigs).unwrap();
    note.add_sigs(&[&log.signer as &dyn signed_note::Signer])
        .unwrap();
    let _ = log.signer.name();
    String::from_utf8(note.to_bytes()).unwrap()
}

// ---- releases and nodes ----------------------------------------------------------------------

pub fn artifact(kind: ArtifactKind, name: &str, content: &[u8]) -> Artifact {
    Artifact {
        kind,
        name: name.into(),
        sha256: Sha256Digest::of(content),
        size: content.len() as u64,
    }
}

pub const ADAPTER: &[u8] = b"adapter weights: summarize";
pub const BASE: &[u8] = b"base model weights";

pub fn manifest(name: &str) -> ReleaseManifest {
    ReleaseManifest::new(
        name,
        vec![
            artifact(ArtifactKind::NodeBinary, "tandem-node", b"node binary"),
            artifact(ArtifactKind::NodeConfig, "node.toml", b"[node]"),
            artifact(ArtifactKind::BaseModel, "model/config.json", b"{}"),
            artifact(ArtifactKind::BaseModel, "model/model.safetensors", BASE),
            artifact(
                ArtifactKind::Adapter,
                "adapters/summarize/adapter_model.safetensors",
                ADAPTER,
            ),
            artifact(ArtifactKind::Tokenizer, "tokenizer.json", b"tokenizer"),
        ],
    )
    .unwrap()
}

/// RFC 9458 §3 list with one X25519 / HKDF-SHA256 / AES-128-GCM + ChaCha20Poly1305 config.
pub fn key_configs() -> KeyConfigList {
    let mut cfg = vec![7u8, 0x00, 0x20];
    cfg.extend_from_slice(&[0x42; 32]);
    cfg.extend_from_slice(&8u16.to_be_bytes());
    cfg.extend_from_slice(&[0x00, 0x01, 0x00, 0x01, 0x00, 0x01, 0x00, 0x03]);
    let mut list = (cfg.len() as u16).to_be_bytes().to_vec();
    list.extend_from_slice(&cfg);
    KeyConfigList::parse(list).unwrap()
}

pub struct Fixture {
    pub release_key: ReleaseSigningKey,
    pub ca: FleetCa,
    pub log: LogKeys,
    pub witness: Witness,
    pub leaves: Vec<[u8; 32]>,
    pub release: ReleaseBundle,
    pub root: SoftwareRoot,
    pub bundle: AttestationBundle,
}

impl Fixture {
    pub fn new() -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let release_key = ReleaseSigningKey::generate_with_rng(&mut rng);
        let ca = FleetCa::generate_with_rng(&mut rng);
        let log = log_keys(ORIGIN);
        let witness = witness("witness.example");
        let unlogged = release_key.sign(manifest("tandem-node 0.1.0"));
        // The release is entry 5 of 9.
        let mut leaves: Vec<[u8; 32]> = (0..9u8).map(|i| leaf_hash(&[i])).collect();
        leaves[5] = leaf_hash(&unlogged.log_entry_body());
        let release = attach(unlogged, &log, &leaves, 5, &[&witness], NOW - 60);
        let id_key = generate_identity_key_with_rng(&mut rng);
        let cert = ca
            .certify(
                CertRole::NodeIdentity,
                "node-1",
                id_key.verifying_key(),
                NOW - 86400,
                NOW + 86400,
            )
            .unwrap();
        let mut root = SoftwareRoot::new(id_key, cert).unwrap();
        let kc = key_configs();
        let claims = EvidenceClaims {
            key_config_digest: kc.digest(),
            release_digest: release.release_digest(),
            key_expiry: KEY_EXPIRY,
            nonce: None,
        };
        let ev = root.attest(&claims).unwrap();
        let bundle = AttestationBundle::new(kc, KEY_EXPIRY, ev, release.clone());
        Self {
            release_key,
            ca,
            log,
            witness,
            leaves,
            release,
            root,
            bundle,
        }
    }

    pub fn policy_json(&self, extra: serde_json::Value) -> Vec<u8> {
        let mut v = serde_json::json!({
            "fleetCaKeys": [self.ca.public_key().to_pem()],
            "releaseSigners": [self.release_key.public_key().to_pem()],
            "logKeys": [self.log.vkey],
            "witnessKeys": [self.witness.vkey],
            "requiredWitnesses": 1,
            "maxCheckpointAgeSecs": 86400,
            "clockSkewSecs": 60,
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        serde_json::to_vec(&v).unwrap()
    }

    pub fn policy(&self) -> Policy {
        Policy::from_json(&self.policy_json(serde_json::json!({}))).unwrap()
    }

    /// A node bundle for `release` with this fixture's node keys.
    pub fn node_bundle_for(
        &mut self,
        release: ReleaseBundle,
        nonce: Option<Vec<u8>>,
    ) -> AttestationBundle {
        let kc = key_configs();
        let claims = EvidenceClaims {
            key_config_digest: kc.digest(),
            release_digest: release.release_digest(),
            key_expiry: KEY_EXPIRY,
            nonce,
        };
        let ev = self.root.attest(&claims).unwrap();
        AttestationBundle::new(kc, KEY_EXPIRY, ev, release)
    }
}

/// Attaches an inclusion proof for leaf `index` of `leaves` under a fresh signed checkpoint.
pub fn attach(
    bundle: ReleaseBundle,
    log: &LogKeys,
    leaves: &[[u8; 32]],
    index: usize,
    witnesses: &[&Witness],
    ts: u64,
) -> ReleaseBundle {
    let root = mth(leaves);
    let cp = signed_checkpoint(log, leaves.len() as u64, &root, witnesses, ts);
    bundle.with_log_entry(LogEntry {
        log_index: index as u64,
        log_id: Sha256Digest::of(ORIGIN.as_bytes()).0,
        integrated_time: ts,
        body: Vec::new(),
        tree_size: leaves.len() as u64,
        root_hash: root,
        hashes: inclusion_proof(index, leaves),
        checkpoint: cp,
    })
}
