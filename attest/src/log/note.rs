//! C2SP signed-note with Ed25519 keys, checkpoints signed as notes, and C2SP tlog-cosignature
//! (timestamped Ed25519 witness cosignatures, `cosignature/v1`).
//!
//! Parsing and Ed25519 note signatures use the `signed_note` crate; cosignatures are implemented
//! here because that crate only knows signature type 0x01.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use signed_note::{
    Note, NoteError, Signer as _, StandardSigner, StandardVerifier, Verifier as _, VerifierList,
};

use super::LogError;
use super::checkpoint::Checkpoint;

/// C2SP signed-note "Signature types": Ed25519.
const ALG_ED25519: u8 = 0x01;
/// C2SP signed-note "Signature types": timestamped Ed25519 witness cosignature.
const ALG_COSIGNATURE_V1: u8 = 0x04;

fn note_err(e: NoteError) -> LogError {
    match e {
        NoteError::InvalidSignature { name, id } => LogError::BadSignature(format!(
            "the signature of key {name}+{id:08x} does not verify: the note was altered or signed with another key"
        )),
        NoteError::UnverifiedNote => LogError::BadSignature(
            "the note carries no signature from the expected key; is the verifier key right?"
                .into(),
        ),
        NoteError::MalformedNote => {
            LogError::MalformedNote("not a well-formed C2SP signed note".into())
        }
        other => LogError::MalformedNote(other.to_string()),
    }
}

/// An Ed25519 note signer (a log key): C2SP signed-note, signature type 0x01.
#[derive(Clone)]
pub struct NoteSigner {
    inner: StandardSigner,
    vkey: String,
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("vkey", &self.vkey)
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// Generate a new key named `name`; returns the signer and its private key encoding
    /// (`PRIVATE+KEY+<name>+<id>+<base64>`).
    pub fn generate_with_rng<R: CryptoRngCore>(
        rng: &mut R,
        name: &str,
    ) -> Result<(Self, String), LogError> {
        if !signed_note::is_key_name_valid(name) {
            return Err(LogError::BadKey(format!(
                "key name {name:?} is not valid: it must be non-empty, without spaces or '+'"
            )));
        }
        let (skey, _) = signed_note::generate_key(rng, name);
        Ok((Self::from_skey(&skey)?, skey))
    }

    /// Load a signer from its private key encoding.
    pub fn from_skey(skey: &str) -> Result<Self, LogError> {
        let inner = StandardSigner::new(skey.trim()).map_err(|e| {
            LogError::BadKey(format!(
                "the private key is not a C2SP Ed25519 note key ({e})"
            ))
        })?;
        // The private key encoding holds the seed; the verifier key is derived from it.
        // `PRIVATE+KEY+<name>+<id>+<base64>`; the base64 itself may contain '+'.
        let seed_b64 = skey.trim().splitn(5, '+').nth(4).unwrap_or_default();
        let seed = B64
            .decode(seed_b64)
            .map_err(|_| LogError::BadKey("the private key is not base64".into()))?;
        let seed: [u8; 32] = seed
            .get(1..)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| LogError::BadKey("the private key is not 32 bytes".into()))?;
        let vk = SigningKey::from_bytes(&seed).verifying_key();
        let vkey = signed_note::new_ed25519_verifier_key(inner.name(), &vk);
        Ok(Self { inner, vkey })
    }

    /// The key name (for a log key, the checkpoint origin).
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// The verifier key, `<name>+<key id hex>+<base64(0x01 || public key)>`.
    pub fn vkey(&self) -> &str {
        &self.vkey
    }

    /// The matching verifier.
    pub fn verifier(&self) -> NoteVerifier {
        // The vkey was produced from this key, so it always parses.
        NoteVerifier::new(&self.vkey).unwrap_or_else(|_| unreachable!("own vkey parses"))
    }
}

