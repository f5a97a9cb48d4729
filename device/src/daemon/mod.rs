//! The device daemon behind `tandem serve`: one [`Client`] (models loaded once, verification
//! cache, Discover results and checkpoint book kept warm) shared by every app on the device,
//! through two front ends on the same listeners:
//!
//! - [`grpc`]: `tandem.v1.Device` (`proto/tandem/v1/device.proto`);
//! - [`openai`]: the OpenAI-compatible HTTP API (`/v1/models`, `/v1/chat/completions`,
//!   `/v1/completions`).
//!
//! Both go through [`Daemon::start`], which checks the request, decides the route, admits local
//! generations through a bounded queue ([`DaemonError::Busy`] past the bound) and returns a
//! [`Generation`]: dropping it (the app went away) cancels the work at the next token.
//! [`serve`] binds the Unix socket and/or loopback TCP, checks the bearer token, and drains on
//! shutdown. Errors map to gRPC codes and HTTP statuses in one place ([`DaemonError`]).

pub mod grpc;
pub mod openai;
mod serve;
mod stop;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tandem_model::chat_template::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::client::{Client, Event, EventStream, GenerateRequest, Summary};
use crate::error::{Error, RemoteError};
use crate::models::ModelChoice;
use crate::prompt::{Prompter, plain_prompt};
use crate::router::{Route, RouteChoice};

pub use crate::daemon_client::default_socket_path;
pub use serve::{ServeOptions, Served, serve};
use stop::StopMatcher;

/// Most stop sequences one request may give (OpenAI's limit).
pub const MAX_STOP_SEQUENCES: usize = 4;

/// How the daemon runs requests.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Local generations running at once (the rest wait in the queue).
    pub max_local: usize,
    /// Local generations that may wait for a slot; more are refused with [`DaemonError::Busy`].
    pub queue_limit: usize,
    /// New tokens when a request does not say.
    pub default_max_tokens: u32,
    /// Test aid: a pause before each text delta is handed on (makes a generation slow enough to
    /// observe queueing, cancellation and deadlines with a tiny model). `None` in production.
    pub token_delay: Option<Duration>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            max_local: 1,
            queue_limit: 32,
            default_max_tokens: 64,
            token_delay: None,
        }
    }
}

/// What a request to the daemon can fail with. Each variant has one gRPC code and one HTTP
/// status ([`DaemonError::grpc_code`], [`DaemonError::http_status`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The request is malformed or cannot run as asked; `param` names the field.
    #[error("{message}")]
    BadRequest {
        /// What is wrong and what to do.
        message: String,
        /// The offending field (OpenAI's `param`), if one.
        param: Option<String>,
    },
    /// The request names a model or adapter the device does not know.
    #[error("{0}")]
    NotFound(String),
    /// The local queue is full.
    #[error(
        "busy: {running} local generation(s) running and {waiting} waiting (the queue holds at most {limit}); retry later or ask for the remote route"
    )]
    Busy {
        /// Running now.
        running: usize,
        /// Waiting now.
        waiting: usize,
        /// The queue bound.
        limit: usize,
    },
    /// Not possible now (no gateway configured, shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// The bearer token is missing or wrong.
    #[error("{0}")]
    Unauthenticated(String),
    /// The SDK failed.
    #[error(transparent)]
    Sdk(#[from] Error),
    /// A bug or an impossible state; the message says which.
    #[error("{0}")]
    Internal(String),
}

impl DaemonError {
    /// A bad request naming `param`.
    pub fn bad(param: impl Into<String>, message: impl Into<String>) -> Self {
        DaemonError::BadRequest {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    /// The gRPC status code for this error.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            DaemonError::BadRequest { .. } => Code::InvalidArgument,
            DaemonError::NotFound(_) => Code::NotFound,
            DaemonError::Busy { .. } => Code::ResourceExhausted,
            DaemonError::Unavailable(_) => Code::Unavailable,
            DaemonError::Unauthenticated(_) => Code::Unauthenticated,
            DaemonError::Internal(_) => Code::Internal,
            DaemonError::Sdk(e) => match e {
                Error::Route(_) => Code::InvalidArgument,
                Error::Remote(RemoteError::Receipt(_) | RemoteError::Response(_)) => Code::DataLoss,
                Error::Remote(RemoteError::Timeout(..)) => Code::DeadlineExceeded,
                Error::Remote(_) => Code::Unavailable,
                Error::ModelChanged(_) => Code::FailedPrecondition,
                _ => Code::Internal,
            },
        }
    }

    /// The HTTP status for this error.
    pub fn http_status(&self) -> u16 {
        use tonic::Code;
        match self.grpc_code() {
            Code::InvalidArgument => 400,
            Code::Unauthenticated => 401,
            Code::NotFound => 404,
            Code::ResourceExhausted => 429,
            Code::Unavailable => 503,
            Code::DeadlineExceeded => 504,
            Code::DataLoss => 502,
            _ => 500,
        }
    }
}

