//! C2SP tlog-witness: the `add-checkpoint` request and the witness's decision, pure.
//!
//! A log submits each new checkpoint with a consistency proof from the size the witness last
//! cosigned; the witness checks it against the latest checkpoint it recorded for that origin
//! and answers with a C2SP tlog-cosignature (`cosignature/v1`). This module parses and encodes
//! the request body ([`AddCheckpoint`]), decides ([`Witness::check`], which answers either a
//! [`Refusal`] carrying the spec's HTTP status or a [`Cosigned`] token), and encodes the
//! witness's durable state. The HTTP server and the file it persists to are `attest witness
//! serve`'s; the log's side of the exchange is `tandem_log::witness`.
//!
//! ```text
//! old <size>\n
//! [<base64 hash>\n ...]        at most 63 consistency proof lines
//! \n
//! <signed checkpoint note>
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use thiserror::Error;

use super::LogError;
use super::checkpoint::{Checkpoint, MAX_CHECKPOINT_LEN, parse_hash};
use super::merkle::{EMPTY_ROOT, Hash, verify_consistency};
use super::note::{Cosigner, NoteVerifier, open_note};

/// C2SP tlog-witness: "The client MUST NOT send more than 63 consistency proof lines."
pub const MAX_PROOF_LINES: usize = 63;

/// Upper bound on an `add-checkpoint` body: the old size line, 63 proof lines and a checkpoint
/// note (its body bounded by [`MAX_CHECKPOINT_LEN`], plus signature lines).
pub const MAX_ADD_CHECKPOINT_LEN: usize = MAX_CHECKPOINT_LEN + 64 * 1024;

/// C2SP tlog-witness: the content type of a 409 answer, whose body is the witness's latest
/// tree size for the origin in decimal and a newline.
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";

/// Magic first line of the witness state encoding ([`Witness::encode_state`]).
const STATE_MAGIC: &str = "tandem-witness-state/v1";

fn malformed(reason: impl Into<String>) -> LogError {
    LogError::MalformedWitnessRequest(reason.into())
}

/// A decimal with no sign and no leading zeros ("0" itself allowed).
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// Cut the next `\n`-terminated line off `rest`.
fn next_line<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let i = rest.iter().position(|&b| b == b'\n')?;
    let line = &rest[..i];
    *rest = &rest[i + 1..];
    Some(line)
}

/// The body of `POST <submission prefix>/add-checkpoint` (C2SP tlog-witness "add-checkpoint").
///
/// Parsing is strict so that `parse(encode(r)) == r` and `encode(parse(b)) == b`. The
/// checkpoint note is kept as bytes; [`Witness::check`] parses and verifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size of the checkpoint the client believes the witness cosigned last (0 if none).
    pub old_size: u64,
    /// RFC 6962 §2.1.2 consistency proof from `old_size` to the checkpoint's size.
    pub proof: Vec<Hash>,
    /// The signed checkpoint note (C2SP signed-note).
    pub checkpoint: Vec<u8>,
}

impl AddCheckpoint {
    /// Parse a request body.
    pub fn parse(body: &[u8]) -> Result<Self, LogError> {
        if body.len() > MAX_ADD_CHECKPOINT_LEN {
            return Err(malformed(format!(
                "{} bytes is longer than the {MAX_ADD_CHECKPOINT_LEN}-byte limit",
                body.len()
            )));
        }
        let mut rest = body;
        // "The old size line MUST consist of the string `old`, a single space (0x20), and the
        // tree size ... with no leading zeroes".
        let first = next_line(&mut rest).ok_or_else(|| {
            malformed("the old size line is missing or does not end in a newline")
        })?;
        let size = first
            .strip_prefix(b"old ")
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(parse_decimal)
            .ok_or_else(|| {
                malformed(format!(
                    "the first line {:?} is not `old <size>` with a canonical decimal size",
                    String::from_utf8_lossy(first)
                ))
            })?;
        let mut proof = Vec::new();
        loop {
            let line = next_line(&mut rest).ok_or_else(|| {
                malformed("the empty line that ends the consistency proof is missing")
            })?;
            if line.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF_LINES {
                return Err(malformed(format!(
                    "more than {MAX_PROOF_LINES} consistency proof lines"
                )));
            }
            let h = std::str::from_utf8(line)
                .ok()
                .and_then(parse_hash)
                .ok_or_else(|| {
                    malformed(format!(
                        "consistency proof line {} is not 32 bytes of canonical base64",
                        proof.len() + 1
                    ))
                })?;
            proof.push(h);
        }
        if rest.is_empty() {
            return Err(malformed("the checkpoint is missing after the empty line"));
        }
        Ok(Self {
            old_size: size,
            proof,
            checkpoint: rest.to_vec(),
        })
    }

