//! The release manifest: the SHA-256 digests of everything that decides what a node does with a
//! request, in one canonical encoding whose SHA-256 is the release digest.
//!
//! # Canonical encoding (`tandem.release.v1`)
//!
//! UTF-8 JSON with no whitespace, keys in exactly this order, artifacts sorted by
//! `(kind order, name)` where the kind order is `node-binary`, `node-config`, `base-model`,
//! `adapter`, `tokenizer`; strings escaped the way `serde_json` escapes them (only `"`, `\` and
//! control characters; no `\u` escapes for other characters):
//!
//! ```text
//! {"schema":"tandem.release.v1","name":"<name>","artifacts":[{"kind":"<kind>","name":"<name>","sha256":"<64 hex>","size":<u64>},...]}
//! ```
//!
//! The release digest is `sha256:<hex of SHA-256 over those bytes>`. [`ReleaseManifest::from_canonical_json`]
//! accepts only bytes that re-encode to themselves, so one manifest has one encoding.

use serde::{Deserialize, Serialize};

use super::ReleaseError;
use crate::digest::Sha256Digest;

/// The schema tag in every manifest.
pub const MANIFEST_SCHEMA: &str = "tandem.release.v1";
/// Longest accepted artifact or release name, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Most artifacts in one manifest (a bound on work done for untrusted input).
pub const MAX_ARTIFACTS: usize = 4096;

/// What an artifact is for. The order of the variants is the canonical sort order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    /// The node executable.
    NodeBinary,
    /// The node's configuration file.
    NodeConfig,
    /// A file of the base model (`config.json`, `*.safetensors`).
    BaseModel,
    /// A LoRA adapter file.
    Adapter,
    /// The tokenizer (`tokenizer.json`).
    Tokenizer,
}

impl ArtifactKind {
    /// The name used in the canonical encoding.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NodeBinary => "node-binary",
            Self::NodeConfig => "node-config",
            Self::BaseModel => "base-model",
            Self::Adapter => "adapter",
            Self::Tokenizer => "tokenizer",
        }
    }
}

/// One measured file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// What the file is for.
    pub kind: ArtifactKind,
    /// Its name inside the release (a relative path such as `adapters/summarize/adapter_model.safetensors`).
    pub name: String,
    /// SHA-256 of its bytes.
    #[serde(with = "hex_digest")]
    pub sha256: Sha256Digest,
    /// Its length in bytes.
    pub size: u64,
}

/// A checked release manifest: names valid and unique per kind, artifacts in canonical order,
/// exactly one node binary, one node config and one tokenizer, at least one base-model file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseManifest {
    name: String,
    artifacts: Vec<Artifact>,
}

/// The JSON shape, before checking.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestWire {
    schema: String,
    name: String,
    artifacts: Vec<Artifact>,
}

