//! Verification: parse, then run a numbered checklist, then hand out a proof token.
//!
//! [`Verifier::verify_node`] runs, in this order (the numbers in the report):
//!
//! 0. **parse** the bundle bytes into checked structures (no crypto yet);
//! 1. **root of trust**: the evidence's kind is one the policy accepts (`rootsOfTrust`, if
//!    set), its fleet certificate is signed by a fleet CA in the policy, with the role the
//!    proof needs, and the proof (signature or TPM quote) is signed by the certified key;
//! 2. **key binding**: the evidence binds the bundle's key configs (SHA-256 of their RFC 9458
//!    bytes), key expiry and release digest (for a TPM: qualifying data, and the launch event
//!    log replayed against the quoted PCR 13 under the policy's `tpmLaunch`), and the nonce the
//!    caller asked for, if any;
//! 3. **release signature and signer policy**: the DSSE signature verifies under an allowed
//!    release signer and the policy's release rule holds (signers, pinned digests);
//! 4. **log inclusion under a signed checkpoint**: the checkpoint is signed by a policy log key
//!    (and enough witnesses), and the release's log entry is included in it;
//! 5. **consistency with the newest known checkpoint**: the bundle's checkpoint and the newest
//!    one the caller has seen are consistent (a consistency proof, or equal roots at equal sizes);
//! 6. **required digests**: the release contains every model/adapter digest the caller needs;
//! 7. **expiry**: key expiry, certificate validity and checkpoint age against the caller's clock,
//!    with the policy's skew allowance.
//!
//! Only this module can construct [`VerifiedNode`] and [`VerifiedRelease`]; the device's sealing
//! API takes a `VerifiedNode`, so "sealed to an unverified node" does not compile.

mod cache;
mod logview;
pub mod policy;
pub mod report;

use std::sync::Arc;

use thiserror::Error;

pub use cache::VerificationCache;
pub use logview::{CheckedCheckpoint, KnownCheckpoint};
pub use policy::{Policy, ReleaseFacts, ReleaseRule};
pub use report::{Report, StepReport, StepStatus};

use crate::attestation::{AttestationBundle, KeyConfigList};
use crate::digest::Sha256Digest;
use crate::release::{ReleaseBundle, ReleaseManifest};
use report::Run;

/// Verification could not start (bad policy) or did not pass.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// The policy is unusable (caller misuse, not an attack).
    #[error("invalid policy: {0}")]
    Policy(String),
    /// A checklist step failed.
    #[error("verification failed at step {number} ({name}): {detail}")]
    Failed {
        /// Step number.
        number: u8,
        /// Step name.
        name: &'static str,
        /// What failed and what to check.
        detail: String,
    },
}

impl VerifyError {
    fn from_report(r: &Report) -> Self {
        match r.first_failure() {
            Some(s) => Self::Failed {
                number: s.number,
                name: s.name,
                detail: s.detail.clone(),
            },
            None => Self::Failed {
                number: 0,
                name: "report",
                detail: "no step passed".into(),
            },
        }
    }
}

/// Private: only this module can make one, so only the verifier constructs proof tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sealed(());

/// A release whose signature, signer policy and log inclusion were verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRelease {
    manifest: ReleaseManifest,
    digest: Sha256Digest,
    signers: Vec<String>,
    log_index: u64,
    checkpoint: CheckedCheckpoint,
    _sealed: Sealed,
}

impl VerifiedRelease {
    /// The manifest.
    pub fn manifest(&self) -> &ReleaseManifest {
        &self.manifest
    }
    /// The release digest.
    pub fn digest(&self) -> Sha256Digest {
        self.digest
    }
    /// Key ids of the signers whose signatures verified.
    pub fn signers(&self) -> &[String] {
        &self.signers
    }
    /// Index of the release's entry in the log.
    pub fn log_index(&self) -> u64 {
        self.log_index
    }
    /// The checkpoint the inclusion was proven under.
    pub fn checkpoint(&self) -> &CheckedCheckpoint {
        &self.checkpoint
    }
}

/// A node whose attestation bundle passed every step. The only input the sealing API accepts.
/// Cheap to clone (shared), so a cache hit hands out the same verified value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedNode {
    inner: Arc<NodeInner>,
}

#[derive(Debug, PartialEq, Eq)]
struct NodeInner {
    name: String,
    root_of_trust: &'static str,
    key_configs: KeyConfigList,
    key_expiry: u64,
    valid_until: u64,
    release: VerifiedRelease,
    _sealed: Sealed,
}

