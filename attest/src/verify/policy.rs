//! Verification policy: which fleet CAs, release signers, releases, logs and witnesses a
//! verifier trusts, and its time limits. Loaded from JSON (the caller reads the file).
//!
//! ```json
//! {
//!   "fleetCaKeys":          ["-----BEGIN PUBLIC KEY-----\n…"],
//!   "releaseSigners":       ["-----BEGIN PUBLIC KEY-----\n…"],
//!   "pinnedReleaseDigests": ["sha256:…"],
//!   "releaseRule":          {"allOf": [{"signedBy": "<key id>"}, {"anyOf": [...]}]},
//!   "logKeys":              ["<C2SP note verifier key: name+hash+base64>"],
//!   "witnessKeys":          ["<C2SP cosignature verifier key>"],
//!   "requiredWitnesses":    0,
//!   "maxCheckpointAgeSecs": 86400,
//!   "clockSkewSecs":        60,
//!   "rootsOfTrust":         ["tpm2"],
//!   "tpmLaunch":            {"bootChain": ["sha256:…"], "launchers": ["sha256:…"]}
//! }
//! ```
//!
//! `tpmLaunch` is the allow-list for TPM evidence ([`crate::evidence::eventlog`]): the boot-chain
//! measurements that may precede the launcher in PCR 13 and the `tandem-launch` executables
//! that may launch a node (at least one). TPM evidence is refused without it, and a policy file
//! that accepts only `tpm2` must have it.
//!
//! `pinnedReleaseDigests`, `releaseRule`, `witnessKeys`, `maxCheckpointAgeSecs` and
//! `rootsOfTrust` are optional. `rootsOfTrust` lists the evidence kinds step 1 accepts
//! (`software`, `tpm2`); without it every kind signed by a listed fleet CA passes.
//! Without `releaseRule` the rule is `allOf[anyOf[signedBy each signer], anyOf[digestIs each
//! pin]]` (the second part only when pins are given).

use serde::{Deserialize, Serialize};

use super::VerifyError;
use crate::digest::Sha256Digest;
use crate::evidence::{FleetCaKey, LaunchPolicy};
use crate::log::{CosignerKey, NoteVerifier, WitnessPolicy};
use crate::release::ReleaseSignerKey;

/// What a release rule is evaluated against: the signer key ids whose signatures verified and
/// the release digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseFacts {
    /// Key ids of signers whose signature on the envelope verified.
    pub verified_signers: Vec<String>,
    /// The release digest.
    pub release_digest: Sha256Digest,
}

/// A policy combinator over [`ReleaseFacts`].
///
/// Semantics, including the empty cases: `anyOf []` is **false** (nothing was allowed),
/// `allOf []` is **true** (no requirement), `atLeast k []` is true iff `k == 0`. A [`Policy`]
/// refuses to load a rule that is trivially true (see [`ReleaseRule::is_trivially_true`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum ReleaseRule {
    /// A signature by this key id verified.
    SignedBy(String),
    /// The release digest is this one.
    DigestIs(Sha256Digest),
    /// At least one child holds.
    AnyOf(Vec<ReleaseRule>),
    /// Every child holds.
    AllOf(Vec<ReleaseRule>),
    /// At least `k` children hold.
    AtLeast {
        /// Threshold.
        k: usize,
        /// Children.
        of: Vec<ReleaseRule>,
    },
}

impl ReleaseRule {
    /// Evaluates the rule.
    pub fn holds(&self, f: &ReleaseFacts) -> bool {
        match self {
            Self::SignedBy(id) => f.verified_signers.iter().any(|s| s == id),
            Self::DigestIs(d) => &f.release_digest == d,
            Self::AnyOf(v) => v.iter().any(|r| r.holds(f)),
            Self::AllOf(v) => v.iter().all(|r| r.holds(f)),
            Self::AtLeast { k, of } => of.iter().filter(|r| r.holds(f)).count() >= *k,
        }
    }

    /// Whether the rule holds without any signature (so it would accept an unsigned release).
    pub fn is_trivially_true(&self) -> bool {
        !self.requires_signature()
    }

