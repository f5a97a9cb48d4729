//! `attest release create|keygen|sign|show`: make a release manifest from files, sign it as a
//! Sigstore bundle, and show manifests and bundles.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tandem_attest::digest::Sha256Digest;
use tandem_attest::log::InclusionBundle;
use tandem_attest::release::{
    Artifact, ArtifactKind, LogEntry, ReleaseBundle, ReleaseManifest, ReleaseSigningKey,
};

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    #[command(subcommand)]
    command: ReleaseCommand,
}

#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// Measure files into a release manifest (canonical JSON; its SHA-256 is the release digest).
    Create(CreateArgs),
    /// Generate an ECDSA P-256 release signing key (PKCS#8 PEM) and print its public key.
    Keygen(KeygenArgs),
    /// Sign a manifest: a Sigstore bundle v0.3 over a DSSE envelope with an in-toto statement.
    Sign(SignArgs),
    /// Print the bytes to append to the transparency log for a signed bundle.
    LogEntry(LogEntryArgs),
    /// Attach the log's inclusion proof (`attest log append --json` output) to a signed bundle.
    Attach(AttachArgs),
    /// Show a manifest or a release bundle.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
struct LogEntryArgs {
    /// The signed bundle.
    bundle: PathBuf,
    /// Where to write the entry (default: standard output).
    #[arg(short, long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct AttachArgs {
    /// The signed bundle.
    bundle: PathBuf,
    /// The inclusion bundle JSON printed by `attest log append --json`.
    #[arg(long)]
    inclusion: PathBuf,
    /// Where to write the logged bundle (default: standard output).
    #[arg(short, long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// Release name, e.g. "tandem-node 0.1.0".
    #[arg(long)]
    name: String,
    /// The node executable.
    #[arg(long)]
    node_binary: PathBuf,
    /// The node's configuration file.
    #[arg(long)]
    node_config: PathBuf,
    /// Base model files or directories (every regular file inside is measured).
    #[arg(long, required = true)]
    base_model: Vec<PathBuf>,
    /// Adapter files or directories.
    #[arg(long)]
    adapter: Vec<PathBuf>,
    /// The tokenizer file.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Where to write the manifest (default: standard output).
    #[arg(short, long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct KeygenArgs {
    /// Where to write the private key (PKCS#8 PEM, mode 0600).
    #[arg(short, long)]
    out: PathBuf,
    /// Where to write the public key (default: standard output).
    #[arg(long)]
    public_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SignArgs {
    /// The manifest made by `attest release create`.
    manifest: PathBuf,
    /// The release signing key (PKCS#8 PEM).
    #[arg(long)]
    key: PathBuf,
    /// Where to write the bundle (default: standard output).
    #[arg(short, long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ShowArgs {
    /// A manifest or a release bundle.
    file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ReleaseArgs) -> Result<()> {
    match args.command {
        ReleaseCommand::Create(a) => create(a),
        ReleaseCommand::Keygen(a) => keygen(a),
        ReleaseCommand::Sign(a) => sign(a),
        ReleaseCommand::LogEntry(a) => log_entry(a),
        ReleaseCommand::Attach(a) => attach(a),
        ReleaseCommand::Show(a) => show(a),
    }
}

fn read_bundle(path: &Path) -> Result<ReleaseBundle> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ReleaseBundle::from_json(&bytes)
        .with_context(|| format!("{} is not a release bundle", path.display()))
}

fn log_entry(a: LogEntryArgs) -> Result<()> {
    let b = read_bundle(&a.bundle)?;
    match a.out.as_deref() {
        Some(p) => {
            fs::write(p, b.log_entry_body()).with_context(|| format!("writing {}", p.display()))
        }
        None => {
            use std::io::Write;
            std::io::stdout().lock().write_all(&b.log_entry_body())?;
            Ok(())
        }
    }
}

fn attach(a: AttachArgs) -> Result<()> {
    let b = read_bundle(&a.bundle)?;
    let text =
        fs::read(&a.inclusion).with_context(|| format!("reading {}", a.inclusion.display()))?;
    let inc: InclusionBundle = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not an inclusion bundle (`attest log append --json` output)",
            a.inclusion.display()
        )
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let entry = LogEntry::from_inclusion(&inc, now)?;
    let index = entry.log_index;
    let logged = b.with_log_entry(entry);
    write_out(a.out.as_deref(), &logged.to_json())?;
    eprintln!("attached log entry {index}; check it with `attest verify release`");
    Ok(())
}

fn write_out(out: Option<&Path>, bytes: &[u8]) -> Result<()> {
    match out {
        Some(p) => fs::write(p, bytes).with_context(|| format!("writing {}", p.display())),
        None => {
            use std::io::Write;
            let mut o = std::io::stdout().lock();
            o.write_all(bytes)?;
            o.write_all(b"\n")?;
            Ok(())
        }
    }
}