fn check_name(what: &str, name: &str) -> Result<(), ReleaseError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(ReleaseError::Manifest(format!(
            "{what} name {name:?} must be 1..={MAX_NAME_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

impl ReleaseManifest {
    /// Builds a manifest from artifacts in any order; sorts them and checks every rule.
    pub fn new(
        name: impl Into<String>,
        mut artifacts: Vec<Artifact>,
    ) -> Result<Self, ReleaseError> {
        artifacts.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        Self::checked(name.into(), artifacts)
    }

    fn checked(name: String, artifacts: Vec<Artifact>) -> Result<Self, ReleaseError> {
        check_name("release", &name)?;
        if artifacts.len() > MAX_ARTIFACTS {
            return Err(ReleaseError::Manifest(format!(
                "{} artifacts is more than the limit of {MAX_ARTIFACTS}",
                artifacts.len()
            )));
        }
        for w in artifacts.windows(2) {
            match (w[0].kind, &w[0].name).cmp(&(w[1].kind, &w[1].name)) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => {
                    return Err(ReleaseError::Manifest(format!(
                        "{} {:?} is listed twice",
                        w[0].kind.as_str(),
                        w[0].name
                    )));
                }
                std::cmp::Ordering::Greater => {
                    return Err(ReleaseError::Manifest(
                        "artifacts are not in canonical order (kind, then name)".into(),
                    ));
                }
            }
        }
        for a in &artifacts {
            check_name(a.kind.as_str(), &a.name)?;
        }
        let count = |k: ArtifactKind| artifacts.iter().filter(|a| a.kind == k).count();
        for (kind, min, max) in [
            (ArtifactKind::NodeBinary, 1, 1),
            (ArtifactKind::NodeConfig, 1, 1),
            (ArtifactKind::BaseModel, 1, usize::MAX),
            (ArtifactKind::Tokenizer, 1, 1),
        ] {
            let n = count(kind);
            if n < min || n > max {
                let want = if max == 1 {
                    "exactly one".to_owned()
                } else {
                    format!("at least {min}")
                };
                return Err(ReleaseError::Manifest(format!(
                    "a release needs {want} {} artifact, this one has {n}",
                    kind.as_str()
                )));
            }
        }
        Ok(Self { name, artifacts })
    }

    /// The release's name (for people; not an identity: the digest is).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The artifacts in canonical order.
    pub fn artifacts(&self) -> &[Artifact] {
        &self.artifacts
    }

    /// Artifacts of one kind.
    pub fn of_kind(&self, kind: ArtifactKind) -> impl Iterator<Item = &Artifact> {
        self.artifacts.iter().filter(move |a| a.kind == kind)
    }

    /// Whether any artifact has this digest.
    pub fn contains_digest(&self, d: &Sha256Digest) -> bool {
        self.artifacts.iter().any(|a| &a.sha256 == d)
    }

    /// The canonical encoding (see the module documentation).
    pub fn canonical_json(&self) -> Vec<u8> {
        // Field order is the struct order; serde_json writes it compactly and deterministically.
        let wire = ManifestWireRef {
            schema: MANIFEST_SCHEMA,
            name: &self.name,
            artifacts: &self.artifacts,
        };
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// The release digest: SHA-256 of the canonical encoding.
    pub fn digest(&self) -> Sha256Digest {
        Sha256Digest::of(&self.canonical_json())
    }

    /// As a JSON value (the in-toto predicate).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_slice(&self.canonical_json()).unwrap_or(serde_json::Value::Null)
    }

    /// Parses untrusted canonical bytes; rejects anything that does not re-encode to itself.
    pub fn from_canonical_json(bytes: &[u8]) -> Result<Self, ReleaseError> {
        let m = Self::from_json(bytes)?;
        if m.canonical_json() != bytes {
            return Err(ReleaseError::Manifest(
                "manifest is not in canonical form (key order, whitespace, artifact order); re-create it with `attest release create`".into(),
            ));
        }
        Ok(m)
    }

    /// Parses an untrusted manifest in any JSON layout (the canonical form is recomputed).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ReleaseError> {
        let wire: ManifestWire = serde_json::from_slice(bytes)
            .map_err(|e| ReleaseError::Manifest(format!("not a release manifest: {e}")))?;
        Self::try_from(wire)
    }

    /// Parses a manifest held in a JSON value (the in-toto predicate).
    pub fn from_value(v: &serde_json::Value) -> Result<Self, ReleaseError> {
        let wire = ManifestWire::deserialize(v).map_err(|e| {
            ReleaseError::Manifest(format!("predicate is not a release manifest: {e}"))
        })?;
        Self::try_from(wire)
    }
}

impl TryFrom<ManifestWire> for ReleaseManifest {
    type Error = ReleaseError;

    fn try_from(w: ManifestWire) -> Result<Self, ReleaseError> {
        if w.schema != MANIFEST_SCHEMA {
            return Err(ReleaseError::Manifest(format!(
                "schema {:?} is not {MANIFEST_SCHEMA:?}",
                w.schema
            )));
        }
        Self::checked(w.name, w.artifacts)
    }
}

#[derive(Serialize)]
struct ManifestWireRef<'a> {
    schema: &'a str,
    name: &'a str,
    artifacts: &'a [Artifact],
}

/// Artifact digests are bare hex in the manifest (the key already says `sha256`).
mod hex_digest {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::digest::Sha256Digest;