    /// Whether every way of satisfying the rule includes a verified signature.
    fn requires_signature(&self) -> bool {
        match self {
            Self::SignedBy(_) => true,
            Self::DigestIs(_) => false,
            Self::AnyOf(v) => v.iter().all(Self::requires_signature),
            Self::AllOf(v) => v.iter().any(Self::requires_signature),
            Self::AtLeast { k, of } => {
                // Satisfiable without signatures iff at least k children don't need one.
                of.iter().filter(|r| !r.requires_signature()).count() < *k
            }
        }
    }

    fn depth(&self) -> usize {
        match self {
            Self::SignedBy(_) | Self::DigestIs(_) => 1,
            Self::AnyOf(v) | Self::AllOf(v) | Self::AtLeast { of: v, .. } => {
                1 + v.iter().map(Self::depth).max().unwrap_or(0)
            }
        }
    }
}

/// A checked policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) fleet_ca_keys: Vec<FleetCaKey>,
    pub(crate) release_signers: Vec<ReleaseSignerKey>,
    pub(crate) pinned_release_digests: Vec<Sha256Digest>,
    pub(crate) release_rule: ReleaseRule,
    pub(crate) log_keys: Vec<String>,
    pub(crate) witness_keys: Vec<String>,
    pub(crate) required_witnesses: usize,
    pub(crate) max_checkpoint_age_secs: Option<u64>,
    pub(crate) clock_skew_secs: u64,
    /// Evidence kinds accepted at step 1 (`software`, `tpm2`); empty accepts every kind.
    pub(crate) roots_of_trust: Vec<String>,
    /// Allowed boot chains and launchers for TPM evidence (`tpmLaunch`).
    pub(crate) tpm_launch: Option<LaunchPolicy>,
    /// `log_keys` and `witness_keys` parsed once (a parse error is reported by the checklist
    /// step that needs the key, as before), so a verification does no key decoding.
    pub(crate) parsed: ParsedLogKeys,
}

/// The policy's log and witness keys, parsed.
#[derive(Debug, Clone)]
pub(crate) struct ParsedLogKeys {
    pub(crate) log_verifiers: Vec<Result<NoteVerifier, String>>,
    pub(crate) witness_policy: Result<WitnessPolicy, String>,
}

impl ParsedLogKeys {
    fn new(log_keys: &[String], witness_keys: &[String], required: usize) -> Self {
        let log_verifiers = log_keys
            .iter()
            .map(|k| NoteVerifier::new(k).map_err(|e| format!("policy logKeys: {e}")))
            .collect();
        let witness_policy = witness_keys
            .iter()
            .map(|k| CosignerKey::new(k).map_err(|e| format!("policy witnessKeys: {e}")))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|w| WitnessPolicy::new(w, required).map_err(|e| e.to_string()));
        Self {
            log_verifiers,
            witness_policy,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyWire {
    fleet_ca_keys: Vec<String>,
    release_signers: Vec<String>,
    #[serde(default)]
    pinned_release_digests: Vec<Sha256Digest>,
    #[serde(default)]
    release_rule: Option<ReleaseRule>,
    log_keys: Vec<String>,
    #[serde(default)]
    witness_keys: Vec<String>,
    #[serde(default)]
    required_witnesses: usize,
    #[serde(default)]
    max_checkpoint_age_secs: Option<u64>,
    clock_skew_secs: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    roots_of_trust: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tpm_launch: Option<TpmLaunchWire>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TpmLaunchWire {
    #[serde(default)]
    boot_chain: Vec<Sha256Digest>,
    launchers: Vec<Sha256Digest>,
}

/// Most digests a `tpmLaunch` list may hold.
pub const MAX_LAUNCH_DIGESTS: usize = 256;

/// Evidence kinds a policy may require (`rootsOfTrust`).
pub const ROOT_OF_TRUST_KINDS: [&str; 2] = ["software", "tpm2"];

/// Largest accepted clock skew allowance (one hour).
pub const MAX_CLOCK_SKEW: u64 = 3600;

fn invalid(m: impl Into<String>) -> VerifyError {
    VerifyError::Policy(m.into())
}

impl Policy {
    /// Parses a policy file's bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, VerifyError> {
        let w: PolicyWire = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("not a policy file: {e}")))?;
        Self::try_from(w)
    }

