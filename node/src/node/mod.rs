//! The stateless compute node (`tandem-node serve`; `../shared/DESIGN.md` steps 5–7).
//!
//! Start-up ([`Node::start`]), in order; any failure stops the node before a port is bound:
//! 1. load every model and adapter with `tandem_model` ([`engine`]);
//! 2. measure the release this node is (binary, config bytes, model, adapter and tokenizer
//!    files, [`measure`]) and check it equals the signed release bundle;
//! 3. fetch the log's newest checkpoint and an inclusion proof of the release's entry
//!    ([`logproof`]); refuse to start if the release is not in the log;
//! 4. load the root of trust ([`identity`]);
//! 5. generate the first HPKE key in memory and publish the attestation bundle ([`keys`]).
//!
//! Serving ([`service`]): each request is opened, checked, generated on a blocking thread and
//! answered with sealed chunks ending in a receipt. Nothing is written to disk after start-up;
//! the log is an allow-list of structured events ([`event`]).

pub mod batch;
pub mod engine;
pub mod environ;
pub mod event;
pub mod identity;
pub mod keys;
pub mod logproof;
pub mod measure;
pub mod service;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tandem_attest::evidence::EvidenceError;
use tandem_attest::release::ReleaseBundle;
use tandem_proto::ReplayConfig;
use tandem_proto::v1::node_server::NodeServer;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use keys::{Clock, SystemClock};
pub use service::NodeService;
pub use status::Failure;

use crate::config::{ConfigError, ResolvedConfig, ResolvedRoot};