impl From<DaemonError> for tonic::Status {
    fn from(e: DaemonError) -> Self {
        tonic::Status::new(e.grpc_code(), e.to_string())
    }
}

/// A model the daemon offers.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// `device` or `server`.
    pub choice: ModelChoice,
    /// `sha256:<64 hex>`.
    pub digest: String,
    /// Context length in tokens (0 if its config could not be read).
    pub context_tokens: u32,
    /// Runs on this device.
    pub local: bool,
    /// Runs on verified nodes (a gateway is configured).
    pub remote: bool,
    /// (name, digest) of each adapter.
    pub adapters: Vec<(String, String)>,
    /// Has a chat template.
    pub chat_template: bool,
}

/// Load and state, for `Health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Shutting down.
    pub draining: bool,
    /// Local generations running.
    pub local_running: usize,
    /// Local generations waiting.
    pub local_waiting: usize,
    /// The queue bound.
    pub local_queue_limit: usize,
    /// A gateway is configured.
    pub remote_configured: bool,
}

/// One request for the daemon: the SDK request plus what the SDK does not do itself.
#[derive(Debug, Clone)]
pub struct Job {
    /// The SDK request.
    pub request: GenerateRequest,
    /// Stop sequences (at most [`MAX_STOP_SEQUENCES`], none empty).
    pub stop: Vec<String>,
}

/// What a [`Generation`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// New text.
    Text(String),
    /// The remote path failed before the first text; now running on the device.
    Fallback(String),
    /// The last item: where it ran, why, counts, receipt. `finish_reason` is `stop`, `length`
    /// or `cancelled`.
    Done(Box<Summary>),
}

/// The bounded queue in front of local generation.
#[derive(Debug)]
struct LocalQueue {
    slots: Arc<Semaphore>,
    max: usize,
    waiting: AtomicUsize,
    limit: usize,
}

/// Decrements the waiting count when a waiter leaves (admitted or gone).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl LocalQueue {
    fn new(max: usize, limit: usize) -> LocalQueue {
        let max = max.max(1);
        LocalQueue {
            slots: Arc::new(Semaphore::new(max)),
            max,
            waiting: AtomicUsize::new(0),
            limit,
        }
    }

    fn running(&self) -> usize {
        self.max - self.slots.available_permits().min(self.max)
    }

    async fn admit(&self) -> Result<OwnedSemaphorePermit, DaemonError> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        let before = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _w = Waiting(&self.waiting);
        if before >= self.limit {
            return Err(DaemonError::Busy {
                running: self.running(),
                waiting: before,
                limit: self.limit,
            });
        }
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DaemonError::Unavailable("the daemon is shutting down".into()))
    }
}

/// The daemon's shared state. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Daemon {
    client: Client,
    options: DaemonOptions,
    queue: LocalQueue,
    prompters: BTreeMap<ModelChoice, Prompter>,
    models: Vec<ModelEntry>,
    draining: AtomicBool,
}

fn context_of(dir: &std::path::Path) -> u32 {
    let p = dir.join("config.json");
    std::fs::read(&p)
        .ok()
        .and_then(|b| tandem_model::Config::from_json(&b, &p).ok())
        .map_or(0, |c| {
            u32::try_from(c.max_position_embeddings).unwrap_or(u32::MAX)
        })
}