/// An Ed25519 note verifier key (C2SP signed-note "Verifier keys").
#[derive(Clone)]
pub struct NoteVerifier {
    inner: StandardVerifier,
    vkey: String,
}

impl fmt::Debug for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NoteVerifier").field(&self.vkey).finish()
    }
}

impl NoteVerifier {
    /// Parse a verifier key `<name>+<key id hex>+<base64(0x01 || public key)>`; the key id must
    /// be the one C2SP signed-note derives from the name and key.
    pub fn new(vkey: &str) -> Result<Self, LogError> {
        let vkey = vkey.trim();
        let inner = StandardVerifier::new(vkey).map_err(|e| {
            LogError::BadKey(format!(
                "verifier key {vkey:?} is not a C2SP Ed25519 verifier key ({e}); expected name+id+base64"
            ))
        })?;
        Ok(Self {
            inner,
            vkey: vkey.to_owned(),
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// The 32-bit key id.
    pub fn key_id(&self) -> u32 {
        self.inner.key_id()
    }

    /// The verifier key string.
    pub fn vkey(&self) -> &str {
        &self.vkey
    }
}

/// Sign `text` (which must end in a newline) as a C2SP signed note with every signer.
pub fn sign_note(text: &[u8], signers: &[&NoteSigner]) -> Result<Vec<u8>, LogError> {
    let mut note = Note::new(text, &[]).map_err(note_err)?;
    let dyn_signers: Vec<&dyn signed_note::Signer> = signers
        .iter()
        .map(|s| &s.inner as &dyn signed_note::Signer)
        .collect();
    note.add_sigs(&dyn_signers).map_err(note_err)?;
    Ok(note.to_bytes())
}

/// A note whose signature by a known key verified, with the signatures of keys not asked about.
#[derive(Debug, Clone)]
pub struct OpenedNote {
    /// The note text, including its final newline.
    pub text: Vec<u8>,
    /// Names of the keys whose signatures verified.
    pub verified_by: Vec<String>,
    other_sigs: Vec<signed_note::Signature>,
}

/// C2SP signed-note "Signatures": parse `msg` and verify the signatures of `verifiers`.
/// Succeeds only if at least one of them signed and none of their signatures fails.
pub fn open_note(msg: &[u8], verifiers: &[&NoteVerifier]) -> Result<OpenedNote, LogError> {
    let note = Note::from_bytes(msg).map_err(note_err)?;
    let list = VerifierList::new(
        verifiers
            .iter()
            .map(|v| Box::new(v.inner.clone()) as Box<dyn signed_note::Verifier>)
            .collect(),
    );
    let (verified, other) = note.verify(&list).map_err(note_err)?;
    Ok(OpenedNote {
        text: note.text().to_vec(),
        verified_by: verified.iter().map(|s| s.name().to_owned()).collect(),
        other_sigs: other,
    })
}

/// A witness's cosignature key (C2SP tlog-cosignature, Ed25519, signature type 0x04).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignerKey {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl CosignerKey {
    /// Parse a cosigner verifier key `<name>+<key id hex>+<base64(0x04 || public key)>`.
    pub fn new(vkey: &str) -> Result<Self, LogError> {
        let vkey = vkey.trim();
        let bad = |why: &str| LogError::BadKey(format!("witness key {vkey:?}: {why}"));
        let (name, rest) = vkey
            .split_once('+')
            .ok_or_else(|| bad("expected name+id+base64"))?;
        let (id_hex, key_b64) = rest
            .split_once('+')
            .ok_or_else(|| bad("expected name+id+base64"))?;
        if !signed_note::is_key_name_valid(name) {
            return Err(bad("the name is empty or has spaces or '+'"));
        }
        if id_hex.len() != 8 {
            return Err(bad("the key id is not 8 hex digits"));
        }
        let key_id = u32::from_str_radix(id_hex, 16).map_err(|_| bad("the key id is not hex"))?;
        let raw = B64
            .decode(key_b64)
            .map_err(|_| bad("the key is not base64"))?;
        if raw.first() != Some(&ALG_COSIGNATURE_V1) {
            return Err(bad("not a cosignature/v1 key (type byte 0x04)"));
        }
        let pk: [u8; 32] = raw[1..]
            .try_into()
            .map_err(|_| bad("the key is not 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&pk).map_err(|_| bad("not a valid Ed25519 point"))?;
        if signed_note::key_id(name, &raw) != key_id {
            return Err(bad("the key id does not match the name and key"));
        }
        Ok(Self {
            name: name.to_owned(),
            key_id,
            key,
        })
    }

    /// The witness name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// C2SP signed-note key id of this name and key.
    fn computed_id(&self) -> u32 {
        let mut raw = vec![ALG_COSIGNATURE_V1];
        raw.extend_from_slice(self.key.as_bytes());
        signed_note::key_id(&self.name, &raw)
    }

    /// The 32-bit key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The encoded verifier key.
    pub fn vkey(&self) -> String {
        let mut raw = vec![ALG_COSIGNATURE_V1];
        raw.extend_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.key_id, B64.encode(raw))
    }

    /// Verify one `timestamped_signature` over a checkpoint body; returns its timestamp.
    fn verify(&self, checkpoint_text: &[u8], sig: &[u8]) -> Option<u64> {
        if sig.len() != 8 + 64 {
            return None;
        }
        let timestamp = u64::from_be_bytes(sig[..8].try_into().ok()?);
        if timestamp > i64::MAX as u64 {
            return None;
        }
        let ed_sig = ed25519_dalek::Signature::from_slice(&sig[8..]).ok()?;
        let msg = cosigned_message(timestamp, checkpoint_text);
        self.key
            .verify_strict(&msg, &ed_sig)
            .ok()
            .map(|()| timestamp)
    }
}

/// C2SP tlog-cosignature "Ed25519 signed message": `cosignature/v1\ntime <T>\n` then the body.
fn cosigned_message(timestamp: u64, checkpoint_text: &[u8]) -> Vec<u8> {
    let mut msg = format!("cosignature/v1\ntime {timestamp}\n").into_bytes();
    msg.extend_from_slice(checkpoint_text);
    msg
}

/// A witness that cosigns checkpoints (C2SP tlog-cosignature, Ed25519). Used by tests and by
/// anyone running a witness next to the log.
#[derive(Clone)]
pub struct Cosigner {
    name: String,
    key_id: u32,
    key: SigningKey,
    timestamp: u64,
}

impl fmt::Debug for Cosigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cosigner")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Cosigner {
    /// A new random witness key named `name`.
    pub fn generate_with_rng<R: CryptoRngCore>(rng: &mut R, name: &str) -> Result<Self, LogError> {
        if !signed_note::is_key_name_valid(name) {
            return Err(LogError::BadKey(format!(
                "witness name {name:?} is not a valid key name"
            )));
        }
        let key = SigningKey::generate(rng);
        let mut raw = vec![ALG_COSIGNATURE_V1];
        raw.extend_from_slice(key.verifying_key().as_bytes());
        Ok(Self {
            name: name.to_owned(),
            key_id: signed_note::key_id(name, &raw),
            key,
            timestamp: 0,
        })
    }

    /// Load a witness key from its private key encoding (see [`Cosigner::private_key`]).
    pub fn from_skey(skey: &str) -> Result<Self, LogError> {
        let skey = skey.trim();
        let bad = |why: &str| LogError::BadKey(format!("the witness private key {why}"));
        // `PRIVATE+KEY+<name>+<id hex>+<base64(0x04 || seed)>`; the base64 may contain '+'.
        let mut parts = skey.splitn(5, '+');
        if (parts.next(), parts.next()) != (Some("PRIVATE"), Some("KEY")) {
            return Err(bad("does not start with PRIVATE+KEY+"));
        }
        let (Some(name), Some(id_hex), Some(seed_b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("is not PRIVATE+KEY+<name>+<id>+<base64>"));
        };
        if !signed_note::is_key_name_valid(name) {
            return Err(bad("has an empty name or one with spaces or '+'"));
        }
        let raw = B64
            .decode(seed_b64)
            .map_err(|_| bad("is not base64 after the key id"))?;
        if raw.first() != Some(&ALG_COSIGNATURE_V1) {
            return Err(bad(
                "is not a cosignature/v1 key (type byte 0x04); is it a log key?",
            ));
        }
        let seed: [u8; 32] = raw[1..].try_into().map_err(|_| bad("is not 32 bytes"))?;
        let mut at = Self {
            name: name.to_owned(),
            key_id: 0,
            key: SigningKey::from_bytes(&seed),
            timestamp: 0,
        };
        at.key_id = at.key().computed_id();
        if id_hex.len() != 8 || u32::from_str_radix(id_hex, 16).ok() != Some(at.key_id) {
            return Err(bad("has a key id that does not match its name and key"));
        }
        Ok(at)
    }

    /// The private key encoding, `PRIVATE+KEY+<name>+<id hex>+<base64(0x04 || seed)>` (the
    /// shape of C2SP signed-note private keys, with the cosignature/v1 type byte). Keep it
    /// secret.
    pub fn private_key(&self) -> String {
        let mut raw = vec![ALG_COSIGNATURE_V1];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.key_id,
            B64.encode(raw)
        )
    }

    /// C2SP tlog-witness `add-checkpoint` response: this witness's note signature line
    /// (`— <name> <base64(key id || timestamp || signature)>\n`) over the checkpoint body
    /// `checkpoint_text`, made at `timestamp` (POSIX seconds).
    pub fn cosignature_line(&self, checkpoint_text: &[u8], timestamp: u64) -> String {
        let sig = self.key.sign(&cosigned_message(timestamp, checkpoint_text));
        let mut raw = self.key_id.to_be_bytes().to_vec();
        raw.extend_from_slice(&timestamp.to_be_bytes());
        raw.extend_from_slice(&sig.to_bytes());
        format!("\u{2014} {} {}\n", self.name, B64.encode(raw))
    }

    /// The verifier side of this witness.
    pub fn key(&self) -> CosignerKey {
        CosignerKey {
            name: self.name.clone(),
            key_id: self.key_id,
            key: self.key.verifying_key(),
        }
    }

    /// Add this witness's cosignature, made at `timestamp` (POSIX seconds), to a signed
    /// checkpoint note.
    pub fn cosign(&self, signed_note_bytes: &[u8], timestamp: u64) -> Result<Vec<u8>, LogError> {
        let mut note = Note::from_bytes(signed_note_bytes).map_err(note_err)?;
        let mut at = self.clone();
        at.timestamp = timestamp;
        note.add_sigs(&[&at]).map_err(note_err)?;
        Ok(note.to_bytes())
    }
}

impl signed_note::Signer for Cosigner {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.key_id
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let sig = self.key.sign(&cosigned_message(self.timestamp, msg));
        let mut out = self.timestamp.to_be_bytes().to_vec();
        out.extend_from_slice(&sig.to_bytes());
        Ok(out)
    }
}

