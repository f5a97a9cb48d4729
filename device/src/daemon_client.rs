//! A thin Rust client for the device daemon (`tandem serve`): the gRPC API `tandem.v1.Device`
//! over the daemon's Unix socket or loopback TCP, for Rust apps that would rather share the
//! device's one daemon (models loaded once, caches kept warm) than embed a [`crate::Client`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), tandem_device::daemon_client::DaemonClientError> {
//! use tandem_device::daemon_client::{DaemonClient, DaemonEvent, GenerateOptions};
//!
//! let mut daemon = DaemonClient::connect_default().await?;
//! let mut stream = daemon.generate("The capital of France is", GenerateOptions::default()).await?;
//! while let Some(ev) = stream.next().await? {
//!     match ev {
//!         DaemonEvent::Text(t) => print!("{t}"),
//!         DaemonEvent::Fallback(why) => eprintln!("[falling back: {why}]"),
//!         DaemonEvent::Done(s) => println!("\n[ran {} because {}]", s.route, s.reason),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! It links no server code: it is available with `default-features = false`.

use std::path::{Path, PathBuf};

use tandem_proto::v1::device_client::DeviceClient;
use tandem_proto::v1::{self as pb, device_event};
use tonic::transport::{Channel, Endpoint, Uri};

pub use pb::{
    ChatMessage, DeviceRoute, GenerateOptions, HealthResponse, ListModelsResponse,
    ListNodesResponse, Summary,
};

/// The daemon's default socket: `$XDG_RUNTIME_DIR/tandem/daemon.sock`, else
/// `<temp dir>/tandem-$USER/daemon.sock`. `tandem serve` listens there unless told otherwise.
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("tandem").join("daemon.sock"),
        None => {
            let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
            std::env::temp_dir()
                .join(format!("tandem-{user}"))
                .join("daemon.sock")
        }
    }
}

/// What a call to the daemon can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonClientError {
    /// The daemon could not be reached.
    #[error("cannot reach the Tandem daemon at {at}: {reason} (is `tandem serve` running there?)")]
    Connect {
        /// `unix:PATH` or the URL.
        at: String,
        /// What failed.
        reason: String,
    },
    /// The daemon answered with an error status; its message says what to do.
    #[error("the Tandem daemon refused the request ({code:?}): {message}")]
    Status {
        /// The gRPC code (e.g. `InvalidArgument`, `ResourceExhausted` for "busy").
        code: tonic::Code,
        /// The daemon's message.
        message: String,
    },
    /// The stream broke the protocol (e.g. ended without a summary).
    #[error("the Tandem daemon's stream is malformed: {0}")]
    Protocol(String),
}