impl Daemon {
    /// A daemon over `client`: reads each model's chat template (once).
    pub fn new(client: Client, options: DaemonOptions) -> Result<Daemon, Error> {
        let mut prompters = BTreeMap::new();
        let mut models = Vec::new();
        let remote = client.remote().is_some();
        for choice in [ModelChoice::Device, ModelChoice::Server] {
            let Some(pin) = client.pin(choice) else {
                continue;
            };
            let prompter = Prompter::for_model(&pin.dir)?;
            models.push(ModelEntry {
                choice,
                digest: pin.digest.to_string(),
                context_tokens: context_of(&pin.dir),
                local: choice == ModelChoice::Device,
                remote,
                adapters: pin
                    .adapters
                    .values()
                    .map(|a| (a.name.clone(), a.digest.to_string()))
                    .collect(),
                chat_template: prompter.is_some(),
            });
            if let Some(p) = prompter {
                prompters.insert(choice, p);
            }
        }
        let queue = LocalQueue::new(options.max_local, options.queue_limit);
        Ok(Daemon {
            client,
            options,
            queue,
            prompters,
            models,
            draining: AtomicBool::new(false),
        })
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The options.
    pub fn options(&self) -> &DaemonOptions {
        &self.options
    }

    /// The models offered.
    pub fn models(&self) -> &[ModelEntry] {
        &self.models
    }

    /// From now on new requests are refused (UNAVAILABLE / 503); running ones go on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Load and state.
    pub fn health(&self) -> Health {
        Health {
            draining: self.draining.load(Ordering::SeqCst),
            local_running: self.queue.running(),
            local_waiting: self.queue.waiting.load(Ordering::SeqCst),
            local_queue_limit: self.queue.limit,
            remote_configured: self.client.remote().is_some(),
        }
    }

    /// The model a request names: `device` (also for an empty name) or `server`, if this
    /// device knows it.
    pub fn model(&self, name: &str) -> Result<ModelChoice, DaemonError> {
        let choice = match name {
            "" | "device" => ModelChoice::Device,
            "server" => ModelChoice::Server,
            other => {
                return Err(DaemonError::NotFound(format!(
                    "the model `{other}` does not exist: this daemon serves {} (see ListModels or GET /v1/models)",
                    self.model_names()
                )));
            }
        };
        if self.client.pin(choice).is_none() {
            return Err(DaemonError::NotFound(format!(
                "the {choice} model is not configured on this device (set models.{choice} in the device config); this daemon serves {}",
                self.model_names()
            )));
        }
        Ok(choice)
    }

    fn model_names(&self) -> String {
        self.models
            .iter()
            .map(|m| format!("`{}`", m.choice))
            .collect::<Vec<_>>()
            .join(" and ")
    }

    /// The prompt for `messages` on `model`: its chat template (applied here, on the device),
    /// or for a model without one each message's content on its own line
    /// ([`plain_prompt`]).
    pub fn chat_prompt(
        &self,
        model: ModelChoice,
        messages: &[Message],
    ) -> Result<String, DaemonError> {
        if messages.is_empty() {
            return Err(DaemonError::bad(
                "messages",
                "messages is empty: give at least one {role, content} message",
            ));
        }
        match self.prompters.get(&model) {
            Some(p) => p.prompt(messages).map_err(|e| {
                DaemonError::bad(
                    "messages",
                    format!("the {model} model's chat template refused the messages: {e}"),
                )
            }),
            None => Ok(plain_prompt(messages)),
        }
    }

    /// Checks `job`, decides its route, waits for a local slot if it runs locally, and starts
    /// it. Dropping the returned [`Generation`] cancels it.
    pub async fn start(&self, job: Job) -> Result<Generation, DaemonError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(DaemonError::Unavailable(
                "the daemon is shutting down; retry against its next start".into(),
            ));
        }
        if job.stop.len() > MAX_STOP_SEQUENCES {
            return Err(DaemonError::bad(
                "stop",
                format!(
                    "{} stop sequences given; at most {MAX_STOP_SEQUENCES} are supported",
                    job.stop.len()
                ),
            ));
        }
        if job.stop.iter().any(String::is_empty) {
            return Err(DaemonError::bad("stop", "a stop sequence is empty"));
        }
        let req = job.request;
        if req.max_new_tokens == 0 {
            return Err(DaemonError::bad(
                "max_tokens",
                "max_tokens must be at least 1",
            ));
        }
        if !req.temperature.is_finite() || req.temperature < 0.0 {
            return Err(DaemonError::bad(
                "temperature",
                "temperature must be a number ≥ 0 (0 = greedy)",
            ));
        }
        if let Some(p) = req.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(DaemonError::bad("top_p", "top_p must be in (0, 1]"));
        }
        let pin = self.client.pin(req.model).ok_or_else(|| {
            DaemonError::NotFound(format!("the {} model is not configured", req.model))
        })?;
        if let Some(a) = &req.adapter
            && !pin.adapters.contains_key(a)
        {
            return Err(DaemonError::NotFound(format!(
                "adapter `{a}` is not installed for the {} model (installed: {})",
                req.model,
                pin.adapters.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if req.prompt.is_empty() {
            return Err(DaemonError::bad("prompt", "the prompt is empty"));
        }
        let decision = self.client.route(&req).await?;
        let permit = match decision.route {
            Route::Local => Some(self.queue.admit().await?),
            Route::Remote => None,
        };
        // A remote request that falls back to the device waits for a local slot like any
        // local request (it was admitted already, so it waits rather than being refused).
        let events = match decision.route {
            Route::Local => self.client.generate(req.clone()),
            Route::Remote => self
                .client
                .generate_gated(req.clone(), Some(self.queue.slots.clone())),
        };
        Ok(Generation {
            events: Some(events),
            _permit: permit,
            stop: StopMatcher::new(job.stop),
            local: decision.route == Route::Local,
            reason: decision.reason,
            client: self.client.clone(),
            request: req,
            completion_tokens: 0,
            stopped: false,
            pending: VecDeque::new(),
            done: false,
            delay: self.options.token_delay,
        })
    }
}

/// One running generation. Dropping it cancels the work (the local thread stops at its next
/// token, a remote RPC is dropped) and frees its queue slot.
#[derive(Debug)]
pub struct Generation {
    events: Option<EventStream>,
    _permit: Option<OwnedSemaphorePermit>,
    stop: StopMatcher,
    /// Runs (or now runs, after a fallback) on the device.
    local: bool,
    reason: String,
    client: Client,
    request: GenerateRequest,
    completion_tokens: u32,
    /// A stop sequence was seen: no more text is handed on.
    stopped: bool,
    pending: VecDeque<Output>,
    done: bool,
    delay: Option<Duration>,
}

/// `stop`, `length` or `cancelled`, whatever side produced it.
fn finish_reason(s: &str) -> String {
    match s {
        "length" => "length",
        "cancelled" => "cancelled",
        _ => "stop",
    }
    .to_string()
}

impl Generation {
    /// Where the request is running now (local after a fallback).
    pub fn route(&self) -> Route {
        if self.local {
            Route::Local
        } else {
            Route::Remote
        }
    }

    /// The next output; `None` after [`Output::Done`] or an error.
    pub async fn next(&mut self) -> Option<Result<Output, DaemonError>> {
        loop {
            if let Some(o) = self.pending.pop_front() {
                return Some(Ok(o));
            }
            if self.done {
                return None;
            }
            let Some(events) = self.events.as_mut() else {
                self.done = true;
                return None;
            };
            let Some(ev) = events.next().await else {
                self.done = true;
                return Some(Err(DaemonError::Internal(
                    "the generation ended without a summary".into(),
                )));
            };
            match ev {
                Err(e) => {
                    self.done = true;
                    self.events = None;
                    return Some(Err(e.into()));
                }
                Ok(Event::Fallback { reason }) => {
                    self.local = true;
                    self.reason =
                        format!("remote failed before the first chunk ({reason}); ran locally");
                    self.pending.push_back(Output::Fallback(reason));
                }
                Ok(Event::Text { text, token_ids }) => {
                    if self.stopped {
                        continue; // a remote stream drained for its receipt
                    }
                    self.completion_tokens = self
                        .completion_tokens
                        .saturating_add(u32::try_from(token_ids.len()).unwrap_or(u32::MAX));
                    if let Some(d) = self.delay {
                        tokio::time::sleep(d).await;
                    }
                    let (emit, hit) = self.stop.push(&text);
                    if !emit.is_empty() {
                        self.pending.push_back(Output::Text(emit));
                    }
                    if hit {
                        self.stopped = true;
                        if self.local {
                            // Cancel the local thread now; the summary is ours to write.
                            self.events = None;
                            self.done = true;
                            match self.local_summary().await {
                                Ok(s) => self.pending.push_back(Output::Done(Box::new(s))),
                                Err(e) => return Some(Err(e)),
                            }
                        }
                        // Remote: keep reading to the end for the checked receipt.
                    }
                }
                Ok(Event::Done(mut s)) => {
                    self.done = true;
                    self.events = None;
                    let tail = self.stop.finish();
                    if self.stopped {
                        s.finish_reason = "stop".into();
                        s.completion_tokens = self.completion_tokens;
                    } else {
                        if !tail.is_empty() {
                            self.pending.push_back(Output::Text(tail));
                        }
                        s.finish_reason = finish_reason(&s.finish_reason);
                    }
                    self.pending.push_back(Output::Done(s));
                }
            }
        }
    }

    /// The summary of a local run cut short by a stop sequence.
    async fn local_summary(&self) -> Result<Summary, DaemonError> {
        let engine = self.client.load_local().await?;
        let prompt_tokens = engine
            .count_tokens(&self.request.prompt)
            .map_err(Error::from)?;
        let pin = self
            .client
            .pin(ModelChoice::Device)
            .ok_or_else(|| DaemonError::Internal("the device model has no pin".into()))?;
        Ok(Summary {
            route: Route::Local,
            reason: self.reason.clone(),
            model: ModelChoice::Device,
            model_digest: pin.digest,
            adapter_digest: self
                .request
                .adapter
                .as_deref()
                .and_then(|a| pin.adapters.get(a))
                .map(|a| a.digest),
            prompt_tokens: u32::try_from(prompt_tokens).unwrap_or(u32::MAX),
            completion_tokens: self.completion_tokens,
            finish_reason: "stop".into(),
            receipt: None,
        })
    }
}

/// Parses a route wish (`auto`, `local`, `remote`) from a header or field named `param`.
pub fn parse_route(param: &str, s: &str) -> Result<RouteChoice, DaemonError> {
    s.parse().map_err(|e: String| DaemonError::bad(param, e))
}