    /// The release rule in force.
    pub fn release_rule(&self) -> &ReleaseRule {
        &self.release_rule
    }

    /// The allowed release signers.
    pub fn release_signers(&self) -> &[ReleaseSignerKey] {
        &self.release_signers
    }

    /// The trusted fleet CA keys.
    pub fn fleet_ca_keys(&self) -> &[FleetCaKey] {
        &self.fleet_ca_keys
    }

    /// The log verifier keys (C2SP note verifier key strings).
    pub fn log_keys(&self) -> &[String] {
        &self.log_keys
    }

    /// The clock-skew allowance in seconds.
    pub fn clock_skew_secs(&self) -> u64 {
        self.clock_skew_secs
    }

    /// The evidence kinds accepted at step 1 (empty: every kind).
    pub fn roots_of_trust(&self) -> &[String] {
        &self.roots_of_trust
    }

    /// Accepts node evidence only from these roots of trust (`"software"`, `"tpm2"`), e.g.
    /// `["tpm2"]` so that only nodes whose release is measured into a TPM pass.
    pub fn with_roots_of_trust(mut self, kinds: Vec<String>) -> Result<Self, VerifyError> {
        if let Some(k) = kinds
            .iter()
            .find(|k| !ROOT_OF_TRUST_KINDS.contains(&k.as_str()))
        {
            return Err(invalid(format!(
                "rootsOfTrust: unknown kind {k:?}; known kinds are {}",
                ROOT_OF_TRUST_KINDS.join(", ")
            )));
        }
        self.roots_of_trust = kinds;
        Ok(self)
    }

    /// The TPM launch allow-lists (`tpmLaunch`), if set.
    pub fn tpm_launch(&self) -> Option<&LaunchPolicy> {
        self.tpm_launch.as_ref()
    }

    /// Accepts TPM evidence whose launch event log passes `launch`: boot-chain events from
    /// `launch.boot_chain`, a launcher from `launch.launchers` (at least one).
    pub fn with_tpm_launch(mut self, launch: LaunchPolicy) -> Result<Self, VerifyError> {
        if launch.launchers.is_empty() {
            return Err(invalid(
                "tpmLaunch.launchers is empty: no TPM launch could ever verify; list the \
                 sha256 of the tandem-launch executable your nodes run",
            ));
        }
        for (field, v) in [
            ("bootChain", &launch.boot_chain),
            ("launchers", &launch.launchers),
        ] {
            if v.len() > MAX_LAUNCH_DIGESTS {
                return Err(invalid(format!(
                    "tpmLaunch.{field} lists {} digests; at most {MAX_LAUNCH_DIGESTS}",
                    v.len()
                )));
            }
        }
        self.tpm_launch = Some(launch);
        Ok(self)
    }