/// Why the node could not start (or stopped).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A model or adapter failed to load.
    #[error("loading {dir}: {source}")]
    Model {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: Box<tandem_model::Error>,
    },
    /// The release bundle is unreadable or does not match this node.
    #[error("release: {0}")]
    Release(String),
    /// The release is not in the log.
    #[error(
        "release {release} is not in the log at checkpoint {size} ({log}); append its entry \
         (`attest release log-entry` + `attest log append`) and attach the proof, or check the \
         log URL"
    )]
    NotLogged {
        /// Release digest.
        release: String,
        /// Checkpoint size.
        size: u64,
        /// Log URL.
        log: String,
    },
    /// The log could not be read or answered wrongly.
    #[error("transparency log {url}: {reason}")]
    Log {
        /// Log URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The root of trust failed.
    #[error("root of trust: {0}")]
    Evidence(#[from] EvidenceError),
    /// The identity files are wrong.
    #[error("node identity: {0}")]
    Identity(String),
    /// HPKE key generation failed.
    #[error("HPKE key: {0}")]
    Key(#[from] tandem_proto::Error),
    /// TLS set-up failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server failed.
    #[error("gRPC server: {0}")]
    Serve(String),
}

/// A started node: everything checked, first key published, not yet serving.
#[derive(Debug)]
pub struct Node {
    shared: Arc<service::Shared>,
    config: ResolvedConfig,
    log: logproof::LogClient,
    tls: Option<tonic::transport::ServerTlsConfig>,
}

impl Node {
    /// Start-up steps 1–5 (see the module docs). `binary` is the executable to measure
    /// (`std::env::current_exe()` for `serve`); `config_bytes` the config exactly as read.
    pub async fn start(
        config: ResolvedConfig,
        config_bytes: &[u8],
        binary: &Path,
        clock: Arc<dyn Clock>,
    ) -> Result<Node, NodeError> {
        let tls = match &config.tls {
            Some((cert, key)) => Some(tls_config(cert, key)?),
            None => None,
        };
        // 1.
        let models = config.models.clone();
        let cache_bytes = config.adapter_cache_bytes;
        let engine =
            tokio::task::spawn_blocking(move || engine::Engine::load(&models, cache_bytes))
                .await
                .map_err(|e| NodeError::Serve(format!("model loading task: {e}")))??;
        // 2.
        let bundle_bytes =
            std::fs::read(&config.release_bundle).map_err(|source| NodeError::Io {
                path: config.release_bundle.clone(),
                source,
            })?;
        let bundle = ReleaseBundle::from_json(&bundle_bytes)
            .map_err(|e| NodeError::Release(format!("{}: {e}", config.release_bundle.display())))?;
        let config_name = config
            .config_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "node.toml".into());
        let measured =
            measure::expected_artifacts(binary, &config_name, config_bytes, &config.models)?;
        measure::check_release(&bundle, measured)?;
        // 3.
        let log = logproof::LogClient::new(&config.log_url, &config.log_key)?;
        let now = clock.now();
        let (bundle, checkpoint_size) = log.prove_release(bundle, now).await?;
        // 4.
        let root: keys::SharedRoot = match &config.root {
            ResolvedRoot::Software { key, cert } => {
                Box::new(identity::load_software_root(key, cert)?)
            }
            ResolvedRoot::Tpm {
                tcti,
                cert,
                event_log,
            } => Box::new(identity::load_tpm_root(
                tcti,
                cert,
                event_log,
                &bundle.release_digest(),
            )?),
        };
        // 5.
        let release_digest = bundle.release_digest();
        let replay = ReplayConfig {
            window_secs: config.replay_window_secs,
            max_skew_secs: config.clock_skew_secs,
            ..ReplayConfig::default()
        };
        let keys = keys::KeyRing::new(config.key_lifetime_secs, replay, root, bundle);
        keys.maintain(now)?;
        let published = keys
            .published()
            .ok_or_else(|| NodeError::Serve("no key after start-up".into()))?;
        let limits = config.limits.clone();
        let models: Vec<event::ServedModel> = engine
            .models()
            .map(|m| event::ServedModel {
                name: m.name.clone(),
                digest: m.loaded.digest.to_string(),
                adapters: m
                    .adapters
                    .iter()
                    .map(|(d, (n, _))| (n.clone(), d.to_string()))
                    .collect(),
            })
            .collect();
        event::emit(&event::Event::NodeStart {
            release: release_digest,
            models: &models,
            key_id: published.key_id,
            key_expiry: published.key_expiry,
            checkpoint_size,
            listen: config.listen,
            tls: tls.is_some(),
        });
        let engine = Arc::new(engine);
        let batcher = (limits.max_batch > 1).then(|| {
            batch::Batcher::start(
                engine.clone(),
                limits.max_concurrent,
                limits.max_batch,
                limits.deadline_secs,
                *release_digest.as_bytes(),
                tokio::runtime::Handle::current(),
            )
        });
        let shared = Arc::new(service::Shared {
            keys,
            engine,
            batcher,
            places: Arc::new(Semaphore::new(limits.queue_depth + limits.max_concurrent)),
            slots: Arc::new(Semaphore::new(limits.max_concurrent)),
            limits,
            clock,
            release_digest: *release_digest.as_bytes(),
            draining: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
        });
        Ok(Node {
            shared,
            config,
            log,
            tls,
        })
    }

    /// The gRPC service (for in-process use).
    pub fn service(&self) -> NodeService {
        NodeService::new(self.shared.clone())
    }

    /// The published attestation document (`AttestationBundle::to_json()` bytes).
    pub fn attestation(&self) -> Option<Arc<Vec<u8>>> {
        self.shared.keys.published().map(|p| p.document)
    }

    /// Binds the configured address.
    pub async fn bind(&self) -> Result<TcpListener, NodeError> {
        TcpListener::bind(self.config.listen)
            .await
            .map_err(|e| NodeError::Serve(format!("binding {}: {e}", self.config.listen)))
    }

    /// Serves on `listener` until `shutdown` resolves, then drains: refuses new requests,
    /// lets in-flight streams finish, and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), NodeError> {
        let addr = listener
            .local_addr()
            .map_err(|e| NodeError::Serve(e.to_string()))?;
        let mut builder = tonic::transport::Server::builder();
        if let Some(t) = self.tls.clone() {
            builder = builder
                .tls_config(t)
                .map_err(|e| NodeError::Tls(e.to_string()))?;
        }
        let shared = self.shared.clone();
        let refresher = (self.config.log_refresh_secs > 0).then(|| {
            let shared = shared.clone();
            let log = self.log.clone();
            let every = Duration::from_secs(self.config.log_refresh_secs);
            tokio::spawn(refresh_log(shared, log, every))
        });
        let rotator = {
            let shared = shared.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    if let Ok(m) = shared.keys.maintain(shared.clock.now())
                        && let Some(id) = m.rotated_to
                    {
                        event::emit(&event::Event::KeyRotated { key_id: id });
                    }
                }
            })
        };
        let drain_state = shared.clone();
        let signalled = Arc::new(tokio::sync::Notify::new());
        let signal = signalled.clone();
        let shutdown = async move {
            shutdown.await;
            signal.notify_one();
            drain_state.draining.store(true, Ordering::SeqCst);
            event::emit(&event::Event::DrainStart {
                in_flight: drain_state.in_flight.load(Ordering::SeqCst),
            });
        };
        event::emit(&event::Event::Serving { listen: addr });
        // No Nagle: a short answer is a few small writes (head, chunk, final chunk); with Nagle
        // and the peer's delayed ACK each can wait ~40 ms.
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        // `allow_from`: a connection from any other peer is dropped as soon as it is accepted.
        let incoming = {
            use tokio_stream::StreamExt as _;
            let mut gate = PeerGate::new(self.config.allow_from.clone());
            incoming.filter(move |c| match c {
                Ok(stream) => gate.admit(stream.peer_addr().ok()),
                Err(_) => true,
            })
        };
        let server = builder
            .add_service(NodeServer::new(self.service()))
            .serve_with_incoming_shutdown(incoming, shutdown);
        // A graceful shutdown waits for every connection to close, and a client that never
        // reads keeps its connection open forever; every stream a client reads ends within
        // its deadline plus the stall bound, so stop waiting then.
        let grace = Duration::from_secs(shared.limits.deadline_secs.saturating_add(5))
            + Duration::from_millis(shared.limits.stall_timeout_ms);
        let result = tokio::select! {
            r = server => r.map_err(|e| NodeError::Serve(e.to_string())),
            () = async {
                signalled.notified().await;
                tokio::time::sleep(grace).await;
            } => Ok(()),
        };
        // Streams run on blocking threads; wait for them to send their last chunk.
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(shared.limits.deadline_secs.saturating_add(5));
        while shared.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rotator.abort();
        if let Some(r) = refresher {
            r.abort();
        }
        event::emit(&event::Event::DrainDone {
            in_flight: shared.in_flight.load(Ordering::SeqCst),
        });
        result
    }
}

