//! The release measurement a node expects of itself, and the check against its signed release.
//!
//! Artifact names (what `tandem-fleet dev` and release tooling must produce, see
//! [`expected_artifacts`]):
//!
//! | kind | name | file |
//! |---|---|---|
//! | `node-binary` | file name of the executable (`tandem-node`) | the running executable |
//! | `node-config` | file name of the config (`node.toml`) | the config bytes the node read |
//! | `base-model` | `<model>/config.json`, `<model>/<weights>.safetensors`, `<model>/model.safetensors.index.json`, and a base adapter's files (`<model>/<base adapter dir>/adapter_config.json`, `…/adapter_model.safetensors`) | each model directory |
//! | `adapter` | `<model>/adapters/<name>/adapter_config.json`, `<model>/adapters/<name>/adapter_model.safetensors` | each served adapter |
//! | `tokenizer` | `tokenizer.json` | the one tokenizer every model shares |
//!
//! `<model>` is the model directory's last path component (`device`, `server`).

use std::path::{Path, PathBuf};

use tandem_attest::digest::Sha256Digest;
use tandem_attest::release::{Artifact, ArtifactKind, ReleaseBundle, ReleaseManifest};

use super::NodeError;
use crate::config::ResolvedModel;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// SHA-256 and length of a file, streamed.
pub fn digest_file(path: &Path) -> Result<(Sha256Digest, u64), NodeError> {
    let f = std::fs::File::open(path).map_err(io(path))?;
    Sha256Digest::of_reader(f, |_| {}).map_err(io(path))
}

fn file_artifact(kind: ArtifactKind, name: String, path: &Path) -> Result<Artifact, NodeError> {
    let (sha256, size) = digest_file(path)?;
    Ok(Artifact {
        kind,
        name,
        sha256,
        size,
    })
}

/// Every artifact the node's release must list, measured from the files on disk (the
/// executable at `binary`, the config bytes as read, each model and served adapter).
pub fn expected_artifacts(
    binary: &Path,
    config_name: &str,
    config_bytes: &[u8],
    models: &[ResolvedModel],
) -> Result<Vec<Artifact>, NodeError> {
    let bin_name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tandem-node".into());
    let mut arts = vec![
        file_artifact(ArtifactKind::NodeBinary, bin_name, binary)?,
        Artifact {
            kind: ArtifactKind::NodeConfig,
            name: config_name.to_owned(),
            sha256: Sha256Digest::of(config_bytes),
            size: config_bytes.len() as u64,
        },
    ];
    let mut tokenizer: Option<(Artifact, PathBuf)> = None;
    for m in models {
        // Exactly the files `tandem_model` reads (and its model digest covers), less the
        // tokenizer, which is one shared artifact.
        let files =
            tandem_model::loader::model_files(&m.dir).map_err(|source| NodeError::Model {
                dir: m.dir.clone(),
                source: Box::new(source),
            })?;
        for f in files {
            // Named by the path inside the model directory (a base adapter's files sit in
            // a subdirectory, e.g. `recovery/adapter_config.json`).
            let Some(name) = f
                .strip_prefix(&m.dir)
                .ok()
                .filter(|r| r.components().count() > 0)
                .map(|r| r.to_string_lossy().replace('\\', "/"))
            else {
                continue;
            };
            if name == "tokenizer.json" {
                continue;
            }
            arts.push(file_artifact(
                ArtifactKind::BaseModel,
                format!("{}/{name}", m.name),
                &f,
            )?);
        }
        for a in &m.adapters {
            for f in ["adapter_config.json", "adapter_model.safetensors"] {
                arts.push(file_artifact(
                    ArtifactKind::Adapter,
                    format!("{}/adapters/{a}/{f}", m.name),
                    &m.dir.join("adapters").join(a).join(f),
                )?);
            }
        }
        let tp = m.dir.join("tokenizer.json");
        let t = file_artifact(ArtifactKind::Tokenizer, "tokenizer.json".into(), &tp)?;
        match &tokenizer {
            None => tokenizer = Some((t, tp)),
            Some((first, fp)) if first.sha256 != t.sha256 => {
                return Err(NodeError::Release(format!(
                    "models use different tokenizers ({} is {}, {} is {}); a release measures \
                     one tokenizer.json shared by every model",
                    fp.display(),
                    first.sha256,
                    tp.display(),
                    t.sha256
                )));
            }
            Some(_) => {}
        }
    }
    if let Some((t, _)) = tokenizer {
        arts.push(t);
    }
    Ok(arts)
}

/// The manifest named `name` over `artifacts`.
pub fn manifest(name: &str, artifacts: Vec<Artifact>) -> Result<ReleaseManifest, NodeError> {
    ReleaseManifest::new(name, artifacts).map_err(|e| NodeError::Release(e.to_string()))
}

/// Checks that the signed release is exactly this node's measurement; on a mismatch the error
/// lists which artifacts differ.
pub fn check_release(bundle: &ReleaseBundle, measured: Vec<Artifact>) -> Result<(), NodeError> {
    let signed = bundle.statement().manifest();
    let ours = manifest(signed.name(), measured)?;
    if ours.digest() == signed.digest() {
        return Ok(());
    }
    let mut diffs = Vec::new();
    for a in ours.artifacts() {
        match signed
            .artifacts()
            .iter()
            .find(|b| b.kind == a.kind && b.name == a.name)
        {
            None => diffs.push(format!(
                "{} {} is not in the release",
                a.kind.as_str(),
                a.name
            )),
            Some(b) if b.sha256 != a.sha256 || b.size != a.size => diffs.push(format!(
                "{} {} is {} here but {} in the release",
                a.kind.as_str(),
                a.name,
                a.sha256.short(),
                b.sha256.short()
            )),
            Some(_) => {}
        }
    }
    for b in signed.artifacts() {
        if !ours
            .artifacts()
            .iter()
            .any(|a| a.kind == b.kind && a.name == b.name)
        {
            diffs.push(format!(
                "{} {} is in the release but not served here",
                b.kind.as_str(),
                b.name
            ));
        }
    }
    Err(NodeError::Release(format!(
        "this node measures as release {} but the release bundle is for {}: {}; rebuild the \
         release from this binary, config and models",
        ours.digest(),
        signed.digest(),
        diffs.join("; ")
    )))
}