impl From<tonic::Status> for DaemonClientError {
    fn from(s: tonic::Status) -> Self {
        DaemonClientError::Status {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

/// One event of a generation.
#[derive(Debug, Clone, PartialEq)]
pub enum DaemonEvent {
    /// New text.
    Text(String),
    /// The remote path failed before the first text; the request now runs on the device.
    Fallback(String),
    /// The last event: where it ran, why, counts, receipt.
    Done(Box<Summary>),
}

/// A generation's events. Dropping it cancels the generation in the daemon.
#[derive(Debug)]
pub struct DaemonStream {
    inner: tonic::Streaming<pb::DeviceEvent>,
    done: bool,
}

impl DaemonStream {
    /// The next event; `Ok(None)` after [`DaemonEvent::Done`]. A stream that ends without a
    /// summary is an error, never a silently short answer.
    pub async fn next(&mut self) -> Result<Option<DaemonEvent>, DaemonClientError> {
        if self.done {
            return Ok(None);
        }
        loop {
            let Some(ev) = self.inner.message().await? else {
                self.done = true;
                return Err(DaemonClientError::Protocol(
                    "the stream ended without a summary".into(),
                ));
            };
            match ev.event {
                Some(device_event::Event::Delta(d)) => return Ok(Some(DaemonEvent::Text(d.text))),
                Some(device_event::Event::Fallback(f)) => {
                    return Ok(Some(DaemonEvent::Fallback(f.reason)));
                }
                Some(device_event::Event::Summary(s)) => {
                    self.done = true;
                    return Ok(Some(DaemonEvent::Done(Box::new(s))));
                }
                // An event kind newer than this client: skip it.
                None => continue,
            }
        }
    }

    /// Reads to the end: all text and the summary.
    pub async fn collect(mut self) -> Result<(String, Box<Summary>), DaemonClientError> {
        let mut text = String::new();
        while let Some(ev) = self.next().await? {
            match ev {
                DaemonEvent::Text(t) => text.push_str(&t),
                DaemonEvent::Fallback(_) => {}
                DaemonEvent::Done(s) => return Ok((text, s)),
            }
        }
        Err(DaemonClientError::Protocol(
            "the stream ended without a summary".into(),
        ))
    }
}

/// A connection to the daemon. Cheap to clone (one HTTP/2 connection underneath).
#[derive(Debug, Clone)]
pub struct DaemonClient {
    inner: DeviceClient<Channel>,
    token: Option<String>,
}

impl DaemonClient {
    /// Connects to the daemon's default socket ([`default_socket_path`]).
    pub async fn connect_default() -> Result<DaemonClient, DaemonClientError> {
        Self::connect_unix(default_socket_path()).await
    }

    /// Connects to the daemon's Unix socket at `path`.
    pub async fn connect_unix(path: impl AsRef<Path>) -> Result<DaemonClient, DaemonClientError> {
        let path = path.as_ref().to_path_buf();
        let at = format!("unix:{}", path.display());
        let err = |reason: String| DaemonClientError::Connect {
            at: at.clone(),
            reason,
        };
        // The URI is not used: the connector dials the socket.
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(hyper_util::rt::TokioIo::new)
                }
            }))
            .await
            .map_err(|e| err(error_chain(&e)))?;
        Ok(Self::over(channel))
    }

    /// Connects to the daemon's TCP listener, e.g. `http://127.0.0.1:8765`.
    pub async fn connect_tcp(url: &str) -> Result<DaemonClient, DaemonClientError> {
        let err = |reason: String| DaemonClientError::Connect {
            at: url.to_string(),
            reason,
        };
        let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| err(e.to_string()))?;
        let channel = endpoint.connect().await.map_err(|e| err(error_chain(&e)))?;
        Ok(Self::over(channel))
    }

    fn over(channel: Channel) -> DaemonClient {
        DaemonClient {
            inner: DeviceClient::new(channel),
            token: None,
        }
    }

    /// Sends `authorization: Bearer <token>` with every call (a daemon started with
    /// `--token-file`).
    pub fn with_token(mut self, token: impl Into<String>) -> DaemonClient {
        self.token = Some(token.into());
        self
    }

    fn request<T>(&self, msg: T) -> Result<tonic::Request<T>, DaemonClientError> {
        let mut req = tonic::Request::new(msg);
        if let Some(t) = &self.token {
            let v = format!("Bearer {t}")
                .parse()
                .map_err(|_| DaemonClientError::Status {
                    code: tonic::Code::InvalidArgument,
                    message: "the token has characters an HTTP header cannot carry".into(),
                })?;
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }

    /// Generates from `prompt` as is (no chat template).
    pub async fn generate(
        &mut self,
        prompt: &str,
        options: GenerateOptions,
    ) -> Result<DaemonStream, DaemonClientError> {
        let req = self.request(pb::DeviceGenerateRequest {
            prompt: prompt.to_string(),
            options: Some(options),
        })?;
        let inner = self.inner.generate(req).await?.into_inner();
        Ok(DaemonStream { inner, done: false })
    }

    /// The next assistant turn of `messages` (the model's chat template is applied by the
    /// daemon).
    pub async fn chat(
        &mut self,
        messages: Vec<ChatMessage>,
        options: GenerateOptions,
    ) -> Result<DaemonStream, DaemonClientError> {
        let req = self.request(pb::ChatRequest {
            messages,
            options: Some(options),
        })?;
        let inner = self.inner.chat(req).await?.into_inner();
        Ok(DaemonStream { inner, done: false })
    }

    /// The models the device knows.
    pub async fn list_models(&mut self) -> Result<ListModelsResponse, DaemonClientError> {
        let req = self.request(pb::ListModelsRequest {})?;
        Ok(self.inner.list_models(req).await?.into_inner())
    }

    /// What the gateway offers for `model` (`device` or `server`) and `adapter` (empty for
    /// none), each node with its verification report.
    pub async fn list_nodes(
        &mut self,
        model: &str,
        adapter: &str,
    ) -> Result<ListNodesResponse, DaemonClientError> {
        let req = self.request(pb::ListNodesRequest {
            model: model.to_string(),
            adapter: adapter.to_string(),
        })?;
        Ok(self.inner.list_nodes(req).await?.into_inner())
    }

    /// Liveness and load.
    pub async fn health(&mut self) -> Result<HealthResponse, DaemonClientError> {
        let req = self.request(pb::HealthRequest {})?;
        Ok(self.inner.health(req).await?.into_inner())
    }
}

/// An error and its sources, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