async fn refresh_log(shared: Arc<service::Shared>, log: logproof::LogClient, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(current) = shared.keys.current_release() else {
            continue;
        };
        match log.prove_release(current, shared.clock.now()).await {
            Ok((b, size)) => match shared.keys.set_release(b) {
                Ok(()) => event::emit(&event::Event::LogRefreshed {
                    checkpoint_size: size,
                }),
                Err(e) => event::emit(&event::Event::LogRefreshFailed {
                    reason: e.to_string(),
                }),
            },
            Err(e) => event::emit(&event::Event::LogRefreshFailed {
                reason: e.to_string(),
            }),
        }
    }
}

/// The `allow_from` check of accepted connections, with the rate limit of its log event.
struct PeerGate {
    allow: Vec<crate::config::IpBlock>,
    refused: u64,
    last_logged: Option<std::time::Instant>,
}

impl PeerGate {
    fn new(allow: Vec<crate::config::IpBlock>) -> Self {
        Self {
            allow,
            refused: 0,
            last_logged: None,
        }
    }

    /// Whether to serve a connection from `peer` (an unknown peer address is refused when a
    /// list is configured).
    fn admit(&mut self, peer: Option<std::net::SocketAddr>) -> bool {
        if self.allow.is_empty() {
            return true;
        }
        if let Some(p) = peer
            && self.allow.iter().any(|b| b.contains(p.ip()))
        {
            return true;
        }
        self.refused += 1;
        let every = Duration::from_secs(event::REFUSED_LOG_EVERY_SECS);
        if self.last_logged.is_none_or(|t| t.elapsed() >= every) {
            event::emit(&event::Event::ConnectionRefused {
                peer: peer.unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
                refused: self.refused,
            });
            self.refused = 0;
            self.last_logged = Some(std::time::Instant::now());
        }
        false
    }
}

/// The rustls server config for gRPC, with the ring crypto provider installed explicitly.
fn tls_config(cert: &Path, key: &Path) -> Result<tonic::transport::ServerTlsConfig, NodeError> {
    // Explicit provider: rustls must not pick one from crate features at run time.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| NodeError::Io {
            path: p.to_owned(),
            source,
        })
    };
    let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
    Ok(tonic::transport::ServerTlsConfig::new().identity(identity))
}
