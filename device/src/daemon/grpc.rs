//! `tandem.v1.Device` over the daemon (`proto/tandem/v1/device.proto`).

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tandem_model::chat_template::Message;
use tandem_proto::v1::{self, device_event, device_server};
use tonic::{Request, Response, Status};

use super::{Daemon, DaemonError, Generation, Job, Output};
use crate::client::{GenerateRequest, Summary};
use crate::error::{Error, RemoteError};
use crate::router::RouteChoice;

/// The gRPC service (wrap in [`device_server::DeviceServer`]).
#[derive(Debug, Clone)]
pub struct DeviceService {
    daemon: Arc<Daemon>,
}

impl DeviceService {
    /// The service over `daemon`.
    pub fn new(daemon: Arc<Daemon>) -> DeviceService {
        DeviceService { daemon }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> device_server::DeviceServer<DeviceService> {
        device_server::DeviceServer::new(self)
    }

    fn job(
        &self,
        prompt: String,
        options: Option<v1::GenerateOptions>,
    ) -> Result<Job, DaemonError> {
        let o = options.unwrap_or_default();
        let route = match v1::DeviceRoute::try_from(o.route) {
            Ok(v1::DeviceRoute::Auto) => RouteChoice::Auto,
            Ok(v1::DeviceRoute::Local) => RouteChoice::Local,
            Ok(v1::DeviceRoute::Remote) => RouteChoice::Remote,
            Err(_) => {
                return Err(DaemonError::bad(
                    "options.route",
                    format!("unknown route {}: use AUTO, LOCAL or REMOTE", o.route),
                ));
            }
        };
        Ok(Job {
            request: GenerateRequest {
                prompt,
                model: self.daemon.model(&o.model)?,
                adapter: Some(o.adapter).filter(|a| !a.is_empty()),
                max_new_tokens: if o.max_tokens == 0 {
                    self.daemon.options().default_max_tokens
                } else {
                    o.max_tokens
                },
                temperature: o.temperature,
                top_p: Some(o.top_p).filter(|p| *p != 0.0),
                seed: o.seed,
                route,
            },
            stop: o.stop,
        })
    }
}

/// A `sha256:…` digest, or empty.
fn opt<T: ToString>(d: Option<T>) -> String {
    d.map(|d| d.to_string()).unwrap_or_default()
}

/// The wire form of a summary.
pub fn summary_message(s: &Summary) -> v1::Summary {
    v1::Summary {
        route: s.route.as_str().into(),
        reason: s.reason.clone(),
        model: s.model.as_str().into(),
        model_digest: s.model_digest.to_string(),
        adapter_digest: opt(s.adapter_digest),
        prompt_tokens: s.prompt_tokens,
        completion_tokens: s.completion_tokens,
        finish_reason: s.finish_reason.clone(),
        receipt: s.receipt.as_ref().map(|r| v1::DeviceReceipt {
            node: r.node.clone(),
            root_of_trust: r.root_of_trust.clone(),
            release_digest: r.release_digest.to_string(),
            log_index: r.log_index,
            model_digest: r.model_digest.to_string(),
            adapter_digest: opt(r.adapter_digest),
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            finish_reason: r.finish_reason.clone(),
        }),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::DeviceEvent, Status>> + Send>>;

/// The generation as a gRPC stream: an error ends it with its status. Dropping the stream
/// (the call was cancelled or its deadline passed) drops the generation, which cancels it.
fn stream(g: Generation) -> EventStream {
    Box::pin(futures_util::stream::unfold(Some(g), |g| async move {
        let mut g = g?;
        let item = g.next().await?;
        let ev = match item {
            Err(e) => return Some((Err(Status::from(e)), None)),
            Ok(Output::Text(text)) => device_event::Event::Delta(v1::TextDelta {
                text,
                token_ids: Vec::new(),
            }),
            Ok(Output::Fallback(reason)) => device_event::Event::Fallback(v1::Fallback { reason }),
            Ok(Output::Done(s)) => device_event::Event::Summary(summary_message(&s)),
        };
        Some((Ok(v1::DeviceEvent { event: Some(ev) }), Some(g)))
    }))
}

#[tonic::async_trait]
impl device_server::Device for DeviceService {
    type GenerateStream = EventStream;
    type ChatStream = EventStream;

    async fn generate(
        &self,
        req: Request<v1::DeviceGenerateRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let r = req.into_inner();
        let job = self.job(r.prompt, r.options)?;
        let g = self.daemon.start(job).await?;
        Ok(Response::new(stream(g)))
    }

    async fn chat(&self, req: Request<v1::ChatRequest>) -> Result<Response<EventStream>, Status> {
        let r = req.into_inner();
        let model = self
            .daemon
            .model(r.options.as_ref().map_or("", |o| o.model.as_str()))?;
        let messages: Vec<Message> = r
            .messages
            .into_iter()
            .map(|m| Message::new(m.role, m.content))
            .collect();
        if let Some(i) = messages.iter().position(|m| m.role.is_empty()) {
            return Err(DaemonError::bad(
                format!("messages[{i}].role"),
                format!("message {i} has no role (system, user or assistant)"),
            )
            .into());
        }
        let prompt = self.daemon.chat_prompt(model, &messages)?;
        let job = self.job(prompt, r.options)?;
        let g = self.daemon.start(job).await?;
        Ok(Response::new(stream(g)))
    }

    async fn list_models(
        &self,
        _: Request<v1::ListModelsRequest>,
    ) -> Result<Response<v1::ListModelsResponse>, Status> {
        let budget = u32::try_from(self.daemon.client().local_budget()).unwrap_or(u32::MAX);
        let models = self
            .daemon
            .models()
            .iter()
            .map(|m| v1::ModelInfo {
                name: m.choice.as_str().into(),
                digest: m.digest.clone(),
                context_tokens: m.context_tokens,
                local: m.local,
                remote: m.remote,
                adapters: m
                    .adapters
                    .iter()
                    .map(|(name, digest)| v1::AdapterInfo {
                        name: name.clone(),
                        digest: digest.clone(),
                    })
                    .collect(),
                local_token_budget: if m.local { budget } else { 0 },
                chat_template: m.chat_template,
            })
            .collect();
        Ok(Response::new(v1::ListModelsResponse { models }))
    }

    async fn list_nodes(
        &self,
        req: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        let r = req.into_inner();
        let client = self.daemon.client();
        let Some(remote) = client.remote() else {
            return Err(DaemonError::Unavailable(
                "no gateway is configured: start `tandem serve --config FILE` with a device config that has `gateway` and `policy` (e.g. from `tandem-fleet dev --write-config`)".into(),
            )
            .into());
        };
        let model = self.daemon.model(&r.model)?;
        let pin = client
            .pin(model)
            .ok_or_else(|| DaemonError::NotFound(format!("the {model} model is not configured")))?;
        let adapter = match r.adapter.as_str() {
            "" => None,
            name => Some(pin.adapter(name).map_err(DaemonError::NotFound)?),
        };
        let reports = remote
            .discover(
                &pin.digest.to_string(),
                &opt(adapter.map(|a| a.digest)),
                &pin.required_digests(adapter),
            )
            .await
            .map_err(|e: RemoteError| DaemonError::from(Error::from(e)))?;
        let nodes = reports
            .iter()
            .map(|c| v1::NodeInfo {
                handle: c.handle.clone(),
                verified: c.node.is_some(),
                node: opt(c.node.as_ref().map(|n| n.name())),
                release_digest: opt(c.node.as_ref().map(|n| n.release().digest())),
                key_expiry: c.node.as_ref().map_or(0, |n| n.key_expiry()),
                report_json: c.report.to_json_value().to_string(),
            })
            .collect();
        Ok(Response::new(v1::ListNodesResponse {
            gateway: remote.url().to_string(),
            nodes,
        }))
    }

    async fn health(
        &self,
        _: Request<v1::HealthRequest>,
    ) -> Result<Response<v1::HealthResponse>, Status> {
        let h = self.daemon.health();
        let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
        Ok(Response::new(v1::HealthResponse {
            status: if h.draining { "draining" } else { "serving" }.into(),
            local_running: n(h.local_running),
            local_waiting: n(h.local_waiting),
            local_queue_limit: n(h.local_queue_limit),
            remote_configured: h.remote_configured,
            version: env!("CARGO_PKG_VERSION").into(),
        }))
    }
}
