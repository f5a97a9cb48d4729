//! The log's side of C2SP tlog-witness: submitting each new checkpoint to the configured
//! witnesses (`POST <prefix>/add-checkpoint` with a consistency proof from the size each witness
//! last cosigned) and collecting their C2SP tlog-cosignature lines.
//!
//! The request and answer formats and the witness's rules are pure code in
//! [`tandem_attest::log::witness`]; this file moves the bytes. A witness's answer is untrusted:
//! only cosignature lines that verify under that witness's configured key over this
//! checkpoint are kept.
//!
//! How the server uses it ([`crate::server`]): with witnesses configured, `GET /checkpoint`
//! serves the newest checkpoint that went through a witness round. A round that gathers the
//! quorum publishes the checkpoint with every cosignature line appended. A round that does not
//! still publishes the checkpoint (log-signed, with the cosignatures it did get), says so on
//! standard error, and is retried with a back-off until the quorum is reached or a newer
//! checkpoint supersedes it: readers are never held back, and verifiers that require
//! witnesses refuse the under-cosigned checkpoint until then.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use thiserror::Error;

use tandem_attest::log::Checkpoint;
use tandem_attest::log::merkle::Hash;
use tandem_attest::log::note::{CosignerKey, NoteVerifier, WitnessPolicy, open_checkpoint};
use tandem_attest::log::witness::{AddCheckpoint, SIZE_CONTENT_TYPE, parse_size_body};

/// Most witnesses a log may submit to (a published note carries at most 100 signatures).
pub const MAX_WITNESSES: usize = 32;

/// Largest witness answer read: a few cosignature lines.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// 409 answers followed in one submission before giving up (the first contact learns the
/// witness's size; a second 409 means the witness moved meanwhile).
const MAX_CONFLICTS: usize = 3;

/// A witness to submit checkpoints to: its submission prefix and its cosigner key.
#[derive(Debug, Clone)]
pub struct WitnessTarget {
    /// Submission prefix, e.g. `http://127.0.0.1:8081` (`/add-checkpoint` is appended).
    pub url: String,
    /// The witness's cosignature verifier key.
    pub key: CosignerKey,
}

impl WitnessTarget {
    /// Parse `URL=VKEY` (split at the first `=`; a verifier key ends in base64 that may itself
    /// contain `=`).
    pub fn parse(arg: &str) -> Result<Self, WitnessError> {
        let bad = |why: String| WitnessError::Config(format!("--witness {arg:?}: {why}"));
        let (url, vkey) = arg
            .split_once('=')
            .ok_or_else(|| bad("expected URL=VKEY".into()))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad(format!("{url:?} is not an http:// or https:// URL")));
        }
        let key = CosignerKey::new(vkey).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            key,
        })
    }
}

/// Which witnesses the log submits to, and how many cosignatures make a checkpoint witnessed.
#[derive(Debug, Clone)]
pub struct WitnessConfig {
    targets: Vec<WitnessTarget>,
    quorum: usize,
    log_key: NoteVerifier,
    timeout: Duration,
}

impl WitnessConfig {
    /// `quorum` of `targets` (1..=n; distinct witness names), the log's own verifier key (to
    /// check what witnesses return), each request bounded by `timeout`.
    pub fn new(
        targets: Vec<WitnessTarget>,
        quorum: usize,
        log_key: NoteVerifier,
        timeout: Duration,
    ) -> Result<Self, WitnessError> {
        if targets.is_empty() || targets.len() > MAX_WITNESSES {
            return Err(WitnessError::Config(format!(
                "{} witnesses given; between 1 and {MAX_WITNESSES} are allowed",
                targets.len()
            )));
        }
        if quorum == 0 || quorum > targets.len() {
            return Err(WitnessError::Config(format!(
                "--witness-quorum {quorum} must be between 1 and the number of witnesses ({})",
                targets.len()
            )));
        }
        for (i, t) in targets.iter().enumerate() {
            if targets[..i].iter().any(|o| o.key.name() == t.key.name()) {
                return Err(WitnessError::Config(format!(
                    "witness {} is listed twice",
                    t.key.name()
                )));
            }
        }
        Ok(Self {
            targets,
            quorum,
            log_key,
            timeout,
        })
    }