    /// Encode the request body.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = format!("old {}\n", self.old_size);
        for h in &self.proof {
            B64.encode_string(h, &mut s);
            s.push('\n');
        }
        s.push('\n');
        let mut out = s.into_bytes();
        out.extend_from_slice(&self.checkpoint);
        out
    }
}

/// The body of a signed note, up to and including its last text newline: C2SP signed-note
/// separates text and signatures by an empty line, and a checkpoint body has no empty line.
fn note_text(note: &[u8]) -> Option<&[u8]> {
    let i = note.windows(2).position(|w| w == b"\n\n")?;
    Some(&note[..=i])
}

/// Why a witness refused to cosign, with the C2SP tlog-witness HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Refusal {
    /// 400: the request is malformed, or its old size is larger than the checkpoint's size.
    #[error("{0}")]
    BadRequest(String),
    /// 403: no signature by a key the witness trusts for the origin verifies.
    #[error("{0}")]
    Forbidden(String),
    /// 404: the witness does not know the checkpoint's origin.
    #[error("{0}")]
    UnknownOrigin(String),
    /// 409: the old size is not the witness's latest size for the origin, or a checkpoint of
    /// the same size has a different root. The answer body is `latest` (text/x.tlog.size).
    #[error("{reason}")]
    Conflict {
        /// The tree size of the latest checkpoint the witness cosigned for the origin.
        latest: u64,
        /// What did not match.
        reason: String,
    },
    /// 422: the consistency proof does not verify from the witness's latest checkpoint.
    #[error("{0}")]
    Unprocessable(String),
}

impl Refusal {
    /// The HTTP status code C2SP tlog-witness assigns.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Forbidden(_) => 403,
            Self::UnknownOrigin(_) => 404,
            Self::Conflict { .. } => 409,
            Self::Unprocessable(_) => 422,
        }
    }

    /// The answer's content type and body: for 409 the latest size as `text/x.tlog.size`,
    /// otherwise the reason as plain text.
    pub fn body(&self) -> (&'static str, Vec<u8>) {
        match self {
            Self::Conflict { latest, .. } => {
                (SIZE_CONTENT_TYPE, format!("{latest}\n").into_bytes())
            }
            other => (
                "text/plain; charset=utf-8",
                format!("{other}\n").into_bytes(),
            ),
        }
    }
}

/// Parse a 409 answer body: the witness's latest size, a canonical decimal and a newline.
pub fn parse_size_body(body: &[u8]) -> Result<u64, LogError> {
    std::str::from_utf8(body)
        .ok()
        .and_then(|s| s.strip_suffix('\n'))
        .and_then(parse_decimal)
        .ok_or_else(|| {
            malformed(format!(
                "a {SIZE_CONTENT_TYPE} body must be a decimal size and a newline, got {:?}",
                String::from_utf8_lossy(&body[..body.len().min(64)])
            ))
        })
}

/// A checkpoint the witness accepted and cosigned. Only [`Witness::check`] makes one; the
/// caller persists [`Witness::state_with`] and then hands it to [`Witness::record`].
#[derive(Debug, Clone)]
#[must_use = "the witness's state must be persisted and recorded before answering"]
pub struct Cosigned {
    checkpoint: Checkpoint,
    response: String,
}

impl Cosigned {
    /// The accepted checkpoint body.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }
}

/// A witness: its cosigning key, the logs it witnesses (origin → trusted log keys) and the
/// latest checkpoint it cosigned per origin.
#[derive(Debug, Clone)]
pub struct Witness {
    cosigner: Cosigner,
    logs: BTreeMap<String, Vec<NoteVerifier>>,
    latest: BTreeMap<String, Checkpoint>,
}