/// Which witnesses must have cosigned a checkpoint, and how many of them.
#[derive(Debug, Clone, Default)]
pub struct WitnessPolicy {
    witnesses: Vec<CosignerKey>,
    required: usize,
}

impl WitnessPolicy {
    /// Require `required` distinct witnesses out of `witnesses`. An empty list with `required ==
    /// 0` accepts every checkpoint; asking for more witnesses than are listed is a config error.
    pub fn new(witnesses: Vec<CosignerKey>, required: usize) -> Result<Self, LogError> {
        if required > witnesses.len() {
            return Err(LogError::InvalidArgument(format!(
                "the witness policy requires {required} cosignatures but lists only {} witnesses",
                witnesses.len()
            )));
        }
        Ok(Self {
            witnesses,
            required,
        })
    }

    /// Number of distinct witnesses required.
    pub fn required(&self) -> usize {
        self.required
    }
}

/// A witness cosignature that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessCosignature {
    /// Witness name.
    pub name: String,
    /// POSIX time the witness says it cosigned at.
    pub timestamp: u64,
}

/// A checkpoint whose log signature (and, if asked, witness quorum) verified. Only
/// [`open_checkpoint`] makes one.
#[derive(Debug, Clone)]
pub struct VerifiedCheckpoint {
    checkpoint: Checkpoint,
    note: Vec<u8>,
    cosignatures: Vec<WitnessCosignature>,
}