impl VerifiedNode {
    /// The node's name (its fleet certificate subject).
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    /// `"software"` or `"tpm2"`.
    pub fn root_of_trust(&self) -> &'static str {
        self.inner.root_of_trust
    }
    /// The node's HPKE key configs (RFC 9458 `application/ohttp-keys` bytes and entries).
    pub fn key_configs(&self) -> &KeyConfigList {
        &self.inner.key_configs
    }
    /// When the node's keys expire (Unix seconds).
    pub fn key_expiry(&self) -> u64 {
        self.inner.key_expiry
    }
    /// The earliest of key expiry, certificate expiry and checkpoint age limit (Unix seconds,
    /// skew allowance included): a cached verification is good until then.
    pub fn valid_until(&self) -> u64 {
        self.inner.valid_until
    }
    /// The verified release the node runs.
    pub fn release(&self) -> &VerifiedRelease {
        &self.inner.release
    }
}

/// What the caller brings to one verification.
#[derive(Debug, Clone, Default)]
pub struct VerifyContext<'a> {
    /// The caller's clock: seconds since the Unix epoch.
    pub now: u64,
    /// The newest checkpoint the caller has verified before, and a consistency proof between it
    /// and the bundle's checkpoint (in whichever direction the sizes need).
    pub known: Option<&'a KnownCheckpoint>,
    /// Model/adapter digests the release must contain.
    pub required_digests: &'a [Sha256Digest],
    /// The nonce the caller asked the node to include, if any.
    pub nonce: Option<&'a [u8]>,
}

/// The outcome: always a report; a proof token only if every step passed.
#[derive(Debug, Clone)]
pub struct NodeVerification {
    /// Per-step report.
    pub report: Report,
    /// Present iff `report.passed()`.
    pub node: Option<VerifiedNode>,
}

impl NodeVerification {
    /// The verified node, or the first failed step as an error.
    pub fn into_result(self) -> Result<VerifiedNode, VerifyError> {
        self.node
            .ok_or_else(|| VerifyError::from_report(&self.report))
    }
}

/// The outcome of a release verification.
#[derive(Debug, Clone)]
pub struct ReleaseVerification {
    /// Per-step report.
    pub report: Report,
    /// Present iff `report.passed()`.
    pub release: Option<VerifiedRelease>,
}

impl ReleaseVerification {
    /// The verified release, or the first failed step as an error.
    pub fn into_result(self) -> Result<VerifiedRelease, VerifyError> {
        self.release
            .ok_or_else(|| VerifyError::from_report(&self.report))
    }
}

/// Verifies attestation and release bundles under one policy.
#[derive(Debug, Clone)]
pub struct Verifier {
    policy: Policy,
}

/// Result of the release steps, threaded into the node verification.
struct ReleaseSteps {
    release: VerifiedRelease,
}

