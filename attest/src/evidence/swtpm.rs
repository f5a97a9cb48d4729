//! The TPM simulator (`swtpm`, Debian's swtpm package) as a child process: a fresh TPM 2.0 in
//! socket mode on a temporary state directory and two free loopback ports, for tests and local
//! fleets. Killed when dropped.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::EvidenceError;

/// A running swtpm.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two consecutive free loopback ports (the swtpm TCTI uses `port` and `port + 1`).
fn free_port_pair() -> Option<u16> {
    for _ in 0..200 {
        let Ok(a) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = a.local_addr() else { continue };
        let p = addr.port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return Some(p);
        }
    }
    None
}

impl Swtpm {
    /// Whether the `swtpm` binary is installed.
    pub fn available() -> bool {
        Command::new("swtpm")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    }

    /// Starts a fresh simulated TPM and waits until it listens.
    pub fn start() -> Result<Self, EvidenceError> {
        let err = |m: String| EvidenceError::Device(format!("swtpm: {m}"));
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().map_err(|e| err(format!("state directory: {e}")))?;
            let port = free_port_pair().ok_or_else(|| err("no two free loopback ports".into()))?;
            let child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
                .arg("--tpmstate")
                .arg(format!("dir={}", dir.path().display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    err(format!(
                        "cannot run swtpm ({e}); install Debian's swtpm and swtpm-tools"
                    ))
                })?;
            let mut s = Swtpm {
                child,
                port,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = s.child.try_wait() {
                    break; // lost a port race: try another pair
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && TcpStream::connect(("127.0.0.1", port + 1)).is_ok()
                {
                    return Ok(s);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Err(err("did not start listening".into()))
    }

    /// The TSS2 TCTI string that reaches it.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}