    /// Number of cosignatures that make a checkpoint witnessed.
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// The witnesses.
    pub fn targets(&self) -> &[WitnessTarget] {
        &self.targets
    }
}

/// Why a witness did not cosign.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WitnessError {
    /// The witness configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// The witness could not be reached or its answer could not be read.
    #[error("POST {url}: {reason}; is the witness running?")]
    Http {
        /// The URL posted to.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The witness refused the checkpoint (C2SP tlog-witness status codes).
    #[error("POST {url}: the witness refused with {status}: {message}")]
    Refused {
        /// The URL posted to.
        url: String,
        /// HTTP status.
        status: u16,
        /// The witness's message.
        message: String,
    },
    /// The witness answered something that is not a valid cosignature of this checkpoint.
    #[error("POST {url}: {reason}")]
    BadAnswer {
        /// The URL posted to.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The log could not build the consistency proof the witness needs.
    #[error("consistency proof from {old} to {new}: {reason}")]
    Proof {
        /// Old size.
        old: u64,
        /// New size.
        new: u64,
        /// Why.
        reason: String,
    },
}

/// Builds RFC 9162 consistency proofs from the log's own tree: `(old, new) -> proof`.
pub type ProofSource = Arc<dyn Fn(u64, u64) -> Result<Vec<Hash>, String> + Send + Sync>;

/// One witness and what the log knows of it: the size it last cosigned (None until the first
/// answer; the first submission then says `old 0` and learns the size from a 409).
#[derive(Debug)]
struct WitnessClient {
    target: WitnessTarget,
    http: reqwest::Client,
    cosigned_size: Option<u64>,
}

/// Read at most `limit` bytes of a response body.
async fn read_bounded(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > limit {
            return Err(format!("the answer is longer than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

impl WitnessClient {
    /// C2SP tlog-witness "add-checkpoint": submit `note` (whose body is `cp`) and return this
    /// witness's verified cosignature line(s).
    async fn cosign(
        &mut self,
        note: &[u8],
        cp: &Checkpoint,
        proofs: &ProofSource,
        log_key: &NoteVerifier,
    ) -> Result<String, WitnessError> {
        let url = format!("{}/add-checkpoint", self.target.url);
        let mut old = self.cosigned_size.unwrap_or(0);
        for _ in 0..MAX_CONFLICTS {
            if old > cp.size {
                return Err(WitnessError::Refused {
                    url,
                    status: 409,
                    message: format!(
                        "the witness has cosigned size {old} of {}, larger than this log's size {}; \
                         the log lost entries or another log uses this origin",
                        cp.origin, cp.size
                    ),
                });
            }
            let proof = if old == 0 || old == cp.size {
                Vec::new()
            } else {
                proofs(old, cp.size).map_err(|reason| WitnessError::Proof {
                    old,
                    new: cp.size,
                    reason,
                })?
            };
            let body = AddCheckpoint {
                old_size: old,
                proof,
                checkpoint: note.to_vec(),
            }
            .encode();
            let http_err = |e: String| WitnessError::Http {
                url: url.clone(),
                reason: e,
            };
            let resp = self
                .http
                .post(&url)
                .body(body)
                .send()
                .await
                .map_err(|e| http_err(e.to_string()))?;
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let answer = read_bounded(resp, MAX_ANSWER_BYTES)
                .await
                .map_err(http_err)?;
            match status {
                200 => {
                    let lines = verified_lines(note, &answer, &self.target.key, log_key).map_err(
                        |reason| WitnessError::BadAnswer {
                            url: url.clone(),
                            reason,
                        },
                    )?;
                    self.cosigned_size = Some(cp.size);
                    return Ok(lines);
                }
                409 if content_type.starts_with(SIZE_CONTENT_TYPE) => {
                    let latest = parse_size_body(&answer).map_err(|e| WitnessError::BadAnswer {
                        url: url.clone(),
                        reason: e.to_string(),
                    })?;
                    self.cosigned_size = Some(latest);
                    if latest == old {
                        // Same size, another root: the witness saw a different tree.
                        return Err(WitnessError::Refused {
                            url,
                            status,
                            message: format!(
                                "the witness cosigned another checkpoint of size {latest}: the log \
                                 {} was forked or another log uses this origin",
                                cp.origin
                            ),
                        });
                    }
                    old = latest;
                }
                _ => {
                    if status == 422 {
                        // The witness's tree is not a prefix of ours: forget its size so the
                        // next round asks again.
                        self.cosigned_size = None;
                    }
                    return Err(WitnessError::Refused {
                        url,
                        status,
                        message: String::from_utf8_lossy(&answer).trim().to_owned(),
                    });
                }
            }
        }
        Err(WitnessError::Refused {
            url,
            status: 409,
            message: format!("still conflicting after {MAX_CONFLICTS} attempts"),
        })
    }
}

/// The signature lines of `answer` that are `key`'s valid cosignatures of `note`'s checkpoint
/// (lines of other keys are ignored, C2SP tlog-witness); at least one is required.
fn verified_lines(
    note: &[u8],
    answer: &[u8],
    key: &CosignerKey,
    log_key: &NoteVerifier,
) -> Result<String, String> {
    let text = std::str::from_utf8(answer).map_err(|_| "the answer is not UTF-8".to_owned())?;
    if !text.ends_with('\n') {
        return Err("the answer does not end in a newline".into());
    }
    let policy = WitnessPolicy::new(vec![key.clone()], 1).map_err(|e| e.to_string())?;
    let mut kept = String::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("\u{2014} ") else {
            return Err(format!("{line:?} is not a note signature line"));
        };
        // C2SP signed-note: a signature is from this key only if both the name and the key id
        // (the first 4 bytes of the signature) match; others are ignored.
        let mut fields = rest.split(' ');
        let (Some(name), Some(sig), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(format!("{line:?} is not a note signature line"));
        };
        let id = B64.decode(sig).ok().and_then(|b| {
            b.get(..4)
                .map(|id| u32::from_be_bytes([id[0], id[1], id[2], id[3]]))
        });
        if name != key.name() || id != Some(key.key_id()) {
            continue;
        }
        let mut msg = note.to_vec();
        msg.extend_from_slice(line.as_bytes());
        msg.push(b'\n');
        match open_checkpoint(&msg, log_key, Some(&policy), None) {
            Ok(_) => {
                kept.push_str(line);
                kept.push('\n');
            }
            Err(e) => {
                return Err(format!(
                    "the cosignature of {} does not verify over this checkpoint: {e}",
                    key.name()
                ));
            }
        }
    }
    if kept.is_empty() {
        return Err(format!("the answer has no cosignature by {}", key.name()));
    }
    Ok(kept)
}

/// What one round of submissions gave.
#[derive(Debug)]
pub struct Round {
    /// The checkpoint note with every verified cosignature line appended.
    pub note: Vec<u8>,
    /// Witnesses that cosigned.
    pub cosigned: usize,
    /// Why the others did not.
    pub failures: Vec<WitnessError>,
}

/// The witnesses of one log and what it knows of each.
#[derive(Debug)]
pub struct Witnesses {
    clients: Vec<WitnessClient>,
    quorum: usize,
    log_key: NoteVerifier,
}

impl Witnesses {
    /// Clients for `config`'s witnesses.
    pub fn new(config: WitnessConfig) -> Result<Self, WitnessError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| WitnessError::Config(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            clients: config
                .targets
                .into_iter()
                .map(|target| WitnessClient {
                    target,
                    http: http.clone(),
                    cosigned_size: None,
                })
                .collect(),
            quorum: config.quorum,
            log_key: config.log_key,
        })
    }

    /// Cosignatures needed.
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// Submit the signed checkpoint `note` to every witness at once and collect their
    /// cosignatures.
    pub async fn round(&mut self, note: &[u8], proofs: &ProofSource) -> Round {
        let cp = match tandem_attest::log::note::open_note(note, &[&self.log_key])
            .and_then(|o| Checkpoint::parse(&o.text))
        {
            Ok(cp) => cp,
            Err(e) => {
                return Round {
                    note: note.to_vec(),
                    cosigned: 0,
                    failures: vec![WitnessError::Config(format!(
                        "the log's own checkpoint does not verify under its key: {e}"
                    ))],
                };
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        for (i, mut client) in std::mem::take(&mut self.clients).into_iter().enumerate() {
            let (note, cp, proofs, log_key) = (
                note.to_vec(),
                cp.clone(),
                proofs.clone(),
                self.log_key.clone(),
            );
            tasks.spawn(async move {
                let r = client.cosign(&note, &cp, &proofs, &log_key).await;
                (i, client, r)
            });
        }
        let mut done = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(x) => done.push(x),
                // A task only ends without its value if it panicked: a bug, not a witness
                // failure; the client is lost and will be missing from later rounds.
                Err(e) => eprintln!("attest log: a witness submission task failed: {e}"),
            }
        }
        done.sort_by_key(|(i, _, _)| *i);
        let mut out = note.to_vec();
        let (mut cosigned, mut failures) = (0, Vec::new());
        for (_, client, r) in done {
            match r {
                Ok(lines) => {
                    out.extend_from_slice(lines.as_bytes());
                    cosigned += 1;
                }
                Err(e) => failures.push(e),
            }
            self.clients.push(client);
        }
        Round {
            note: out,
            cosigned,
            failures,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tandem_attest::log::note::{Cosigner, NoteSigner, sign_checkpoint};

    /// Throwaway keys (`attest log keygen`, `attest witness keygen`).
    const LOG: &str =
        "PRIVATE+KEY+unit.test/log+32fbd903+AS/cSVzfVgmy3AgHsojvjVQbOrsJNWmLmSE8gTM/gI/+";
    const W1: &str =
        "PRIVATE+KEY+fuzz.witness+682a3bf2+BLDyeJQ5co1bKwD+6XisKQxJMQeTeasR3hQkU/lMkCn3";
    const W2: &str =
        "PRIVATE+KEY+other.witness+79f40521+BCipwJPsFWm92AhREL5ELM9QQnC/UcpVzXjicsiNfNmh";

    #[test]
    fn only_valid_cosignatures_of_the_configured_key_are_kept() {
        let log = NoteSigner::from_skey(LOG).unwrap();
        let (w1, w2) = (
            Cosigner::from_skey(W1).unwrap(),
            Cosigner::from_skey(W2).unwrap(),
        );
        let cp = Checkpoint::new("unit.test/log", 3, [9; 32]);
        let note = sign_checkpoint(&cp, &log).unwrap();
        let text = cp.encode();
        let l1 = w1.cosignature_line(text.as_bytes(), 100);
        let l2 = w2.cosignature_line(text.as_bytes(), 100);
        let v = log.verifier();
        // Another witness's line is ignored; ours is kept.
        let got = verified_lines(&note, format!("{l2}{l1}").as_bytes(), &w1.key(), &v).unwrap();
        assert_eq!(got, l1);
        // Only other witnesses: refused.
        assert!(verified_lines(&note, l2.as_bytes(), &w1.key(), &v).is_err());
        // Our line over another checkpoint: refused.
        let other = w1.cosignature_line(
            Checkpoint::new("unit.test/log", 4, [9; 32])
                .encode()
                .as_bytes(),
            100,
        );
        assert!(verified_lines(&note, other.as_bytes(), &w1.key(), &v).is_err());
        // Not signature lines, no final newline: refused.
        assert!(verified_lines(&note, b"hello\n", &w1.key(), &v).is_err());
        assert!(verified_lines(&note, l1.trim_end().as_bytes(), &w1.key(), &v).is_err());
    }

    #[test]
    fn witness_targets_and_config_are_checked() {
        let k = Cosigner::from_skey(W1).unwrap().key().vkey();
        let t = WitnessTarget::parse(&format!("http://w:1/=={k}")).map(|t| t.url);
        assert!(t.is_err(), "the first = splits: {t:?}");
        let t = WitnessTarget::parse(&format!("http://w:1/prefix/={k}")).unwrap();
        assert_eq!(t.url, "http://w:1/prefix");
        assert!(WitnessTarget::parse(&k).is_err());
        assert!(WitnessTarget::parse(&format!("w:1={k}")).is_err());
        let log = NoteSigner::from_skey(LOG).unwrap();
        let d = Duration::from_secs(1);
        let cfg = |ts: Vec<WitnessTarget>, k| WitnessConfig::new(ts, k, log.verifier(), d);
        assert!(cfg(vec![], 0).is_err());
        assert!(cfg(vec![t.clone()], 0).is_err());
        assert!(cfg(vec![t.clone()], 2).is_err());
        assert!(
            cfg(vec![t.clone(), t.clone()], 1).is_err(),
            "duplicate witness"
        );
        assert_eq!(cfg(vec![t], 1).unwrap().quorum(), 1);
    }
}
