//! The local fleet (`tandem-fleet dev`): everything a device needs to run remote requests on
//! one machine, on loopback, in one command.
//!
//! [`DevFleet::start`], in order:
//! 1. a state directory (temporary, removed on shutdown) with a fresh log signing key (C2SP
//!    signed-note Ed25519), release signing key (ECDSA P-256) and fleet CA (P-256);
//! 2. the transparency log, in-process ([`log`]: the `attest log serve` server);
//! 3. one identity directory per node: a P-256 identity key certified by the fleet CA
//!    (software root of trust);
//! 4. ONE node config shared by every node (models `<models>/device` and `<models>/server`,
//!    every adapter, the log URL and key, `release.json`, software root);
//! 5. the release: measured exactly as a node measures itself
//!    ([`tandem_node::node::measure::expected_artifacts`]: the node executable, the config bytes, the
//!    model, adapter and tokenizer files), signed, appended to the log, the inclusion proof
//!    attached, written to `release.json`;
//! 6. N node processes (`<exe> serve --config node.toml --listen 127.0.0.1:0 --identity DIR`),
//!    each awaited until it prints `serving ADDR`;
//! 7. the gateway, in-process, over those nodes;
//! 8. the device-side trust policy (`tandem_attest::verify::Policy` JSON: fleet CA, release
//!    signer, log key) and the device config (`tandem_device::Config` JSON).
//!
//! [`DevFleet::shutdown`] sends SIGTERM to every node (SIGKILL after a grace period), stops the
//! gateway and the log, and removes the state directory.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tandem_attest::evidence::{CertRole, FleetCa};
use tandem_attest::log::{InclusionBundle, NoteSigner};
use tandem_attest::release::{LogEntry, ReleaseSigningKey};
use tandem_attest::verify::Policy;
use thiserror::Error;

use tandem_gateway::config::NodeEndpoint;
use tandem_gateway::{BoundGateway, EventSink, GatewayConfig, GatewayError};
use tandem_node::config::{ModelConfig, NodeConfig, Overrides, RootOfTrustConfig};
use tandem_node::node::{identity, measure};

/// Origin (name) of the dev log's checkpoints.
pub const LOG_ORIGIN: &str = "tandem-dev.localhost/log";
/// Lifetime of the dev fleet's node identity certificates.
const CERT_LIFETIME_SECS: u64 = 30 * 24 * 3600;

/// The local fleet failed to start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DevError {
    /// A file could not be written or read.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The options are unusable.
    #[error("{0}")]
    Usage(String),
    /// A key, certificate, release or policy could not be made.
    #[error("{what}: {reason}")]
    Setup {
        /// Which step.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The log failed.
    #[error("transparency log: {0}")]
    Log(String),
    /// A node process did not come up.
    #[error("node {index}: {reason}")]
    Node {
        /// Which node.
        index: usize,
        /// What happened and what to check.
        reason: String,
    },
    /// The gateway failed.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

fn setup(what: &'static str) -> impl FnOnce(String) -> DevError {
    move |reason| DevError::Setup { what, reason }
}

fn write(what: &'static str, path: &Path, bytes: &[u8]) -> Result<(), DevError> {
    std::fs::write(path, bytes).map_err(|source| DevError::Io {
        what,
        path: path.to_owned(),
        source,
    })
}

/// What to start.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Number of node processes (1..=16).
    pub nodes: usize,
    /// Directory holding `device/` and `server/` model directories.
    pub models_dir: PathBuf,
    /// The device model instead of `<models_dir>/device` (a directory or a `.gguf` file).
    pub device_model: Option<PathBuf>,
    /// The server model instead of `<models_dir>/server` (a directory or a `.gguf` file, e.g.
    /// the SmolLM2 GGUF `models/fetch-smollm2.sh` fetches: imported to f16 on first use).
    pub server_model: Option<PathBuf>,
    /// The `tandem-node` executable (measured into the release and run as `serve`).
    pub node_binary: PathBuf,
    /// Gateway gRPC address (port 0 picks a free port).
    pub gateway_listen: SocketAddr,
    /// Where to write the device config JSON, if anywhere.
    pub write_config: Option<PathBuf>,
    /// How long each node may take to print `serving ADDR` (1 s..=1 hour).
    pub node_start_timeout: Duration,
    /// The log's note signing key (C2SP signed-note private key, as `attest log keygen`
    /// writes); a fresh one when `None`.
    pub log_signing_key: Option<String>,
}

