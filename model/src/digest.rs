//! Content digests of models and adapters, the values the attestation layer puts into releases.
//!
//! Canonical form: the files that define the model (the ones the loader reads) are sorted by
//! file name (byte order), and SHA-256 runs over, for each file in that order,
//! `name ‖ 0x00 ‖ u64_be(len) ‖ contents`. Names are plain file names (no directories), so a
//! digest does not depend on where the directory lives. Model files: `config.json`,
//! `tokenizer.json`, `model.safetensors.index.json` when present, and every weights shard.
//! Adapter files: `adapter_config.json` and `adapter_model.safetensors`.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

pub use tandem_digest::Sha256Digest;

macro_rules! digest_type {
    ($name:ident, $what:literal) => {
        #[doc = concat!("Digest of ", $what, " (see the module docs for the canonical form).")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Sha256Digest);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                s.parse()
                    .map($name)
                    .map_err(|e: tandem_digest::DigestParseError| e.to_string())
            }
        }
    };
}

digest_type!(ModelDigest, "a base model directory");
digest_type!(AdapterDigest, "a LoRA adapter directory");

/// Hashes `files` (paths whose file names are unique) in canonical order.
pub fn digest_files(files: &[PathBuf]) -> std::io::Result<Sha256Digest> {
    let mut named: Vec<(String, &Path)> = files
        .iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, p.as_path())
        })
        .collect();
    named.sort();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for (name, path) in named {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        h.update(name.as_bytes());
        h.update([0u8]);
        h.update(len.to_be_bytes());
        let mut seen = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            seen += n as u64;
            h.update(&buf[..n]);
        }
        if seen != len {
            return Err(std::io::Error::other(format!(
                "{} changed size while hashing",
                path.display()
            )));
        }
    }
    Ok(Sha256Digest(h.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_order_and_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.json");
        let b = dir.path().join("b.safetensors");
        std::fs::write(&a, b"xy").expect("write");
        std::fs::write(&b, b"z").expect("write");
        let d1 = digest_files(&[a.clone(), b.clone()]).expect("digest");
        let d2 = digest_files(&[b.clone(), a.clone()]).expect("digest");
        assert_eq!(d1, d2);
        let mut h = Sha256::new();
        h.update(b"a.json\0\0\0\0\0\0\0\0\x02xy");
        h.update(b"b.safetensors\0\0\0\0\0\0\0\0\x01z");
        assert_eq!(d1.0, <[u8; 32]>::from(h.finalize()));
        let s = ModelDigest(d1).to_string();
        assert!(s.starts_with("sha256:") && s.len() == 71);
        assert_eq!(s.parse::<ModelDigest>().expect("parse"), ModelDigest(d1));
        std::fs::write(&b, b"w").expect("write");
        assert_ne!(digest_files(&[a, b]).expect("digest"), d1);
    }
}
