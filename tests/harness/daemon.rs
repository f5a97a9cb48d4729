//! `tandem serve` as a child process, and the Python clients (the official `openai` package,
//! `grpcio`) that talk to it from `tests/py/`, in the virtual environment `scripts/py/venv.sh`
//! makes.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::real_model::{repo_file, script};

/// A running `tandem serve`.
pub struct DaemonRun {
    pub child: Option<Child>,
    /// Its Unix socket.
    pub socket: PathBuf,
    /// Its loopback TCP address.
    pub tcp: SocketAddr,
    /// Its directory (the socket, its stderr).
    pub dir: tempfile::TempDir,
}

impl DaemonRun {
    /// Starts `tandem serve` on a socket in a fresh directory and on 127.0.0.1:0, with `extra`
    /// arguments; waits for `ready`.
    pub fn start(extra: &[&str]) -> DaemonRun {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("daemon.sock");
        let mut child = Command::new(crate::bins::path("tandem"))
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("TANDEM_MODELS", crate::fleet::models_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("stderr")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut tcp = None;
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!(
                        "tandem serve did not print `ready`; stderr:\n{}",
                        std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default()
                    )
                });
            if line == "ready" {
                break;
            }
            if let Some(a) = line.strip_prefix("listening tcp ") {
                tcp = Some(a.parse().unwrap());
            }
        }
        DaemonRun {
            child: Some(child),
            socket,
            tcp: tcp.expect("tandem serve prints its TCP address"),
            dir,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.tcp)
    }

    /// Sends SIGTERM and waits; returns the exit status and stderr.
    pub fn stop(&mut self) -> (std::process::ExitStatus, String) {
        let mut c = self.child.take().expect("running");
        tandem_fleet::dev::send_signal(c.id(), tandem_fleet::dev::StopSignal::Term).unwrap();
        let status = c.wait().unwrap();
        (
            status,
            std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default(),
        )
    }
}

impl Drop for DaemonRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = tandem_fleet::dev::send_signal(c.id(), tandem_fleet::dev::StopSignal::Term);
            let _ = c.wait();
        }
    }
}

/// The python of the pinned client environment (`scripts/py/venv.sh`, made once).
pub fn python() -> PathBuf {
    PathBuf::from(script("scripts/py/venv.sh", &[]))
}

/// Runs `tests/py/<script>` with `args`; panics with its output unless it succeeds. Returns
/// its stdout.
pub fn run_py(script: &str, args: &[&std::ffi::OsStr], envs: &[(&str, &Path)]) -> String {
    let path = repo_file(&format!("tests/py/{script}"));
    let mut cmd = Command::new(python());
    cmd.arg(&path).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} {:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        path.display(),
        args,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
