//! Programs of a multi-host fleet as child processes: any command whose first lines on stdout
//! say it is ready (`tandem-node serve`: `serving ADDR`; `tandem-gateway`: `gateway listening
//! on ADDR metrics ADDR`; `attest log serve`: `listening on http://ADDR`), its standard error
//! kept in a file; and a real DNS server (Debian's `dnsmasq`) on a loopback port. Every process
//! is killed when its value is dropped, so a failing test leaves none behind.

use std::io::BufRead as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A child process with its stdout lines on a channel and its stderr in a file.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub stderr_path: PathBuf,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `cmd` (stdin closed, stdout read line by line, stderr to `<log_dir>/<name>.err`).
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Proc {
        let stderr_path = log_dir.join(format!("{name}.err"));
        let err = std::fs::File::create(&stderr_path).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            name: name.to_owned(),
            child,
            stderr_path,
            lines,
        }
    }

    /// The first stdout line starting with `prefix`, without it; `Err` (with the process's
    /// stderr) if it exits or `timeout` passes first.
    pub fn wait_line(&self, prefix: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.to_owned());
                    }
                }
                Err(e) => {
                    return Err(format!(
                        "{} printed no {prefix:?} line ({e:?}); its stderr:\n{}",
                        self.name,
                        self.stderr()
                    ));
                }
            }
        }
    }

    /// Everything it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let _ =
            tandem_fleet::dev::send_signal(self.child.id(), tandem_fleet::dev::StopSignal::Term);
        if self.wait_exit(grace).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port that was free on `ip` just now (for programs that must be told their port).
pub fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP and TCP port that were both free on `ip` just now.
pub fn free_dns_port(ip: IpAddr) -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(SocketAddr::new(ip, port)).is_ok() {
            return port;
        }
    }
}

/// Whether a program is on PATH (or at an absolute path).
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether this process runs as root (uid 0).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A real DNS server: Debian's `dnsmasq` in the foreground on `127.0.0.1:<port>`, answering
/// only from what the test gives it: an additional hosts file (re-read on SIGHUP, see
/// [`Dnsmasq::set_hosts`]) and command-line records (`--srv-host`, `--host-record`, fixed for
/// its lifetime). Names under `local_domain` that it does not know get NXDOMAIN; it asks no
/// upstream server.
pub struct Dnsmasq {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub hosts: PathBuf,
}

impl Dnsmasq {
    /// Starts it on `port` with `records` (extra arguments, e.g. `--srv-host=…`) and an empty
    /// hosts file in `dir`.
    pub fn start(dir: &Path, port: u16, local_domain: &str, records: &[String]) -> Dnsmasq {
        let hosts = dir.join("dns-hosts");
        if !hosts.exists() {
            std::fs::write(&hosts, "").unwrap();
        }
        let mut cmd = Command::new("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--log-facility=-",
            "--conf-file=/dev/null",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--addn-hosts={}", hosts.display()))
        .arg(format!("--local=/{local_domain}/"))
        .args(records);
        // As root it would switch to an unprivileged user that cannot read the test's files.
        if is_root() {
            cmd.arg("--user=root");
        }
        let name = format!("dnsmasq-{port}");
        let proc = Proc::spawn(&name, &mut cmd, dir);
        let d = Dnsmasq {
            proc,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            hosts,
        };
        d.wait_log("read ", Duration::from_secs(10));
        d
    }

    /// Waits until its log has a line containing `what`.
    pub fn wait_log(&self, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.proc.stderr().contains(what) {
            assert!(
                Instant::now() < deadline,
                "dnsmasq logged no {what:?}:\n{}",
                self.proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces the hosts file (`address name` lines) and makes dnsmasq read it again
    /// (SIGHUP); returns once it logged the new read.
    pub fn set_hosts(&mut self, entries: &[(IpAddr, &str)]) {
        let text: String = entries
            .iter()
            .map(|(ip, name)| format!("{ip} {name}\n"))
            .collect();
        std::fs::write(&self.hosts, text).unwrap();
        let before = self.proc.stderr().matches("read ").count();
        let hup = Command::new("kill")
            .args(["-HUP", &self.proc.child.id().to_string()])
            .status()
            .unwrap();
        assert!(hup.success(), "kill -HUP dnsmasq failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.proc.stderr().matches("read ").count() <= before {
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not re-read its hosts file"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A finished command's outcome for an assertion: whether it succeeded, and its standard output
/// followed by its standard error.
pub fn outcome(out: &std::process::Output) -> (bool, String) {
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