impl Witness {
    /// A witness with no recorded state that trusts `logs` (origin, log verifier key; an origin
    /// may be listed with several keys, e.g. during a key rotation).
    pub fn new(
        cosigner: Cosigner,
        logs: impl IntoIterator<Item = (String, NoteVerifier)>,
    ) -> Result<Self, LogError> {
        let mut map: BTreeMap<String, Vec<NoteVerifier>> = BTreeMap::new();
        for (origin, key) in logs {
            if origin.is_empty() || origin.chars().any(char::is_control) {
                return Err(LogError::InvalidArgument(format!(
                    "log origin {origin:?} is empty or has a control character"
                )));
            }
            map.entry(origin).or_default().push(key);
        }
        if map.is_empty() {
            return Err(LogError::InvalidArgument(
                "a witness needs at least one log (origin and verifier key) to witness".into(),
            ));
        }
        Ok(Self {
            cosigner,
            logs: map,
            latest: BTreeMap::new(),
        })
    }

    /// The cosigning key.
    pub fn cosigner(&self) -> &Cosigner {
        &self.cosigner
    }

    /// The latest checkpoint cosigned for `origin`.
    pub fn latest(&self, origin: &str) -> Option<&Checkpoint> {
        self.latest.get(origin)
    }

    /// C2SP tlog-witness "add-checkpoint": decide on a request body, cosigning at `now` (POSIX
    /// seconds). Nothing changes until [`Witness::record`]; the check, persisting the state and
    /// recording must happen under one lock (the spec's rollback race).
    pub fn check(&self, body: &[u8], now: u64) -> Result<Cosigned, Refusal> {
        // 1. Parse the request (400).
        let req = AddCheckpoint::parse(body).map_err(|e| Refusal::BadRequest(e.to_string()))?;
        // 2. Parse the checkpoint body before any signature work (400).
        let text = note_text(&req.checkpoint).ok_or_else(|| {
            Refusal::BadRequest(
                "the checkpoint is not a signed note (no empty line before its signatures)".into(),
            )
        })?;
        let unverified = Checkpoint::parse(text).map_err(|e| Refusal::BadRequest(e.to_string()))?;
        // 3. "If the checkpoint origin is unknown, the witness MUST respond with a 404".
        let Some(keys) = self.logs.get(&unverified.origin) else {
            return Err(Refusal::UnknownOrigin(format!(
                "this witness does not witness the log {:?}",
                unverified.origin
            )));
        };
        // 4. "If none of the signatures verify against a trusted public key ... 403". Signatures
        // from unknown keys are ignored (C2SP signed-note).
        let keys: Vec<&NoteVerifier> = keys.iter().collect();
        let opened = open_note(&req.checkpoint, &keys).map_err(|e| match e {
            LogError::MalformedNote(m) => {
                Refusal::BadRequest(format!("malformed signed note: {m}"))
            }
            other => Refusal::Forbidden(format!(
                "the checkpoint of {:?} is not signed by a key this witness trusts for it: {other}",
                unverified.origin
            )),
        })?;
        let cp = Checkpoint::parse(&opened.text).map_err(|e| Refusal::BadRequest(e.to_string()))?;
        if cp != unverified {
            return Err(Refusal::BadRequest(
                "the signed note's text is not the checkpoint body".into(),
            ));
        }
        // 5. "The old size MUST be equal to or lower than the checkpoint size. Otherwise ... 400".
        if req.old_size > cp.size {
            return Err(Refusal::BadRequest(format!(
                "old size {} is larger than the checkpoint's size {}",
                req.old_size, cp.size
            )));
        }
        // 6. The old size must be the latest cosigned size (or 0): else 409 with that size.
        let latest = self.latest.get(&cp.origin);
        let (latest_size, latest_root) = latest.map_or((0, EMPTY_ROOT), |l| (l.size, l.root_hash));
        if req.old_size != latest_size {
            return Err(Refusal::Conflict {
                latest: latest_size,
                reason: format!(
                    "old size {} is not this witness's latest size {latest_size} for {:?}",
                    req.old_size, cp.origin
                ),
            });
        }
        // 7. "If the old size matches the checkpoint size, the witness MUST check that the root
        // hashes are also identical. If they don't match ... 409".
        if req.old_size == cp.size && cp.size > 0 && latest_root != cp.root_hash {
            return Err(Refusal::Conflict {
                latest: latest_size,
                reason: format!(
                    "a different checkpoint of size {} was cosigned before: the log {:?} equivocated",
                    cp.size, cp.origin
                ),
            });
        }
        // 8. RFC 6962 §2.1.2 consistency proof from the latest checkpoint (empty from size 0,
        // whose root is the empty tree's): else 422. A tree of size 0 must have that root too.
        if cp.size == 0 && cp.root_hash != EMPTY_ROOT {
            return Err(Refusal::Unprocessable(
                "a checkpoint of size 0 must carry the root of the empty tree".into(),
            ));
        }
        let old_root = if req.old_size == 0 {
            EMPTY_ROOT
        } else {
            latest_root
        };
        verify_consistency(req.old_size, cp.size, &old_root, &cp.root_hash, &req.proof)
            .map_err(|e| Refusal::Unprocessable(e.to_string()))?;
        // 9. C2SP tlog-cosignature over the checkpoint body.
        let response = self.cosigner.cosignature_line(&opened.text, now);
        Ok(Cosigned {
            checkpoint: cp,
            response,
        })
    }