    /// Builds a policy in code (same checks as the file form).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        fleet_ca_keys: Vec<FleetCaKey>,
        release_signers: Vec<ReleaseSignerKey>,
        pinned_release_digests: Vec<Sha256Digest>,
        release_rule: Option<ReleaseRule>,
        log_keys: Vec<String>,
        witness_keys: Vec<String>,
        required_witnesses: usize,
        max_checkpoint_age_secs: Option<u64>,
        clock_skew_secs: u64,
    ) -> Result<Self, VerifyError> {
        if fleet_ca_keys.is_empty() {
            return Err(invalid(
                "fleetCaKeys is empty: no node evidence could ever verify",
            ));
        }
        if release_signers.is_empty() {
            return Err(invalid(
                "releaseSigners is empty: a policy must name at least one release signer",
            ));
        }
        if log_keys.is_empty() {
            return Err(invalid(
                "logKeys is empty: name the transparency log's verifier key",
            ));
        }
        if required_witnesses > witness_keys.len() {
            return Err(invalid(format!(
                "requiredWitnesses is {required_witnesses} but only {} witnessKeys are listed",
                witness_keys.len()
            )));
        }
        if clock_skew_secs > MAX_CLOCK_SKEW {
            return Err(invalid(format!(
                "clockSkewSecs {clock_skew_secs} is over the {MAX_CLOCK_SKEW}-second limit"
            )));
        }
        let release_rule = match release_rule {
            Some(r) => r,
            None => {
                let signers = ReleaseRule::AnyOf(
                    release_signers
                        .iter()
                        .map(|k| ReleaseRule::SignedBy(k.key_id().to_owned()))
                        .collect(),
                );
                if pinned_release_digests.is_empty() {
                    ReleaseRule::AllOf(vec![signers])
                } else {
                    let pins = ReleaseRule::AnyOf(
                        pinned_release_digests
                            .iter()
                            .copied()
                            .map(ReleaseRule::DigestIs)
                            .collect(),
                    );
                    ReleaseRule::AllOf(vec![signers, pins])
                }
            }
        };
        if release_rule.is_trivially_true() {
            return Err(invalid(
                "releaseRule can be satisfied without any release signature; it must require a signer",
            ));
        }
        if release_rule.depth() > 8 {
            return Err(invalid("releaseRule is nested more than 8 deep"));
        }
        let parsed = ParsedLogKeys::new(&log_keys, &witness_keys, required_witnesses);
        Ok(Self {
            fleet_ca_keys,
            release_signers,
            pinned_release_digests,
            release_rule,
            parsed,
            log_keys,
            witness_keys,
            required_witnesses,
            max_checkpoint_age_secs,
            clock_skew_secs,
            roots_of_trust: Vec::new(),
            tpm_launch: None,
        })
    }

    /// The policy as JSON (for `--json` reports and round trips).
    pub fn to_json(&self) -> Vec<u8> {
        let w = PolicyWire {
            fleet_ca_keys: self.fleet_ca_keys.iter().map(FleetCaKey::to_pem).collect(),
            release_signers: self
                .release_signers
                .iter()
                .map(ReleaseSignerKey::to_pem)
                .collect(),
            pinned_release_digests: self.pinned_release_digests.clone(),
            release_rule: Some(self.release_rule.clone()),
            log_keys: self.log_keys.clone(),
            witness_keys: self.witness_keys.clone(),
            required_witnesses: self.required_witnesses,
            max_checkpoint_age_secs: self.max_checkpoint_age_secs,
            clock_skew_secs: self.clock_skew_secs,
            roots_of_trust: self.roots_of_trust.clone(),
            tpm_launch: self.tpm_launch.as_ref().map(|l| TpmLaunchWire {
                boot_chain: l.boot_chain.clone(),
                launchers: l.launchers.clone(),
            }),
        };
        serde_json::to_vec_pretty(&w).unwrap_or_default()
    }
}

impl TryFrom<PolicyWire> for Policy {
    type Error = VerifyError;