    pub fn serialize<S: Serializer>(d: &Sha256Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Sha256Digest, D::Error> {
        let s = String::deserialize(d)?;
        Sha256Digest::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn art(kind: ArtifactKind, name: &str, content: &[u8]) -> Artifact {
        Artifact {
            kind,
            name: name.into(),
            sha256: Sha256Digest::of(content),
            size: content.len() as u64,
        }
    }

    fn sample() -> ReleaseManifest {
        ReleaseManifest::new(
            "tandem-node 0.1.0",
            vec![
                art(ArtifactKind::Tokenizer, "tokenizer.json", b"tok"),
                art(
                    ArtifactKind::Adapter,
                    "adapters/summarize.safetensors",
                    b"a1",
                ),
                art(ArtifactKind::BaseModel, "model.safetensors", b"w"),
                art(ArtifactKind::BaseModel, "config.json", b"c"),
                art(ArtifactKind::NodeConfig, "node.toml", b"cfg"),
                art(ArtifactKind::NodeBinary, "tandem-node", b"bin"),
            ],
        )
        .expect("valid")
    }

    #[test]
    fn canonical_round_trip_and_order() {
        let m = sample();
        let bytes = m.canonical_json();
        let text = String::from_utf8(bytes.clone()).expect("utf8");
        assert!(text.starts_with(r#"{"schema":"tandem.release.v1","name":"tandem-node 0.1.0","artifacts":[{"kind":"node-binary","name":"tandem-node","sha256":""#));
        assert_eq!(
            ReleaseManifest::from_canonical_json(&bytes).expect("parses"),
            m
        );
        assert_eq!(m.digest(), Sha256Digest::of(&bytes));
        let kinds: Vec<_> = m.artifacts().iter().map(|a| a.kind).collect();
        let mut sorted = kinds.clone();
        sorted.sort();
        assert_eq!(kinds, sorted);
    }

    #[test]
    fn non_canonical_rejected_but_loose_parse_accepts() {
        let m = sample();
        let pretty = serde_json::to_vec_pretty(&m.to_value()).expect("json");
        assert!(ReleaseManifest::from_canonical_json(&pretty).is_err());
        assert_eq!(ReleaseManifest::from_json(&pretty).expect("parses"), m);
    }

    #[test]
    fn rules() {
        let base = sample().artifacts().to_vec();
        // Duplicate.
        let mut dup = base.clone();
        dup.push(base[0].clone());
        assert!(ReleaseManifest::new("r", dup).is_err());
        // Missing each required kind.
        for kind in [
            ArtifactKind::NodeBinary,
            ArtifactKind::NodeConfig,
            ArtifactKind::BaseModel,
            ArtifactKind::Tokenizer,
        ] {
            let v: Vec<_> = base.iter().filter(|a| a.kind != kind).cloned().collect();
            assert!(ReleaseManifest::new("r", v).is_err(), "{kind:?}");
        }
        // Two tokenizers.
        let mut two = base.clone();
        two.push(art(ArtifactKind::Tokenizer, "other.json", b"x"));
        assert!(ReleaseManifest::new("r", two).is_err());
        // Bad names.
        for bad in ["", "a\nb", &"x".repeat(256)] {
            assert!(ReleaseManifest::new(bad, base.clone()).is_err());
        }
        // No adapters is fine.
        let v: Vec<_> = base
            .iter()
            .filter(|a| a.kind != ArtifactKind::Adapter)
            .cloned()
            .collect();
        assert!(ReleaseManifest::new("r", v).is_ok());
    }

    #[test]
    fn truncate_and_flip_never_panic() {
        let bytes = sample().canonical_json();
        for cut in 0..bytes.len() {
            assert!(ReleaseManifest::from_canonical_json(&bytes[..cut]).is_err());
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            // Either rejected or a different, still-canonical manifest (a flipped digest nibble).
            if let Ok(m) = ReleaseManifest::from_canonical_json(&b) {
                assert_ne!(m.canonical_json(), bytes);
            }
        }
    }
}