    /// The state encoding as it will be once `c` is recorded: persist this before answering.
    pub fn state_with(&self, c: &Cosigned) -> Vec<u8> {
        let mut latest = self.latest.clone();
        latest.insert(c.checkpoint.origin.clone(), c.checkpoint.clone());
        encode_state(&latest)
    }

    /// Record an accepted checkpoint as the latest for its origin (after its state was
    /// persisted); returns the answer body, the cosignature line(s).
    pub fn record(&mut self, c: Cosigned) -> String {
        self.latest
            .insert(c.checkpoint.origin.clone(), c.checkpoint);
        c.response
    }

    /// The current state encoding.
    pub fn encode_state(&self) -> Vec<u8> {
        encode_state(&self.latest)
    }

    /// Replace the recorded state by a decoded one ([`Witness::encode_state`]). Origins no
    /// longer configured are kept, so re-adding a log does not forget what was cosigned.
    pub fn restore_state(&mut self, bytes: &[u8]) -> Result<(), LogError> {
        self.latest = decode_state(bytes)?;
        Ok(())
    }
}

/// `tandem-witness-state/v1\n`, then per origin (sorted) an empty line and the latest
/// checkpoint body (C2SP tlog-checkpoint, which has no empty lines).
fn encode_state(latest: &BTreeMap<String, Checkpoint>) -> Vec<u8> {
    let mut s = String::new();
    let _ = writeln!(s, "{STATE_MAGIC}");
    for cp in latest.values() {
        s.push('\n');
        s.push_str(&cp.encode());
    }
    s.into_bytes()
}

/// Most origins a state file may hold.
const MAX_STATE_ORIGINS: usize = 10_000;