impl DevOptions {
    /// Defaults: 2 nodes, `models/`, gateway on a free loopback port.
    pub fn new(node_binary: PathBuf) -> Self {
        Self {
            nodes: 2,
            models_dir: PathBuf::from("models"),
            device_model: None,
            server_model: None,
            node_binary,
            gateway_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            write_config: None,
            node_start_timeout: Duration::from_secs(300),
            log_signing_key: None,
        }
    }
}

/// One running node process.
#[derive(Debug)]
pub struct NodeProcess {
    /// Its index.
    pub index: usize,
    /// Its gRPC address.
    pub addr: SocketAddr,
    child: Child,
}

impl NodeProcess {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A running local fleet.
#[derive(Debug)]
pub struct DevFleet {
    state: tempfile::TempDir,
    /// The log's base URL.
    pub log_url: String,
    /// The gateway's gRPC address.
    pub gateway_addr: SocketAddr,
    /// The gateway's metrics address.
    pub metrics_addr: SocketAddr,
    /// The trust policy file.
    pub policy_path: PathBuf,
    /// The device config (written to `--write-config` when given).
    pub device_config: tandem_device::Config,
    /// The node processes.
    pub nodes: Vec<NodeProcess>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn abs(p: &Path) -> Result<PathBuf, DevError> {
    std::path::absolute(p).map_err(|source| DevError::Io {
        what: "resolving",
        path: p.to_owned(),
        source,
    })
}

impl DevFleet {
    /// Starts the whole fleet; `progress` gets one line per step. Must run inside a
    /// multi-threaded Tokio runtime.
    pub async fn start(
        opts: DevOptions,
        events: EventSink,
        progress: impl Fn(&str),
    ) -> Result<DevFleet, DevError> {
        if opts.nodes == 0 || opts.nodes > 16 {
            return Err(DevError::Usage(format!(
                "--nodes {} is outside 1..=16",
                opts.nodes
            )));
        }
        let secs = opts.node_start_timeout.as_secs_f64();
        if !(1.0..=3600.0).contains(&secs) {
            return Err(DevError::Usage(format!(
                "--node-start-timeout {secs} s is outside 1..=3600"
            )));
        }
        let models = abs(&opts.models_dir)?;
        let mut model_paths = Vec::with_capacity(2);
        for (m, given) in [
            ("device", &opts.device_model),
            ("server", &opts.server_model),
        ] {
            let path = match given {
                Some(p) => abs(p)?,
                None => models.join(m),
            };
            let gguf = path.is_file()
                && path
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
            if !gguf && !path.join("config.json").is_file() {
                return Err(DevError::Usage(match given {
                    Some(_) => format!(
                        "--{m}-model {}: neither a model directory (no config.json) nor a .gguf file",
                        path.display()
                    ),
                    None => format!(
                        "{} has no {m}/config.json; pass --models DIR with device/ and server/ \
                         model directories (the repository's models/), or --{m}-model PATH",
                        models.display()
                    ),
                }));
            }
            model_paths.push(path);
        }
        let (device_model, server_model) = (model_paths[0].clone(), model_paths[1].clone());
        let binary = abs(&opts.node_binary)?;
        let state = tempfile::Builder::new()
            .prefix("tandem-dev-")
            .tempdir()
            .map_err(|source| DevError::Io {
                what: "creating the state directory in",
                path: std::env::temp_dir(),
                source,
            })?;
        let dir = state.path().to_path_buf();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let mut rng = rand::rngs::OsRng;

        // 1. Keys.
        let log_signer = match &opts.log_signing_key {
            Some(skey) => NoteSigner::from_skey(skey.trim())
                .map_err(|e| DevError::Usage(format!("--log-key: {e}")))?,
            None => {
                NoteSigner::generate_with_rng(&mut rng, LOG_ORIGIN)
                    .map_err(|e| DevError::Log(e.to_string()))?
                    .0
            }
        };
        let log_vkey = log_signer.vkey().to_owned();
        let release_key = ReleaseSigningKey::generate();
        let ca = FleetCa::generate_with_rng(&mut rng);

        // 2. The log.
        let (store, _) = tandem_log::store::LogStore::open(&dir.join("log"), log_signer)
            .map_err(|e| DevError::Log(format!("{e:#}")))?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| DevError::Log(format!("binding a loopback port: {e}")))?;
        let log_addr = listener
            .local_addr()
            .map_err(|e| DevError::Log(e.to_string()))?;
        let log_url = format!("http://{log_addr}");
        {
            let mut rx = stop_rx.clone();
            let app = tandem_log::server::app(store);
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
            }));
        }
        progress(&format!("log {log_url} key {log_vkey}"));

        // 3. Node identities.
        let now = tandem_service::unix_now();
        let mut identities = Vec::with_capacity(opts.nodes);
        for i in 0..opts.nodes {
            let key = tandem_attest::evidence::software::generate_identity_key_with_rng(&mut rng);
            let cert = ca
                .certify(
                    CertRole::NodeIdentity,
                    &format!("dev-node-{i}"),
                    key.verifying_key(),
                    now.saturating_sub(3600),
                    now + CERT_LIFETIME_SECS,
                )
                .map_err(|e| setup("certifying a node identity key")(e.to_string()))?;
            let idir = dir.join(format!("node-{i}"));
            identity::write_software_identity(&idir, &key, &cert)
                .map_err(|e| setup("writing a node identity")(e.to_string()))?;
            identities.push(idir);
        }

        // 4. The shared node config.
        let config_path = dir.join("node.toml");
        let release_path = dir.join("release.json");
        let node_config = NodeConfig::new(
            vec![
                ModelConfig::new(device_model.clone()),
                ModelConfig::new(server_model.clone()),
            ],
            log_url.clone(),
            log_vkey.clone(),
            PathBuf::from("release.json"),
            RootOfTrustConfig::Software,
        );
        let config_text = format!(
            "# tandem-fleet dev: one config for every node of this release.\n{}",
            node_config
                .to_toml()
                .map_err(|e| setup("writing the node config")(e.to_string()))?
        );
        write("writing", &config_path, config_text.as_bytes())?;

        // 5. The release, measured the way the node measures itself.
        let (cfg, config_bytes) = NodeConfig::load(&config_path)
            .map_err(|e| setup("reading the node config back")(e.to_string()))?;
        // `resolve` wants the release file to exist; it is replaced below.
        write("writing", &release_path, b"{}")?;
        let resolved = cfg
            .resolve(
                &config_path,
                &Overrides {
                    listen: Some("127.0.0.1:0".into()),
                    identity: Some(identities[0].clone()),
                    ..Overrides::default()
                },
            )
            .map_err(|e| setup("resolving the node config")(e.to_string()))?;
        let artifacts =
            measure::expected_artifacts(&binary, "node.toml", &config_bytes, &resolved.models)
                .map_err(|e| setup("measuring the release")(e.to_string()))?;
        let manifest = measure::manifest(
            &format!("tandem-node {} (dev)", env!("CARGO_PKG_VERSION")),
            artifacts,
        )
        .map_err(|e| setup("building the release manifest")(e.to_string()))?;
        let digest = manifest.digest();
        let bundle = release_key.sign(manifest);
        let inclusion = append(&log_url, bundle.log_entry_body()).await?;
        let entry = LogEntry::from_inclusion(&inclusion, now)
            .map_err(|e| setup("attaching the log entry")(e.to_string()))?;
        let bundle = bundle.with_log_entry(entry);
        write("writing", &release_path, &bundle.to_json())?;
        progress(&format!(
            "release {digest} signed and logged at index {}",
            inclusion.index
        ));

        // 6. Nodes.
        let mut nodes = Vec::with_capacity(opts.nodes);
        for (index, idir) in identities.iter().enumerate() {
            match spawn_node(&binary, &config_path, idir, index, opts.node_start_timeout) {
                Ok(n) => {
                    progress(&format!("node {index} pid {} serving {}", n.pid(), n.addr));
                    nodes.push(n);
                }
                Err(e) => {
                    stop_nodes(&mut nodes);
                    let _ = stop.send(true);
                    return Err(e);
                }
            }
        }

        // 7. The gateway.
        let gw_config = GatewayConfig {
            listen: opts.gateway_listen,
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            nodes: nodes
                .iter()
                .map(|n| NodeEndpoint {
                    url: format!("http://{}", n.addr),
                    tls: false,
                })
                .collect(),
            discover_count: 3,
            health_interval: Duration::from_secs(5),
            health_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            first_message_timeout: Duration::from_secs(65),
            tls: None,
            node_ca_pem: None,
            node_keepalive: tandem_gateway::config::Keepalive::default(),
            dns: None,
        };
        let gw = match BoundGateway::bind(gw_config, events).await {
            Ok(g) => g,
            Err(e) => {
                stop_nodes(&mut nodes);
                let _ = stop.send(true);
                return Err(e.into());
            }
        };
        let (gateway_addr, metrics_addr) = (gw.grpc_addr(), gw.metrics_addr());
        {
            let mut rx = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let _ = gw
                    .serve(async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
            }));
        }
        progress(&format!(
            "gateway http://{gateway_addr} metrics http://{metrics_addr}/metrics"
        ));

        // 8. Policy and device config.
        let policy = serde_json::json!({
            "fleetCaKeys": [ca.public_key().to_pem()],
            "releaseSigners": [release_key.public_key().to_pem()],
            "logKeys": [log_vkey],
            // No witnesses on a dev log, so no checkpoint age limit (it needs a timestamped
            // witness cosignature).
            "requiredWitnesses": 0,
            "clockSkewSecs": 60,
        });
        let policy_bytes = serde_json::to_vec_pretty(&policy).unwrap_or_default();
        Policy::from_json(&policy_bytes)
            .map_err(|e| setup("building the trust policy")(e.to_string()))?;
        let policy_path = dir.join("policy.json");
        write("writing", &policy_path, &policy_bytes)?;
        let mut device_config = tandem_device::Config {
            gateway: Some(format!("http://{gateway_addr}")),
            policy: Some(policy),
            log_url: Some(log_url.clone()),
            ..tandem_device::Config::default()
        };
        device_config.models.device = Some(device_model);
        device_config.models.server = Some(server_model);
        if let Some(p) = &opts.write_config {
            // The device keeps the newest log checkpoint it verified beside its config.
            device_config.checkpoint_file = Some(abs(&p.with_extension("checkpoint"))?);
            let text = serde_json::to_vec_pretty(&device_config)
                .map_err(|e| setup("writing the device config")(e.to_string()))?;
            write("writing the device config", p, &text)?;
        }
        Ok(DevFleet {
            state,
            log_url,
            gateway_addr,
            metrics_addr,
            policy_path,
            device_config,
            nodes,
            stop,
            tasks,
        })
    }

    /// The state directory (keys, config, release, log).
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Indexes of node processes that have exited.
    pub fn exited_nodes(&mut self) -> Vec<usize> {
        self.nodes
            .iter_mut()
            .filter_map(|n| matches!(n.child.try_wait(), Ok(Some(_))).then_some(n.index))
            .collect()
    }

    /// Stops every node (SIGTERM, then SIGKILL after 10 s), the gateway and the log, and
    /// removes the state directory.
    pub async fn shutdown(mut self) {
        stop_nodes(&mut self.nodes);
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// `POST /add` to the log; the answer is the entry's inclusion bundle.
async fn append(log_url: &str, entry: Vec<u8>) -> Result<InclusionBundle, DevError> {
    let client = tandem_log::LogClient::new(log_url, Duration::from_secs(30))
        .map_err(|e| DevError::Log(e.to_string()))?;
    client
        .append(&entry)
        .await
        .map_err(|e| DevError::Log(format!("appending the release: {e}")))
}

/// Makes the child get SIGTERM when this process dies, however it dies (a SIGKILLed `dev` must
/// not leave nodes serving). Linux delivers the signal when the *thread* that spawned the child
/// exits: `dev` spawns nodes from a runtime worker thread, which lives as long as the fleet.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use rustix::process::{Signal, getpid, getppid, set_parent_process_death_signal};
    use std::os::unix::process::CommandExt as _;
    let parent = getpid();
    // SAFETY: the closure runs in the forked child before exec. It only makes two system calls
    // (prctl, getppid), which are async-signal-safe, and allocates nothing (rustix errors
    // convert to `io::Error` without allocating).
    unsafe {
        cmd.pre_exec(move || {
            set_parent_process_death_signal(Some(Signal::TERM))?;
            // The parent died between fork and prctl: the signal will never come.
            if getppid() != Some(parent) {
                return Err(rustix::io::Errno::SRCH.into());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

/// Starts one node and waits for its `serving ADDR` line. Its standard error is inherited (the
/// node logs only allow-listed events); its standard output is drained by a thread.
fn spawn_node(
    binary: &Path,
    config: &Path,
    identity_dir: &Path,
    index: usize,
    timeout: Duration,
) -> Result<NodeProcess, DevError> {
    let node_err = |reason: String| DevError::Node { index, reason };
    let mut cmd = Command::new(binary);
    die_with_parent(&mut cmd);
    // The node config `dev` writes pins no environment: start nodes without the variables a
    // node refuses or needs pinned (`LD_LIBRARY_PATH` from cargo, `RUST_BACKTRACE`, …).
    tandem_node::node::environ::scrub(&mut cmd);
    let mut child = cmd
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--identity")
        .arg(identity_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| node_err(format!("cannot run {}: {e}", binary.display())))?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        return Err(node_err("no stdout pipe".into()));
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("serving ")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(addr) => {
                let addr: SocketAddr = addr.parse().map_err(|_| {
                    let _ = child.kill();
                    node_err(format!("printed `serving {addr}`, which is not an address"))
                })?;
                return Ok(NodeProcess { index, addr, child });
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(node_err(format!(
                "exited with {status} before serving; its error is printed above"
            )));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(node_err(format!(
                "did not print `serving ADDR` within {timeout:?}"
            )));
        }
    }
}

/// A signal for [`send_signal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM: drain and exit.
    Term,
    /// SIGKILL.
    Kill,
}

/// Sends `sig` to process `pid` (Unix; `kill(2)` through rustix, no unsafe code).
#[cfg(unix)]
pub fn send_signal(pid: u32, sig: StopSignal) -> std::io::Result<()> {
    use rustix::process::{Pid, Signal, kill_process};
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("{pid} is not a process id")))?;
    let sig = match sig {
        StopSignal::Term => Signal::TERM,
        StopSignal::Kill => Signal::KILL,
    };
    kill_process(pid, sig).map_err(std::io::Error::from)
}

/// SIGTERM to every node, then wait up to 10 s each, then SIGKILL.
fn stop_nodes(nodes: &mut [NodeProcess]) {
    #[cfg(unix)]
    for n in nodes.iter() {
        let _ = send_signal(n.child.id(), StopSignal::Term);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in nodes.iter_mut() {
        loop {
            match n.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = n.child.kill();
                    let _ = n.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for DevFleet {
    fn drop(&mut self) {
        // A fleet dropped without `shutdown` (an error path, a panic) still leaves no process.
        for n in &mut self.nodes {
            if matches!(n.child.try_wait(), Ok(None)) {
                let _ = n.child.kill();
                let _ = n.child.wait();
            }
        }
        let _ = self.stop.send(true);
    }
}
