//! The measured launcher, standing in for measured boot: before a TPM-rooted node runs, it
//! measures what the node is and extends each measurement into PCR 13, which only a reboot
//! resets (`tandem_attest::evidence::eventlog` says why 13 and what is extended), appending
//! every extension to the launch event log; then it runs the node, which only quotes.
//!
//! [`launch`] runs, in order; any failure stops before the PCR is touched if it can:
//! 1. refuse dynamic-loader variables (`LD_PRELOAD`, `LD_LIBRARY_PATH`, `LD_AUDIT`): they
//!    would change the measured node's code without changing its measurement;
//! 2. measure the launcher's own executable, the node executable (hashed from the open file
//!    that is then executed, [`Launched::exec_path`]), the config bytes and the release
//!    digest of the release bundle, and check that the release lists that node binary and
//!    config (else the verifier would refuse the node anyway);
//! 3. read the event log written so far at this boot (the boot chain's events; none if the
//!    file is absent) and check it replays to PCR 13's current value, and that no node was
//!    launched since boot (a second launch would be refused by every verifier);
//! 4. for each of `launcher`, `node-binary`, `node-config`, `release`: extend PCR 13, append
//!    the event, write the log (by rename, so a reader never sees half a log).
//!
//! On a real node the boot chain (boot loader, kernel, initrd) measures `tandem-launch`
//! before running it and starts it before any login is possible; this stand-in measures its
//! own executable as the `launcher` event, which is only as trustworthy as what started it.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};

use tandem_attest::digest::Sha256Digest;
use tandem_attest::evidence::eventlog::{EventKind, EventLog, LAUNCH_PCR};
use tandem_attest::evidence::tpm_device;
use tandem_attest::release::{ArtifactKind, ReleaseBundle};

/// Dynamic-loader variables that change what code the node runs.
pub const REFUSED_ENV: [&str; 3] = ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT"];

/// Why the launch stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The environment would change the node's code.
    #[error(
        "{0} is set; it would load code into the node that the measurement does not cover; \
         unset it (tandem-launch refuses LD_PRELOAD, LD_LIBRARY_PATH and LD_AUDIT)"
    )]
    Environment(String),
    /// The release bundle does not describe this node.
    #[error("release: {0}")]
    Release(String),
    /// The event log or PCR 13 is not what a fresh boot leaves.
    #[error("launch PCR {LAUNCH_PCR}: {0}")]
    State(String),
    /// The TPM failed.
    #[error(transparent)]
    Tpm(#[from] tandem_attest::EvidenceError),
}

/// What to launch.
#[derive(Debug, Clone)]
pub struct Plan {
    /// TSS2 TCTI of the node's TPM.
    pub tcti: String,
    /// The launch event log (read, then rewritten with the launch events).
    pub event_log: PathBuf,
    /// The node executable.
    pub node: PathBuf,
    /// The node config (measured as read here).
    pub config: PathBuf,
    /// The node's signed release bundle.
    pub release: PathBuf,
    /// The launcher's own executable (measured as the `launcher` event).
    pub launcher: PathBuf,
}

/// A launch that was measured and recorded: run [`Launched::command`] next.
#[derive(Debug)]
pub struct Launched {
    /// The node executable, open: the file that was hashed is the file that runs.
    node_file: File,
    /// The events appended (kind, digest), in order.
    pub events: Vec<(EventKind, Sha256Digest)>,
}

impl Launched {
    /// The path that executes the very file that was hashed (`/proc/self/fd/N`).
    pub fn exec_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd as _;
        PathBuf::from(format!("/proc/self/fd/{}", self.node_file.as_raw_fd()))
    }

    /// `tandem-node serve` for `plan`, with `extra` serve arguments after the launcher's.
    /// `argv[0]` is the node's path, so the node measures and names itself as usual.
    pub fn command(&self, plan: &Plan, extra: &[OsString]) -> std::process::Command {
        use std::os::unix::process::CommandExt as _;
        let mut c = std::process::Command::new(self.exec_path());
        c.arg0(&plan.node)
            .arg("serve")
            .arg("--config")
            .arg(&plan.config)
            .arg("--release")
            .arg(&plan.release)
            .arg("--tpm-tcti")
            .arg(&plan.tcti)
            .arg("--tpm-event-log")
            .arg(&plan.event_log)
            .args(extra);
        c
    }
}