fn decode_state(bytes: &[u8]) -> Result<BTreeMap<String, Checkpoint>, LogError> {
    let bad = |why: String| LogError::MalformedCheckpoint(format!("witness state: {why}"));
    let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
    let rest = text
        .strip_prefix(STATE_MAGIC)
        .and_then(|r| r.strip_prefix('\n'))
        .ok_or_else(|| bad(format!("does not start with {STATE_MAGIC:?}")))?;
    let mut latest = BTreeMap::new();
    if rest.is_empty() {
        return Ok(latest);
    }
    let rest = rest
        .strip_prefix('\n')
        .ok_or_else(|| bad("an empty line must precede each checkpoint".into()))?;
    for body in rest.split("\n\n") {
        // Every body but the last lost its final newline to the separator.
        let body = if body.ends_with('\n') {
            body.to_owned()
        } else {
            format!("{body}\n")
        };
        let cp = Checkpoint::parse(body.as_bytes())?;
        if latest.len() == MAX_STATE_ORIGINS {
            return Err(bad(format!("more than {MAX_STATE_ORIGINS} origins")));
        }
        if latest.insert(cp.origin.clone(), cp).is_some() {
            return Err(bad("an origin is listed twice".into()));
        }
    }
    if encode_state(&latest) != bytes {
        return Err(bad(
            "not in canonical form (sorted origins, one empty line between checkpoints)".into(),
        ));
    }
    Ok(latest)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::log::merkle::MemoryTree;
    use crate::log::note::{NoteSigner, WitnessPolicy, open_checkpoint, sign_checkpoint};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const ORIGIN: &str = "witness-test.tandem/log";
    const NOW: u64 = 1_760_000_000;

    struct Setup {
        log: NoteSigner,
        tree: MemoryTree,
        witness: Witness,
    }

    fn setup() -> Setup {
        let mut rng = StdRng::seed_from_u64(20);
        let (log, _) = NoteSigner::generate_with_rng(&mut rng, ORIGIN).unwrap();
        let cosigner = Cosigner::generate_with_rng(&mut rng, "witness.test/w1").unwrap();
        let witness = Witness::new(cosigner, [(ORIGIN.to_owned(), log.verifier())]).unwrap();
        let mut tree = MemoryTree::new();
        for i in 0..20u32 {
            tree.push(&i.to_be_bytes());
        }
        Setup { log, tree, witness }
    }

    fn signed(s: &Setup, tree: &MemoryTree, size: u64) -> Vec<u8> {
        let cp = Checkpoint::new(ORIGIN, size, tree.root(size).unwrap());
        sign_checkpoint(&cp, &s.log).unwrap()
    }

    fn request(s: &Setup, tree: &MemoryTree, old: u64, size: u64) -> Vec<u8> {
        let proof = if old == 0 {
            Vec::new()
        } else {
            tree.consistency_proof(old, size).unwrap()
        };
        AddCheckpoint {
            old_size: old,
            proof,
            checkpoint: signed(s, tree, size),
        }
        .encode()
    }

    fn accept(s: &mut Setup, body: &[u8]) -> String {
        let c = s.witness.check(body, NOW).unwrap();
        let state = s.witness.state_with(&c);
        let line = s.witness.record(c);
        assert_eq!(state, s.witness.encode_state());
        line
    }

    #[test]
    fn spec_example_request_parses_and_round_trips() {
        let body = "old 20852014\nPlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\njrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n";
        let r = AddCheckpoint::parse(body.as_bytes()).unwrap();
        assert_eq!(r.old_size, 20_852_014);
        assert_eq!(r.proof.len(), 4);
        assert!(r.checkpoint.starts_with(b"example.com/behind-the-sofa\n"));
        assert_eq!(r.encode(), body.as_bytes());
    }

    #[test]
    fn cosigns_a_growing_log_and_the_cosignature_verifies() {
        let mut s = setup();
        let tree = s.tree.clone();
        // First contact: old size 0, empty proof.
        let line = {
            let b = request(&s, &tree, 0, 5);
            accept(&mut s, &b)
        };
        let mut note = signed(&s, &tree, 5);
        note.extend_from_slice(line.as_bytes());
        let policy = WitnessPolicy::new(vec![s.witness.cosigner().key()], 1).unwrap();
        let v = open_checkpoint(&note, &s.log.verifier(), Some(&policy), Some((NOW, 0))).unwrap();
        assert_eq!(v.cosignatures()[0].timestamp, NOW);
        // Then from 5 to 12, and the same checkpoint again (idempotent).
        {
            let b = request(&s, &tree, 5, 12);
            accept(&mut s, &b)
        };
        {
            let b = request(&s, &tree, 12, 12);
            accept(&mut s, &b)
        };
        assert_eq!(s.witness.latest(ORIGIN).unwrap().size, 12);
    }

    #[test]
    fn refusals_carry_the_spec_status() {
        let mut s = setup();
        let tree = s.tree.clone();
        {
            let b = request(&s, &tree, 0, 8);
            accept(&mut s, &b)
        };
        // Wrong old size: 409 with the latest size.
        let r = s
            .witness
            .check(&request(&s, &tree, 3, 10), NOW)
            .unwrap_err();
        assert_eq!(r.status(), 409);
        assert_eq!(r.body(), (SIZE_CONTENT_TYPE, b"8\n".to_vec()));
        assert_eq!(parse_size_body(&r.body().1).unwrap(), 8);
        // Old size above the checkpoint's size (a smaller checkpoint): 400.
        let body = AddCheckpoint {
            old_size: 8,
            proof: vec![],
            checkpoint: signed(&s, &tree, 6),
        }
        .encode();
        assert_eq!(s.witness.check(&body, NOW).unwrap_err().status(), 400);
        // A proof that does not verify: 422.
        let mut proof = tree.consistency_proof(8, 10).unwrap();
        proof[0][0] ^= 1;
        let body = AddCheckpoint {
            old_size: 8,
            proof,
            checkpoint: signed(&s, &tree, 10),
        }
        .encode();
        assert_eq!(s.witness.check(&body, NOW).unwrap_err().status(), 422);
        // A fork: same origin and key, another history.
        let mut fork = MemoryTree::new();
        for i in 0..20u32 {
            fork.push(&(i + 1000).to_be_bytes());
        }
        let body = AddCheckpoint {
            old_size: 8,
            proof: fork.consistency_proof(8, 10).unwrap(),
            checkpoint: signed(&s, &fork, 10),
        }
        .encode();
        assert_eq!(s.witness.check(&body, NOW).unwrap_err().status(), 422);
        // Same size, another root: 409.
        let body = AddCheckpoint {
            old_size: 8,
            proof: vec![],
            checkpoint: signed(&s, &fork, 8),
        }
        .encode();
        assert_eq!(s.witness.check(&body, NOW).unwrap_err().status(), 409);
        // Signed by another key: 403. Unknown origin: 404.
        let mut rng = StdRng::seed_from_u64(99);
        let (other, _) = NoteSigner::generate_with_rng(&mut rng, ORIGIN).unwrap();
        let cp = Checkpoint::new(ORIGIN, 10, tree.root(10).unwrap());
        let body = AddCheckpoint {
            old_size: 8,
            proof: tree.consistency_proof(8, 10).unwrap(),
            checkpoint: sign_checkpoint(&cp, &other).unwrap(),
        }
        .encode();
        assert_eq!(s.witness.check(&body, NOW).unwrap_err().status(), 403);
        let (stranger, _) = NoteSigner::generate_with_rng(&mut rng, "other.log").unwrap();
        let cp = Checkpoint::new("other.log", 10, tree.root(10).unwrap());
        let body = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            checkpoint: sign_checkpoint(&cp, &stranger).unwrap(),
        }
        .encode();
        assert_eq!(s.witness.check(&body, NOW).unwrap_err().status(), 404);
        // A checkpoint of size 0 must have the empty tree's root.
        let mut fresh = setup();
        let body = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            checkpoint: sign_checkpoint(&Checkpoint::new(ORIGIN, 0, [1; 32]), &fresh.log).unwrap(),
        }
        .encode();
        assert_eq!(fresh.witness.check(&body, NOW).unwrap_err().status(), 422);
        let body = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            checkpoint: sign_checkpoint(&Checkpoint::new(ORIGIN, 0, EMPTY_ROOT), &fresh.log)
                .unwrap(),
        }
        .encode();
        accept(&mut fresh, &body);
        // Nothing above changed the state.
        assert_eq!(s.witness.latest(ORIGIN).unwrap().size, 8);
    }

    #[test]
    fn state_round_trips_and_is_strict() {
        let mut s = setup();
        let tree = s.tree.clone();
        assert_eq!(s.witness.encode_state(), b"tandem-witness-state/v1\n");
        {
            let b = request(&s, &tree, 0, 7);
            accept(&mut s, &b)
        };
        let enc = s.witness.encode_state();
        let mut w2 = Witness::new(
            s.witness.cosigner().clone(),
            [(ORIGIN.to_owned(), s.log.verifier())],
        )
        .unwrap();
        w2.restore_state(&enc).unwrap();
        assert_eq!(w2.latest(ORIGIN), s.witness.latest(ORIGIN));
        // Two origins.
        let mut two = decode_state(&enc).unwrap();
        two.insert("a.log".into(), Checkpoint::new("a.log", 3, [7; 32]));
        let enc2 = encode_state(&two);
        assert_eq!(decode_state(&enc2).unwrap(), two);
        for cut in 0..enc2.len() {
            if let Ok(d) = decode_state(&enc2[..cut]) {
                assert_ne!(d, two, "cut {cut}");
            }
        }
        for i in 0..enc2.len() {
            let mut m = enc2.clone();
            m[i] ^= 0x01;
            if let Ok(d) = decode_state(&m) {
                assert_eq!(encode_state(&d), m, "byte {i}: decoding must be canonical");
            }
        }
    }

    #[test]
    fn truncation_at_every_offset_is_refused_or_differs() {
        let mut s = setup();
        let tree = s.tree.clone();
        {
            let b = request(&s, &tree, 0, 5);
            accept(&mut s, &b)
        };
        let body = request(&s, &tree, 5, 13);
        let whole = AddCheckpoint::parse(&body).unwrap();
        for cut in 0..body.len() {
            if let Ok(r) = AddCheckpoint::parse(&body[..cut]) {
                assert_ne!(r, whole, "cut {cut}");
            }
            assert!(
                s.witness.check(&body[..cut], NOW).is_err(),
                "cut {cut} was cosigned"
            );
        }
        assert!(s.witness.check(&body, NOW).is_ok());
    }

    #[test]
    fn flipping_any_byte_is_refused_or_harmless() {
        let mut s = setup();
        let tree = s.tree.clone();
        {
            let b = request(&s, &tree, 0, 5);
            accept(&mut s, &b)
        };
        let body = request(&s, &tree, 5, 13);
        for i in 0..body.len() {
            for bit in [0x01u8, 0x20, 0x80] {
                let mut m = body.clone();
                m[i] ^= bit;
                if let Ok(r) = AddCheckpoint::parse(&m) {
                    assert_eq!(r.encode(), m, "byte {i}: parsing must be canonical");
                }
                // A flipped byte may only be accepted if it left the checkpoint body, the proof
                // and the old size as they were (e.g. it hit the note signature's key name of
                // an unknown extra signature, which does not exist here).
                if let Ok(c) = s.witness.check(&m, NOW) {
                    let orig = AddCheckpoint::parse(&body).unwrap();
                    let got = AddCheckpoint::parse(&m).unwrap();
                    assert_eq!((got.old_size, &got.proof), (orig.old_size, &orig.proof));
                    assert_eq!(c.checkpoint().size, 13, "byte {i}");
                    assert_eq!(c.checkpoint().root_hash, tree.root(13).unwrap(), "byte {i}");
                }
            }
        }
    }

    #[test]
    fn parse_rejects_malformed_bodies() {
        let note = "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\u{2014} o AAAA\n";
        for bad in [
            String::new(),
            "old 1".into(),
            "old 01\n\n".to_owned() + note,
            "old -1\n\n".to_owned() + note,
            "old  1\n\n".to_owned() + note,
            "Old 1\n\n".to_owned() + note,
            "old 18446744073709551616\n\n".to_owned() + note,
            "old 1\n".to_owned() + note,
            "old 1\nAAAA\n\n".to_owned() + note,
            "old 1\n\n".into(),
            format!(
                "old 1\n{}\n{note}",
                "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n".repeat(64)
            ),
        ] {
            assert!(AddCheckpoint::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let ok = format!(
            "old 1\n{}\n{note}",
            "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n".repeat(63)
        );
        assert_eq!(AddCheckpoint::parse(ok.as_bytes()).unwrap().proof.len(), 63);
        let huge = vec![b'a'; MAX_ADD_CHECKPOINT_LEN + 1];
        assert!(AddCheckpoint::parse(&huge).is_err());
    }

    #[test]
    fn cosigner_private_key_round_trips() {
        let mut rng = StdRng::seed_from_u64(3);
        let c = Cosigner::generate_with_rng(&mut rng, "w.example/1").unwrap();
        let back = Cosigner::from_skey(&c.private_key()).unwrap();
        assert_eq!(back.key(), c.key());
        assert!(
            Cosigner::from_skey(&c.private_key().replace("w.example/1", "w.example/2")).is_err()
        );
        let (log, skey) = NoteSigner::generate_with_rng(&mut rng, "log").unwrap();
        let _ = log;
        assert!(
            Cosigner::from_skey(&skey).is_err(),
            "a log key is not a witness key"
        );
    }
}
