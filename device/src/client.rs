//! [`Client`]: one call to generate text; Tandem decides local or remote and says why.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tandem_model::{AdapterDigest, ModelDigest, Tokenizer};
use tokio::sync::{OnceCell, mpsc};

use crate::checkpoints::CheckpointBook;
use crate::config::Config;
use crate::error::{ConfigError, Error, RemoteError};
use crate::local::{LocalEngine, Sampling};
use crate::models::{ModelChoice, ModelPin, default_models_dir};
use crate::remote::{Remote, RemoteJob, VerifiedReceipt};
use crate::router::{Decision, Route, RouteChoice, RouteInputs, decide};

/// One generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// The prompt.
    pub prompt: String,
    /// Which model (default: the device model).
    pub model: ModelChoice,
    /// Adapter name (a directory under the model's `adapters/`).
    pub adapter: Option<String>,
    /// Most new tokens.
    pub max_new_tokens: u32,
    /// 0 = greedy.
    pub temperature: f32,
    /// Nucleus threshold; `None` = off.
    pub top_p: Option<f32>,
    /// Sampling seed.
    pub seed: u64,
    /// Route wish.
    pub route: RouteChoice,
}

impl GenerateRequest {
    /// A request for a task adapter (`proofread`, `truecase`): `input` is wrapped in the task
    /// prompt format the adapters were trained on (`Task: <task>\nInput: <input>\nOutput:`,
    /// the same on device and server); other adapter names take `input` as the prompt.
    pub fn for_adapter(adapter: impl Into<String>, input: &str) -> Self {
        let adapter = adapter.into();
        let prompt = match tandem_model::tasks::Task::from_name(&adapter) {
            Ok(task) => tandem_model::tasks::prompt(task, input),
            Err(_) => input.to_string(),
        };
        GenerateRequest {
            adapter: Some(adapter),
            ..GenerateRequest::new(prompt)
        }
    }

    /// A greedy request for up to 64 tokens on the device model, routed automatically.
    pub fn new(prompt: impl Into<String>) -> Self {
        GenerateRequest {
            prompt: prompt.into(),
            model: ModelChoice::Device,
            adapter: None,
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: None,
            seed: 0,
            route: RouteChoice::Auto,
        }
    }
}

/// The end of a generation: where it ran, why, and what ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Where it ran.
    pub route: Route,
    /// Why (the router's reason, or the fallback's).
    pub reason: String,
    /// The model that ran.
    pub model: ModelChoice,
    /// Its content digest.
    pub model_digest: ModelDigest,
    /// The adapter's content digest.
    pub adapter_digest: Option<AdapterDigest>,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub completion_tokens: u32,
    /// `stop` (end of text or a stop string), `length`, or locally `cancelled`.
    pub finish_reason: String,
    /// For remote requests, the checked receipt.
    pub receipt: Option<VerifiedReceipt>,
}

/// What a generation stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// New text and the token ids that produced it.
    Text {
        /// The text delta.
        text: String,
        /// Its token ids.
        token_ids: Vec<u32>,
    },
    /// The remote path failed before the first chunk; the request now runs locally.
    Fallback {
        /// What failed.
        reason: String,
    },
    /// The last event.
    Done(Box<Summary>),
}

/// The events of one generation. Dropping it cancels the work (the local thread stops at the
/// next token; the remote RPC is dropped, which cancels it at the gateway and node).
#[derive(Debug)]
pub struct EventStream {
    // Unbounded: a remote stream cannot be paused (its callback is synchronous), and a text
    // delta must never be dropped because the app reads slowly. The stream is bounded anyway
    // by `max_new_tokens`.
    rx: mpsc::UnboundedReceiver<Result<Event, Error>>,
    task: tokio::task::JoinHandle<()>,
}

impl EventStream {
    /// The next event; `None` after `Done` or an error.
    pub async fn next(&mut self) -> Option<Result<Event, Error>> {
        self.rx.recv().await
    }
}