impl Verifier {
    /// A verifier for `policy`.
    pub fn new(policy: Policy) -> Self {
        Self { policy }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Parses and verifies a node attestation bundle.
    pub fn verify_node(&self, bundle_bytes: &[u8], cx: &VerifyContext<'_>) -> NodeVerification {
        let mut run = Run::new("node");
        // 0. Parse into checked structures before any crypto.
        let parsed = run.step(0, "parse", || {
            AttestationBundle::from_json(bundle_bytes)
                .map(|b| {
                    let d = format!(
                        "attestation bundle for {:?} ({} root, {} key config(s), release {})",
                        b.evidence().certificate().subject(),
                        b.evidence().kind(),
                        b.key_configs().entries().len(),
                        b.release().release_digest().short()
                    );
                    (b, d)
                })
                .map_err(|e| format!("{e}; is this a Tandem attestation bundle (application/vnd.tandem.attestation.v1+json)?"))
        });
        let node = parsed.and_then(|b| self.verify_parsed_node(&mut run, &b, cx));
        if node.is_none() {
            // Make sure every checklist step appears in the report.
            for (n, name) in NODE_STEPS.iter().enumerate().skip(run.report.steps.len()) {
                run.report.steps.push(StepReport {
                    number: n as u8,
                    name,
                    status: StepStatus::NotRun,
                    detail: "not run: an earlier step failed".into(),
                });
            }
        }
        NodeVerification {
            report: run.report,
            node,
        }
    }

    fn verify_parsed_node(
        &self,
        run: &mut Run,
        b: &AttestationBundle,
        cx: &VerifyContext<'_>,
    ) -> Option<VerifiedNode> {
        let ev = b.evidence();
        let claims = ev.claims();
        let skew = self.policy.clock_skew_secs;

        // 1. Root of trust.
        run.step(1, NODE_STEPS[1], || {
            let roots = &self.policy.roots_of_trust;
            if !roots.is_empty() && !roots.iter().any(|k| k == ev.kind()) {
                return Err(format!(
                    "evidence is from a {} root of trust but the policy accepts only {}; the node \
                     does not run on the hardware the policy requires",
                    ev.kind(),
                    roots.join(", ")
                ));
            }
            ev.verify_root(&self.policy.fleet_ca_keys)
                .map(|ca| {
                    (
                        (),
                        format!(
                            "{} evidence for {:?} signed by a key certified by fleet CA {}",
                            ev.kind(),
                            ev.certificate().subject(),
                            short_id(ca.key_id())
                        ),
                    )
                })
                .map_err(|e| e.to_string())
        })?;

        // 2. Key binding.
        run.step(2, NODE_STEPS[2], || {
            ev.verify_binding(self.policy.tpm_launch.as_ref(), b.release().statement().manifest())
                .map_err(|e| e.to_string())?;
            let kc = b.key_configs().digest();
            if claims.key_config_digest != kc {
                return Err(format!(
                    "evidence binds key configs {} but the bundle carries {}; the key configs were swapped",
                    claims.key_config_digest.short(),
                    kc.short()
                ));
            }
            if claims.key_expiry != b.key_expiry() {
                return Err(format!("evidence binds key expiry {} but the bundle says {}", claims.key_expiry, b.key_expiry()));
            }
            let rd = b.release().release_digest();
            if claims.release_digest != rd {
                return Err(format!(
                    "evidence is for release {} but the bundle carries release {}; the node runs a different release",
                    claims.release_digest.short(),
                    rd.short()
                ));
            }
            if let Some(want) = cx.nonce
                && claims.nonce.as_deref() != Some(want)
            {
                return Err("evidence does not carry the nonce this verifier asked for; it may be a replay".into());
            }
            Ok(((), format!("evidence binds key configs {}, expiry {} and release {}", kc.short(), b.key_expiry(), rd.short())))
        })?;

        // 3–6. The release.
        let rs = self.release_steps(run, b.release(), cx, 3)?;

        // 7. Expiry.
        let cert = ev.certificate();
        let valid_until = run.step(7, NODE_STEPS[7], || {
            let now = cx.now;
            if now > b.key_expiry().saturating_add(skew) {
                return Err(format!("node keys expired at {} (now {now}); ask the gateway for a fresh bundle", b.key_expiry()));
            }
            if now.saturating_add(skew) < cert.not_before() {
                return Err(format!("fleet certificate is not valid before {} (now {now}); check the clock", cert.not_before()));
            }
            if now > cert.not_after().saturating_add(skew) {
                return Err(format!("fleet certificate for {:?} expired at {} (now {now})", cert.subject(), cert.not_after()));
            }
            let mut until = b.key_expiry().min(cert.not_after()).saturating_add(skew);
            if let Some(max_age) = self.policy.max_checkpoint_age_secs {
                let ts = rs.release.checkpoint.newest_timestamp().ok_or_else(|| {
                    "policy sets maxCheckpointAgeSecs but the checkpoint has no timestamped witness cosignature; require witnesses or drop the age limit".to_owned()
                })?;
                let limit = ts.saturating_add(max_age).saturating_add(skew);
                if now > limit {
                    return Err(format!("checkpoint was last witnessed at {ts}, more than {max_age} s ago (now {now}); fetch a fresh proof from the log"));
                }
                until = until.min(limit);
            }
            Ok((until, format!("keys valid until {}, certificate until {}; verification good until {until}", b.key_expiry(), cert.not_after())))
        })?;

        Some(VerifiedNode {
            inner: Arc::new(NodeInner {
                name: cert.subject().to_owned(),
                root_of_trust: ev.kind(),
                key_configs: b.key_configs().clone(),
                key_expiry: b.key_expiry(),
                valid_until,
                release: rs.release,
                _sealed: Sealed(()),
            }),
        })
    }

    /// Parses and verifies a release bundle on its own (steps 3–6 of the node checklist,
    /// numbered 1–4 here).
    pub fn verify_release(
        &self,
        bundle_bytes: &[u8],
        cx: &VerifyContext<'_>,
    ) -> ReleaseVerification {
        let mut run = Run::new("release");
        let parsed = run.step(0, "parse", || {
            ReleaseBundle::from_json(bundle_bytes)
                .map(|b| {
                    let d = format!(
                        "release {:?} {}",
                        b.statement().manifest().name(),
                        b.release_digest()
                    );
                    (b, d)
                })
                .map_err(|e| {
                    format!("{e}; is this a Sigstore bundle made by `attest release sign`?")
                })
        });
        let release = parsed
            .and_then(|b| self.release_steps(&mut run, &b, cx, 1))
            .map(|r| r.release);
        if release.is_none() {
            for (n, name) in RELEASE_STEPS
                .iter()
                .enumerate()
                .skip(run.report.steps.len())
            {
                run.report.steps.push(StepReport {
                    number: n as u8,
                    name,
                    status: StepStatus::NotRun,
                    detail: "not run: an earlier step failed".into(),
                });
            }
        }
        ReleaseVerification {
            report: run.report,
            release,
        }
    }

    /// Release signature, log inclusion, consistency, required digests; numbered from `first`.
    fn release_steps(
        &self,
        run: &mut Run,
        b: &ReleaseBundle,
        cx: &VerifyContext<'_>,
        first: u8,
    ) -> Option<ReleaseSteps> {
        let digest = b.release_digest();

        // Release signature and signer policy.
        let signers = run.step(first, "release signature and signer policy", || {
            let pae = b.envelope().pae();
            let mut verified = Vec::new();
            let mut unknown = Vec::new();
            for sig in b.envelope().signatures() {
                match self.policy.release_signers.iter().find(|k| k.key_id() == sig.keyid) {
                    Some(k) => {
                        k.verify(&pae, &sig.sig).map_err(|e| format!("release {}: {e}", digest.short()))?;
                        verified.push(sig.keyid.clone());
                    }
                    None => unknown.push(sig.keyid.clone()),
                }
            }
            let facts = ReleaseFacts { verified_signers: verified.clone(), release_digest: digest };
            if !self.policy.release_rule.holds(&facts) {
                return Err(if verified.is_empty() {
                    format!(
                        "release {} is signed by {} which is not an allowed release signer; is the policy's releaseSigners list right?",
                        digest.short(),
                        unknown.iter().map(|k| short_id(k)).collect::<Vec<_>>().join(", ")
                    )
                } else {
                    format!(
                        "release {} signed by {} does not satisfy the policy's release rule (pinned digests?)",
                        digest.short(),
                        verified.iter().map(|k| short_id(k)).collect::<Vec<_>>().join(", ")
                    )
                });
            }
            let d = format!("signed by {}", verified.iter().map(|k| short_id(k)).collect::<Vec<_>>().join(", "));
            Ok((verified, d))
        })?;

        // Log inclusion under a signed checkpoint.
        let (entry, checkpoint) = run.step(first + 1, "log inclusion under a signed checkpoint", || {
            let entry = b.log_entry().ok_or_else(|| {
                format!("release {} carries no transparency-log entry; append it with `attest log append` and attach the proof", digest.short())
            })?;
            let cp = logview::open_checkpoint(&entry.checkpoint, &self.policy, Some(cx.now))?;
            logview::check_inclusion(entry, &cp, &digest)?;
            let d = format!("entry {} included in checkpoint {} of {:?} (size {})", entry.log_index, short_hash(&cp.root_hash), cp.origin, cp.size);
            Ok(((entry.clone(), cp), d))
        })?;

        // Consistency with the newest known checkpoint.
        run.step(
            first + 2,
            "consistency with the newest known checkpoint",
            || logview::check_consistency(&checkpoint, cx.known).map(|d| ((), d)),
        )?;

        // Required model/adapter digests.
        let manifest = b.statement().manifest();
        run.step(first + 3, "required model and adapter digests", || {
            for d in cx.required_digests {
                if !manifest.contains_digest(d) {
                    return Err(format!(
                        "release {} does not contain {}; the node serves a different model or adapter than the request needs",
                        digest.short(),
                        d.short()
                    ));
                }
            }
            Ok(((), format!("{} required digest(s) present in the release's {} artifact(s)", cx.required_digests.len(), manifest.artifacts().len())))
        })?;

        Some(ReleaseSteps {
            release: VerifiedRelease {
                manifest: manifest.clone(),
                digest,
                signers,
                log_index: entry.log_index,
                checkpoint,
                _sealed: Sealed(()),
            },
        })
    }
}

/// Step names of the node checklist, by number.
pub const NODE_STEPS: [&str; 8] = [
    "parse",
    "root of trust",
    "key binding",
    "release signature and signer policy",
    "log inclusion under a signed checkpoint",
    "consistency with the newest known checkpoint",
    "required model and adapter digests",
    "expiry",
];

/// Step names of the release checklist, by number.
pub const RELEASE_STEPS: [&str; 5] = [
    "parse",
    "release signature and signer policy",
    "log inclusion under a signed checkpoint",
    "consistency with the newest known checkpoint",
    "required model and adapter digests",
];

fn short_id(id: &str) -> String {
    format!("key {}…", id.get(..12).unwrap_or(id))
}

fn short_hash(h: &[u8; 32]) -> String {
    format!("{}…", &hex::encode(h)[..12])
}