/// Expands a path into (name, path) pairs: a file is itself; a directory is every regular file
/// under it, named `<dir name>/<relative path>` with `/` separators, sorted.
fn expand(path: &Path) -> Result<Vec<(String, PathBuf)>> {
    let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    if meta.is_file() {
        return Ok(vec![(base, path.to_owned())]);
    }
    if !meta.is_dir() {
        bail!("{} is neither a file nor a directory", path.display());
    }
    let mut out = Vec::new();
    let mut stack = vec![(base, path.to_owned())];
    while let Some((name, dir)) = stack.pop() {
        for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e?;
            let child = format!("{name}/{}", e.file_name().to_string_lossy());
            let ty = e.file_type()?;
            if ty.is_dir() {
                stack.push((child, e.path()));
            } else if ty.is_file() {
                out.push((child, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn create(a: CreateArgs) -> Result<()> {
    let mut inputs: Vec<(ArtifactKind, String, PathBuf)> = Vec::new();
    let mut add = |kind, paths: &[PathBuf]| -> Result<()> {
        for p in paths {
            for (name, path) in expand(p)? {
                inputs.push((kind, name, path));
            }
        }
        Ok(())
    };
    add(
        ArtifactKind::NodeBinary,
        std::slice::from_ref(&a.node_binary),
    )?;
    add(
        ArtifactKind::NodeConfig,
        std::slice::from_ref(&a.node_config),
    )?;
    add(ArtifactKind::BaseModel, &a.base_model)?;
    add(ArtifactKind::Adapter, &a.adapter)?;
    add(ArtifactKind::Tokenizer, std::slice::from_ref(&a.tokenizer))?;

    let total: u64 = inputs
        .iter()
        .map(|(_, _, p)| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut artifacts = Vec::with_capacity(inputs.len());
    for (kind, name, path) in inputs {
        bar.set_message(name.clone());
        let f = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let (digest, size) = Sha256Digest::of_reader(f, |n| bar.inc(n))
            .with_context(|| format!("reading {}", path.display()))?;
        artifacts.push(Artifact {
            kind,
            name,
            sha256: digest,
            size,
        });
    }
    bar.finish_and_clear();
    let manifest = ReleaseManifest::new(a.name, artifacts)?;
    write_out(a.out.as_deref(), &manifest.canonical_json())?;
    eprintln!("release digest {}", manifest.digest());
    Ok(())
}

fn keygen(a: KeygenArgs) -> Result<()> {
    let key = ReleaseSigningKey::generate();
    let pem = key.to_pkcs8_pem()?;
    write_private(&a.out, pem.as_bytes())?;
    let public = key.public_key();
    write_out(
        a.public_out.as_deref(),
        public.to_pem().trim_end().as_bytes(),
    )?;
    eprintln!("release signer key id {}", public.key_id());
    Ok(())
}

/// Writes a private key readable only by its owner.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

fn sign(a: SignArgs) -> Result<()> {
    let bytes =
        fs::read(&a.manifest).with_context(|| format!("reading {}", a.manifest.display()))?;
    let manifest = ReleaseManifest::from_canonical_json(&bytes).with_context(|| {
        format!(
            "{} is not a canonical release manifest",
            a.manifest.display()
        )
    })?;
    let pem = fs::read_to_string(&a.key).with_context(|| format!("reading {}", a.key.display()))?;
    let key = ReleaseSigningKey::from_pkcs8_pem(&pem)?;
    let digest = manifest.digest();
    let bundle = key.sign(manifest);
    write_out(a.out.as_deref(), &bundle.to_json())?;
    eprintln!(
        "signed release {digest} with key {}",
        key.public_key().key_id()
    );
    eprintln!(
        "next: append its log entry (`attest release log-entry`) to the log and attach the proof"
    );
    Ok(())
}

fn show(a: ShowArgs) -> Result<()> {
    let bytes = fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let (manifest, bundle) = match ReleaseBundle::from_json(&bytes) {
        Ok(b) => (b.statement().manifest().clone(), Some(b)),
        Err(bundle_err) => match ReleaseManifest::from_json(&bytes) {
            Ok(m) => (m, None),
            Err(manifest_err) => bail!(
                "{} is neither a release bundle ({bundle_err}) nor a manifest ({manifest_err})",
                a.file.display()
            ),
        },
    };
    if a.json {
        let mut v = serde_json::json!({
            "releaseDigest": manifest.digest().to_string(),
            "manifest": manifest.to_value(),
        });
        if let Some(b) = &bundle {
            v["signers"] = b
                .envelope()
                .signatures()
                .iter()
                .map(|s| s.keyid.clone())
                .collect::<Vec<_>>()
                .into();
            v["logEntry"] = match b.log_entry() {
                Some(e) => {
                    serde_json::json!({"logIndex": e.log_index, "treeSize": e.tree_size, "checkpoint": e.checkpoint})
                }
                None => serde_json::Value::Null,
            };
            v["unverified"] = true.into();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("release  {:?}", manifest.name());
    println!("digest   {}", manifest.digest());
    for art in manifest.artifacts() {
        println!(
            "  {:<12} {} {:>12}  {}",
            art.kind.as_str(),
            art.sha256,
            art.size,
            art.name
        );
    }
    if let Some(b) = &bundle {
        println!("(bundle contents shown as-is; run `attest verify release` to check them)");
        for s in b.envelope().signatures() {
            println!("signer   {}", s.keyid);
        }
        match b.log_entry() {
            Some(e) => println!(
                "log      entry {} in a tree of size {}",
                e.log_index, e.tree_size
            ),
            None => println!("log      not logged yet"),
        }
    }
    Ok(())
}