    fn try_from(w: PolicyWire) -> Result<Self, VerifyError> {
        let fleet = w
            .fleet_ca_keys
            .iter()
            .map(|p| FleetCaKey::from_pem(p).map_err(|e| invalid(format!("fleetCaKeys: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let signers = w
            .release_signers
            .iter()
            .map(|p| {
                ReleaseSignerKey::from_pem(p).map_err(|e| invalid(format!("releaseSigners: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut p = Self::new(
            fleet,
            signers,
            w.pinned_release_digests,
            w.release_rule,
            w.log_keys,
            w.witness_keys,
            w.required_witnesses,
            w.max_checkpoint_age_secs,
            w.clock_skew_secs,
        )?
        .with_roots_of_trust(w.roots_of_trust)?;
        if let Some(l) = w.tpm_launch {
            p = p.with_tpm_launch(LaunchPolicy {
                boot_chain: l.boot_chain,
                launchers: l.launchers,
            })?;
        }
        if p.roots_of_trust == ["tpm2"] && p.tpm_launch.is_none() {
            return Err(invalid(
                "rootsOfTrust accepts only tpm2 but there is no tpmLaunch allow-list, so no \
                 node could verify; add tpmLaunch.launchers (and bootChain)",
            ));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReleaseRule::*;

    fn facts(signers: &[&str], digest: &[u8]) -> ReleaseFacts {
        ReleaseFacts {
            verified_signers: signers.iter().map(|s| (*s).to_owned()).collect(),
            release_digest: Sha256Digest::of(digest),
        }
    }

    /// Leaves whose truth we control: `SignedBy("t")` is true, `SignedBy("f")` is false.
    fn leaf(b: bool) -> ReleaseRule {
        SignedBy(if b { "t" } else { "f" }.into())
    }

    #[test]
    fn truth_tables_including_empty() {
        let f = facts(&["t"], b"r");
        for n in 0..=3usize {
            for bits in 0..(1u32 << n) {
                let vals: Vec<bool> = (0..n).map(|i| bits >> i & 1 == 1).collect();
                let kids: Vec<ReleaseRule> = vals.iter().map(|&b| leaf(b)).collect();
                let trues = vals.iter().filter(|&&b| b).count();
                assert_eq!(AnyOf(kids.clone()).holds(&f), trues > 0, "anyOf {vals:?}");
                assert_eq!(AllOf(kids.clone()).holds(&f), trues == n, "allOf {vals:?}");
                for k in 0..=n + 1 {
                    assert_eq!(
                        AtLeast {
                            k,
                            of: kids.clone()
                        }
                        .holds(&f),
                        trues >= k,
                        "atLeast {k} {vals:?}"
                    );
                }
            }
        }
        // The empty cases spelled out.
        assert!(!AnyOf(vec![]).holds(&f));
        assert!(AllOf(vec![]).holds(&f));
        assert!(AtLeast { k: 0, of: vec![] }.holds(&f));
        assert!(!AtLeast { k: 1, of: vec![] }.holds(&f));
    }

    #[test]
    fn leaves() {
        let f = facts(&["a", "b"], b"r");
        assert!(SignedBy("a".into()).holds(&f));
        assert!(!SignedBy("c".into()).holds(&f));
        assert!(DigestIs(Sha256Digest::of(b"r")).holds(&f));
        assert!(!DigestIs(Sha256Digest::of(b"s")).holds(&f));
        assert!(!SignedBy("a".into()).holds(&facts(&[], b"r")));
    }

    #[test]
    fn trivially_true_rules_detected() {
        let d = DigestIs(Sha256Digest::of(b"r"));
        let s = SignedBy("a".into());
        assert!(AllOf(vec![]).is_trivially_true());
        // anyOf [] never holds, so it cannot accept an unsigned release.
        assert!(!AnyOf(vec![]).is_trivially_true());
        assert!(d.is_trivially_true());
        assert!(AnyOf(vec![s.clone(), d.clone()]).is_trivially_true());
        assert!(!AllOf(vec![s.clone(), d.clone()]).is_trivially_true());
        assert!(!AnyOf(vec![s.clone()]).is_trivially_true());
        assert!(
            AtLeast {
                k: 1,
                of: vec![s.clone(), d.clone()]
            }
            .is_trivially_true()
        );
        assert!(
            !AtLeast {
                k: 2,
                of: vec![s.clone(), d.clone()]
            }
            .is_trivially_true()
        );
        assert!(AtLeast { k: 0, of: vec![s] }.is_trivially_true());
    }

    #[test]
    fn rule_json_round_trip() {
        let r = AllOf(vec![
            AnyOf(vec![SignedBy("k".into())]),
            AtLeast {
                k: 1,
                of: vec![DigestIs(Sha256Digest::of(b"x"))],
            },
        ]);
        let j = serde_json::to_string(&r).expect("json");
        assert_eq!(serde_json::from_str::<ReleaseRule>(&j).expect("parse"), r);
    }
}