impl tokio_stream::Stream for EventStream {
    type Item = Result<Event, Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
struct Inner {
    config: Config,
    device: ModelPin,
    /// The device model's context length: the hard limit of a local run (the routing budget
    /// is a preference below it).
    device_context: usize,
    server: Option<ModelPin>,
    tokenizer: OnceCell<Tokenizer>,
    local: OnceCell<Arc<LocalEngine>>,
    remote: Option<Remote>,
}

/// The device SDK's entry point. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Builds a client: pins the models (hashes their files), checks the policy. Loading the
    /// device model waits for the first local request (or [`Client::load_local`]).
    pub fn new(config: Config) -> Result<Client, Error> {
        Client::with_clock(config, std::sync::Arc::new(tandem_service::SystemClock))
    }

    /// [`Client::new`] with the clock the remote path verifies expiry against.
    pub fn with_clock(config: Config, clock: crate::remote::Clock) -> Result<Client, Error> {
        config.validate()?;
        let base = default_models_dir();
        let device_dir = config
            .models
            .device
            .clone()
            .unwrap_or_else(|| base.join("device"));
        let device = ModelPin::from_dir(ModelChoice::Device, &device_dir)?;
        let cfg_path = device.dir.join("config.json");
        let cfg_bytes = std::fs::read(&cfg_path).map_err(|source| ConfigError::Read {
            path: cfg_path.display().to_string(),
            source,
        })?;
        let device_context = tandem_model::Config::from_json(&cfg_bytes, &cfg_path)
            .map_err(|e| ConfigError::invalid("models.device", e.to_string()))?
            .max_position_embeddings;
        let server_dir: Option<PathBuf> = config
            .models
            .server
            .clone()
            .or_else(|| Some(base.join("server")).filter(|d| d.is_dir()));
        let server = server_dir
            .map(|d| ModelPin::from_dir(ModelChoice::Server, &d))
            .transpose()?;
        let remote = match (&config.gateway, &config.policy) {
            (Some(url), Some(p)) => {
                let policy = tandem_attest::verify::Policy::from_json(p.to_string().as_bytes())
                    .map_err(|e| ConfigError::invalid("policy", e.to_string()))?;
                let mut remote = Remote::new(
                    url.clone(),
                    config.tls_ca_pem.clone(),
                    policy.clone(),
                    config.timeouts.clone(),
                    config.routing.candidates,
                )
                .with_clock(clock)
                .with_discover_cache(std::time::Duration::from_millis(
                    config.routing.discover_cache_ms,
                ));
                if let Some(log) = &config.log_url {
                    remote = remote.with_checkpoints(CheckpointBook::open(
                        policy,
                        log,
                        config.checkpoint_file.clone(),
                        config.timeouts.request(),
                    )?);
                }
                Some(remote)
            }
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "policy",
                    "a gateway is configured but no trust policy: every node must be verified",
                )
                .into());
            }
            _ => None,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                device,
                device_context,
                server,
                tokenizer: OnceCell::new(),
                local: OnceCell::new(),
                remote,
            }),
        })
    }

    /// Largest prompt + new tokens run locally: `routing.local_token_budget` if set (capped at
    /// the device model's context), else that context.
    pub fn local_budget(&self) -> usize {
        let ctx = self.inner.device_context;
        self.inner
            .config
            .routing
            .local_token_budget
            .map_or(ctx, |b| b.min(ctx))
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The pin of `model`, if the device knows it.
    pub fn pin(&self, model: ModelChoice) -> Option<&ModelPin> {
        match model {
            ModelChoice::Device => Some(&self.inner.device),
            ModelChoice::Server => self.inner.server.as_ref(),
        }
    }

    /// The remote side, if configured.
    pub fn remote(&self) -> Option<&Remote> {
        self.inner.remote.as_ref()
    }

    /// Loads the device model now (otherwise the first local request does).
    pub async fn load_local(&self) -> Result<Arc<LocalEngine>, Error> {
        let inner = self.inner.clone();
        self.inner
            .local
            .get_or_try_init(|| async move {
                let pin = inner.device.clone();
                tokio::task::spawn_blocking(move || LocalEngine::load(&pin).map(Arc::new))
                    .await
                    .map_err(|e| Error::Route(format!("loading the device model: {e}")))?
            })
            .await
            .cloned()
    }

    async fn count_tokens(&self, prompt: &str) -> Result<usize, Error> {
        let tok = self
            .inner
            .tokenizer
            .get_or_try_init(|| async {
                let p = self.inner.device.dir.join("tokenizer.json");
                let bytes = std::fs::read(&p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                Tokenizer::from_bytes(&bytes, &p)
                    .map_err(|e| Error::Local(tandem_model::Error::from(e)))
            })
            .await?;
        Ok(tok.encode(prompt)?.len())
    }

    /// Decides where `req` would run, without running it.
    pub async fn route(&self, req: &GenerateRequest) -> Result<Decision, Error> {
        let prompt_tokens = self.count_tokens(&req.prompt).await?;
        self.route_counted(req, prompt_tokens)
    }

    fn route_counted(
        &self,
        req: &GenerateRequest,
        prompt_tokens: usize,
    ) -> Result<Decision, Error> {
        let adapter_installed = match (&req.adapter, req.model) {
            (None, _) => true,
            (Some(a), ModelChoice::Device) => self.inner.device.adapters.contains_key(a),
            (Some(_), ModelChoice::Server) => false,
        };
        let inputs = RouteInputs {
            choice: req.route,
            model: req.model,
            adapter: req.adapter.as_deref(),
            adapter_installed,
            prompt_tokens,
            max_new_tokens: req.max_new_tokens as usize,
            local_budget: self.local_budget(),
            remote_configured: self.inner.remote.is_some(),
        };
        decide(&inputs).map_err(Error::Route)
    }

    /// Starts a generation. Must be called inside a tokio runtime.
    pub fn generate(&self, req: GenerateRequest) -> EventStream {
        self.generate_gated(req, None)
    }

    /// [`Client::generate`], where a fallback to the device (the remote path failed before its
    /// first chunk) first takes a permit of `local_slots` and holds it while it runs: a host
    /// that bounds how many local generations run at once (the daemon's queue) bounds the
    /// fallbacks too. A request routed locally from the start is not gated here: the caller
    /// admits it before calling.
    pub fn generate_gated(
        &self,
        req: GenerateRequest,
        local_slots: Option<Arc<tokio::sync::Semaphore>>,
    ) -> EventStream {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = self.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = client.run(req, &tx, local_slots).await {
                let _ = tx.send(Err(e));
            }
        });
        EventStream { rx, task }
    }

    async fn run(
        &self,
        req: GenerateRequest,
        tx: &mpsc::UnboundedSender<Result<Event, Error>>,
        local_slots: Option<Arc<tokio::sync::Semaphore>>,
    ) -> Result<(), Error> {
        if req.prompt.is_empty() {
            return Err(Error::Route("the prompt is empty".into()));
        }
        let pin = self.pin(req.model).ok_or_else(|| {
            Error::Route(format!(
                "the {} model is not known to this device (set models.{} in the config)",
                req.model, req.model
            ))
        })?;
        let adapter = req
            .adapter
            .as_deref()
            .map(|a| pin.adapter(a))
            .transpose()
            .map_err(Error::Route)?;
        let prompt_tokens = self.count_tokens(&req.prompt).await?;
        let decision = self.route_counted(&req, prompt_tokens)?;
        let sampling = Sampling {
            max_new_tokens: req.max_new_tokens,
            temperature: req.temperature,
            top_p: req.top_p,
            seed: req.seed,
        };
        if decision.route == Route::Local {
            return self.run_local(&req, &sampling, decision.reason, tx).await;
        }
        let Some(remote) = &self.inner.remote else {
            return Err(RemoteError::NoGateway.into());
        };
        let job = RemoteJob {
            model_digest: pin.digest.0.0,
            adapter_digest: adapter.map(|a| a.digest.0.0),
            required: pin.required_digests(adapter),
            body: tandem_proto::v1::InferenceRequest {
                model_digest: pin.digest.0.0.to_vec(),
                adapter_digest: adapter.map(|a| a.digest.0.0.to_vec()).unwrap_or_default(),
                prompt: req.prompt.clone(),
                max_new_tokens: req.max_new_tokens,
                temperature: req.temperature,
                top_p: req.top_p.unwrap_or(0.0),
                seed: req.seed,
            },
        };
        let mut started = false;
        let tx2 = tx.clone();
        let result = remote
            .run(
                &job,
                |text, token_ids| tx2.send(Ok(Event::Text { text, token_ids })).is_ok(),
                &mut started,
            )
            .await;
        match result {
            Ok(receipt) => {
                let summary = Summary {
                    route: Route::Remote,
                    reason: decision.reason,
                    model: req.model,
                    model_digest: pin.digest,
                    adapter_digest: adapter.map(|a| a.digest),
                    prompt_tokens: receipt.prompt_tokens,
                    completion_tokens: receipt.completion_tokens,
                    finish_reason: receipt.finish_reason.clone(),
                    receipt: Some(receipt),
                };
                let _ = tx.send(Ok(Event::Done(Box::new(summary))));
                Ok(())
            }
            Err(e) => {
                // Fallback: only for auto routing, before any text arrived, and only when the
                // device can run the request at all (the budget is a preference, the model's
                // context the limit).
                let local_ok = req.route == RouteChoice::Auto
                    && self.inner.config.routing.fallback_to_local
                    && !started
                    && req.model == ModelChoice::Device
                    && adapter.is_none_or(|a| self.inner.device.adapters.contains_key(&a.name))
                    && prompt_tokens + req.max_new_tokens as usize <= self.inner.device_context;
                if !local_ok {
                    return Err(e.into());
                }
                let reason = format!("remote failed before the first chunk ({e}); ran locally");
                let _ = tx.send(Ok(Event::Fallback {
                    reason: e.to_string(),
                }));
                let _permit = match local_slots {
                    Some(slots) => Some(slots.acquire_owned().await.map_err(|_| {
                        Error::Route("the local queue closed (shutting down)".into())
                    })?),
                    None => None,
                };
                self.run_local(&req, &sampling, reason, tx).await
            }
        }
    }

    async fn run_local(
        &self,
        req: &GenerateRequest,
        sampling: &Sampling,
        reason: String,
        tx: &mpsc::UnboundedSender<Result<Event, Error>>,
    ) -> Result<(), Error> {
        let engine = self.load_local().await?;
        let tx2 = tx.clone();
        let prompt = req.prompt.clone();
        let adapter = req.adapter.clone();
        let s = *sampling;
        let g = tokio::task::spawn_blocking(move || {
            engine.generate(&prompt, adapter.as_deref(), &s, |text, ids| {
                let ev = Event::Text {
                    text: text.to_string(),
                    token_ids: ids.to_vec(),
                };
                if tx2.send(Ok(ev)).is_err() {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            })
        })
        .await
        .map_err(|e| Error::Route(format!("local generation thread: {e}")))??;
        let adapter_digest = req
            .adapter
            .as_deref()
            .and_then(|a| self.inner.device.adapters.get(a))
            .map(|a| a.digest);
        let summary = Summary {
            route: Route::Local,
            reason,
            model: ModelChoice::Device,
            model_digest: self.inner.device.digest,
            adapter_digest,
            prompt_tokens: g.prompt_tokens as u32,
            completion_tokens: g.tokens.len() as u32,
            // The node's vocabulary (and OpenAI's): an end-of-text token or a stop string is
            // `stop` wherever the request ran.
            finish_reason: match g.finish {
                tandem_model::FinishReason::Eos | tandem_model::FinishReason::StopString => {
                    "stop".to_string()
                }
                other => other.as_str().to_string(),
            },
            receipt: None,
        };
        let _ = tx.send(Ok(Event::Done(Box::new(summary))));
        Ok(())
    }
}