/// Step 1: refuses dynamic-loader variables in `env`.
pub fn check_environment(
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<(), LaunchError> {
    for (k, _) in env {
        if let Some(name) = REFUSED_ENV.iter().find(|n| k == **n) {
            return Err(LaunchError::Environment((*name).to_owned()));
        }
    }
    Ok(())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, LaunchError> {
    std::fs::read(path).map_err(|source| LaunchError::Io {
        what,
        path: path.to_owned(),
        source,
    })
}

fn hash_file(what: &'static str, path: &Path) -> Result<(File, Sha256Digest), LaunchError> {
    let io = |source| LaunchError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let f = File::open(path).map_err(io)?;
    let (d, _) = Sha256Digest::of_reader(&f, |_| {}).map_err(io)?;
    Ok((f, d))
}

/// Writes the log next to its final place and renames it there.
fn write_log(path: &Path, log: &EventLog) -> Result<(), LaunchError> {
    let io = |source| LaunchError::Io {
        what: "writing the event log",
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, log.encode()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Steps 2–4 (see the module docs). Step 1 is [`check_environment`].
pub fn launch(plan: &Plan) -> Result<Launched, LaunchError> {
    // 2. Measure.
    let (_, launcher) = hash_file("measuring the launcher", &plan.launcher)?;
    let (node_file, node) = hash_file("measuring the node binary", &plan.node)?;
    let config = Sha256Digest::of(&read("reading the node config", &plan.config)?);
    let bundle = ReleaseBundle::from_json(&read("reading the release bundle", &plan.release)?)
        .map_err(|e| LaunchError::Release(format!("{}: {e}", plan.release.display())))?;
    let release = bundle.release_digest();
    let manifest = bundle.statement().manifest();
    for (kind, digest, path) in [
        (ArtifactKind::NodeBinary, node, &plan.node),
        (ArtifactKind::NodeConfig, config, &plan.config),
    ] {
        if !manifest
            .artifacts()
            .iter()
            .any(|a| a.kind == kind && a.sha256 == digest)
        {
            return Err(LaunchError::Release(format!(
                "{} is {} but release {} lists no such {}; launch the node of this release",
                path.display(),
                digest.short(),
                release.short(),
                kind.as_str()
            )));
        }
    }
    // 3. The state so far.
    let mut log = match std::fs::read(&plan.event_log) {
        Ok(b) => EventLog::parse(&b)
            .map_err(|e| LaunchError::State(format!("{}: {e}", plan.event_log.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => EventLog::new(),
        Err(source) => {
            return Err(LaunchError::Io {
                what: "reading the event log",
                path: plan.event_log.clone(),
                source,
            });
        }
    };
    if log.events().iter().any(|e| e.kind != EventKind::BootChain) {
        return Err(LaunchError::State(format!(
            "{} already records a launch since boot; a node can be launched once per boot \
             (reboot to launch again)",
            plan.event_log.display()
        )));
    }
    let mut ctx = tpm_device::open(&plan.tcti)?;
    let pcr = tpm_device::read_launch_pcr(&mut ctx)?;
    if pcr != log.replay() {
        return Err(LaunchError::State(format!(
            "the TPM's PCR {LAUNCH_PCR} does not equal what {} replays to ({} events); \
             something extended it without recording the event; reboot",
            plan.event_log.display(),
            log.events().len()
        )));
    }
    // 4. Extend and record, one event at a time.
    let events = vec![
        (EventKind::Launcher, launcher),
        (EventKind::NodeBinary, node),
        (EventKind::NodeConfig, config),
        (EventKind::Release, release),
    ];
    for (kind, digest) in &events {
        let e = *log.push(*kind, *digest)?;
        tpm_device::extend_event(&mut ctx, &e)?;
        write_log(&plan.event_log, &log)?;
    }
    // The node opens its own connection (swtpm serves one at a time).
    drop(ctx);
    Ok(Launched { node_file, events })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_variables_are_refused() {
        let env = |k: &str| {
            vec![
                (OsString::from("PATH"), "/bin".into()),
                (k.into(), "x".into()),
            ]
        };
        for k in REFUSED_ENV {
            let e = check_environment(env(k)).expect_err(k);
            assert!(e.to_string().contains(k), "{e}");
        }
        check_environment(env("RUST_LOG")).expect("other variables pass");
    }
}
