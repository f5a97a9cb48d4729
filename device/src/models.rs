//! The models a device knows: where their files are, and the digests that pin them.
//!
//! A [`ModelPin`] holds a model's content digest (what receipts and routing headers name) and
//! the SHA-256 of each of its files (what a node's release manifest lists), for the model and
//! each adapter under `<model dir>/adapters/<name>/`. The device requires a node's release to
//! contain exactly these file digests before it seals anything to it, so a remote answer comes
//! from the very files the device holds (or pins, for the server model).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tandem_attest::digest::Sha256Digest as FileDigest;
use tandem_model::{AdapterDigest, ModelDigest};

use crate::error::ConfigError;

/// Which of the two models of the family a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum ModelChoice {
    /// The small on-device model (default). Runs locally or on nodes serving the same files.
    #[default]
    Device,
    /// The larger server model. Runs only on nodes.
    Server,
}

impl ModelChoice {
    /// `"device"` or `"server"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelChoice::Device => "device",
            ModelChoice::Server => "server",
        }
    }
}

impl fmt::Display for ModelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ModelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "device" => Ok(ModelChoice::Device),
            "server" => Ok(ModelChoice::Server),
            _ => Err(format!(
                "unknown model `{s}`: expected `device` or `server`"
            )),
        }
    }
}

/// Where the embedded models live when nothing else says: `$TANDEM_MODELS` if set, else the
/// repository's `models/` directory this binary was built from (if it still exists), else
/// `./models`.
pub fn default_models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TANDEM_MODELS") {
        return PathBuf::from(d);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    if built.is_dir() {
        return built;
    }
    PathBuf::from("models")
}

pub use tandem_model::gguf::cache_dir;

/// The model directory for a configured path: the path itself, or for a `.gguf` file its f16
/// import under [`cache_dir`] (made on first use, silently; the `tandem` CLI shows progress).
pub fn resolve_model_dir(path: &Path) -> Result<PathBuf, tandem_model::Error> {
    tandem_model::resolve_model_path(path, &cache_dir(), tandem_model::DType::F16, &mut |_| {})
}

/// An adapter's pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterPin {
    /// The adapter's name (its directory name).
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Its content digest.
    pub digest: AdapterDigest,
    /// SHA-256 of each of its files.
    pub file_digests: Vec<FileDigest>,
}

/// A model's pin: content digest, file digests, adapters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPin {
    /// Which model.
    pub choice: ModelChoice,
    /// Its directory.
    pub dir: PathBuf,
    /// Its content digest.
    pub digest: ModelDigest,
    /// SHA-256 of each of its files.
    pub file_digests: Vec<FileDigest>,
    /// Adapters by name.
    pub adapters: BTreeMap<String, AdapterPin>,
}

fn file_digest(path: &Path) -> Result<FileDigest, ConfigError> {
    let read = |source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    };
    let f = std::fs::File::open(path).map_err(read)?;
    let (d, _) = tandem_attest::digest::Sha256Digest::of_reader(f, |_| {}).map_err(read)?;
    Ok(d)
}

impl ModelPin {
    /// Pins the model in `dir` and every adapter under `dir/adapters/`.
    pub fn from_dir(choice: ModelChoice, dir: &Path) -> Result<ModelPin, ConfigError> {
        let field = format!("models.{choice}");
        let resolved = resolve_model_dir(dir)
            .map_err(|e| ConfigError::invalid(field.clone(), format!("{}: {e}", dir.display())))?;
        let dir = resolved.as_path();
        let bad = |e: tandem_model::Error| {
            ConfigError::invalid(
                field.clone(),
                format!("{} is not a model directory: {e}", dir.display()),
            )
        };
        let files = tandem_model::model_files(dir).map_err(bad)?;
        let digest = tandem_model::model_digest(dir).map_err(bad)?;
        let file_digests = files
            .iter()
            .map(|f| file_digest(f))
            .collect::<Result<_, _>>()?;
        let mut adapters = BTreeMap::new();
        let adir = dir.join("adapters");
        if adir.is_dir() {
            let entries = std::fs::read_dir(&adir).map_err(|source| ConfigError::Read {
                path: adir.display().to_string(),
                source,
            })?;
            for e in entries.flatten() {
                let p = e.path();
                let files = tandem_model::adapter_files(&p);
                if !files.iter().all(|f| f.is_file()) {
                    continue;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                let digest = tandem_model::adapter_digest(&p).map_err(|e| {
                    ConfigError::invalid(
                        format!("{field}.adapters.{name}"),
                        format!("{}: {e}", p.display()),
                    )
                })?;
                let file_digests = files
                    .iter()
                    .map(|f| file_digest(f))
                    .collect::<Result<_, _>>()?;
                adapters.insert(
                    name.clone(),
                    AdapterPin {
                        name,
                        dir: p,
                        digest,
                        file_digests,
                    },
                );
            }
        }
        Ok(ModelPin {
            choice,
            dir: dir.to_owned(),
            digest,
            file_digests,
            adapters,
        })
    }

    /// The adapter named `name`, or an error listing the installed ones.
    pub fn adapter(&self, name: &str) -> Result<&AdapterPin, String> {
        self.adapters.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.adapters.keys().map(String::as_str).collect();
            format!(
                "the {} model has no adapter `{name}` (installed: {})",
                self.choice,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
    }

    /// The file digests a node's release must contain to serve this model with `adapter`.
    pub fn required_digests(&self, adapter: Option<&AdapterPin>) -> Vec<FileDigest> {
        let mut v = self.file_digests.clone();
        if let Some(a) = adapter {
            v.extend(a.file_digests.iter().copied());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_device_model_pins_its_files_and_adapters() {
        let dir = default_models_dir().join("device");
        let pin = ModelPin::from_dir(ModelChoice::Device, &dir).expect("pin");
        assert_eq!(
            pin.file_digests.len(),
            5,
            "config, tokenizer, weights and the two files of the recovery (base) adapter"
        );
        assert!(pin.adapters.contains_key("proofread"));
        let a = pin.adapter("proofread").expect("adapter");
        assert_eq!(pin.required_digests(Some(a)).len(), 7);
        let e = pin.adapter("nope").expect_err("unknown");
        assert!(e.contains("proofread") && e.contains("truecase"), "{e}");
        assert_eq!(
            pin.digest,
            tandem_model::model_digest(&dir).expect("digest")
        );
    }

    #[test]
    fn not_a_model_dir_is_a_config_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = ModelPin::from_dir(ModelChoice::Server, dir.path()).expect_err("empty dir");
        assert!(e.to_string().starts_with("models.server"), "{e}");
    }

    #[test]
    fn model_choice_parses() {
        assert_eq!("server".parse::<ModelChoice>(), Ok(ModelChoice::Server));
        assert!("big".parse::<ModelChoice>().is_err());
    }
}