impl VerifiedCheckpoint {
    /// The checkpoint body.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }
    /// The signed note it came from.
    pub fn note_bytes(&self) -> &[u8] {
        &self.note
    }
    /// The witness cosignatures that verified (only those the policy listed).
    pub fn cosignatures(&self) -> &[WitnessCosignature] {
        &self.cosignatures
    }
}

/// Verify a signed checkpoint: the log's signature (C2SP signed-note), the body (C2SP
/// tlog-checkpoint), that the origin is the log key's name, and the witness quorum if
/// `witnesses` is given (C2SP tlog-cosignature). Cosignature timestamps later than
/// `now + max_skew` are rejected when `now` is given.
pub fn open_checkpoint(
    msg: &[u8],
    log: &NoteVerifier,
    witnesses: Option<&WitnessPolicy>,
    now: Option<(u64, u64)>,
) -> Result<VerifiedCheckpoint, LogError> {
    let opened = open_note(msg, &[log])?;
    let checkpoint = Checkpoint::parse(&opened.text)?;
    if checkpoint.origin != log.name() {
        return Err(LogError::OriginMismatch {
            origin: checkpoint.origin,
            expected: log.name().to_owned(),
        });
    }
    let mut cosignatures = Vec::new();
    if let Some(policy) = witnesses {
        let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
        for sig in &opened.other_sigs {
            let Some(w) = policy
                .witnesses
                .iter()
                .find(|w| w.name == sig.name() && w.key_id == sig.id())
            else {
                // C2SP signed-note: signatures from unknown keys are ignored.
                continue;
            };
            let Some(ts) = w.verify(&opened.text, sig.signature()) else {
                return Err(LogError::BadSignature(format!(
                    "the cosignature of witness {} does not verify over this checkpoint",
                    w.name
                )));
            };
            if let Some((now, skew)) = now
                && ts > now.saturating_add(skew)
            {
                return Err(LogError::BadSignature(format!(
                    "witness {} cosigned at {ts}, in the future (now {now}); check the clocks",
                    w.name
                )));
            }
            seen.entry(w.name.as_str()).or_insert(ts);
        }
        if seen.len() < policy.required {
            return Err(LogError::WitnessQuorum {
                got: seen.len(),
                need: policy.required,
            });
        }
        cosignatures = seen
            .into_iter()
            .map(|(name, timestamp)| WitnessCosignature {
                name: name.to_owned(),
                timestamp,
            })
            .collect();
    }
    Ok(VerifiedCheckpoint {
        checkpoint,
        note: msg.to_vec(),
        cosignatures,
    })
}

/// Sign a checkpoint body with the log key; the origin must be the key's name.
pub fn sign_checkpoint(checkpoint: &Checkpoint, log: &NoteSigner) -> Result<Vec<u8>, LogError> {
    if checkpoint.origin != log.name() {
        return Err(LogError::InvalidArgument(format!(
            "checkpoint origin {:?} differs from the log key name {:?}",
            checkpoint.origin,
            log.name()
        )));
    }
    sign_note(checkpoint.encode().as_bytes(), &[log])
}

/// The type byte of Ed25519 note keys, exposed for key tooling.
pub const ED25519_KEY_TYPE: u8 = ALG_ED25519;
