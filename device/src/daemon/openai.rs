//! The OpenAI-compatible HTTP API over the daemon: `GET /v1/models`, `POST /v1/chat/completions`,
//! `POST /v1/completions`, with `stream: false` (one JSON object) and `stream: true`
//! (server-sent events ending in `data: [DONE]`).
//!
//! Follows the OpenAI API reference (Chat Completions, Completions, Models; error object
//! `{"error": {message, type, param, code}}`). Fields Tandem does not implement are refused
//! with a 400 naming the field, never ignored; `null` counts as absent. Tandem's own facts
//! travel beside OpenAI's: the `x-tandem-route` response header and a `tandem` object
//! (`route`, `reason`, `receipt`, `fallback`) in the response, or in the last chunk when
//! streaming. A request may ask for a route with the `x-tandem-route: local|remote|auto` header.
//! Errors before the first output are ordinary HTTP errors; an error after the stream started
//! is sent as a final `data: {"error": …}` event (and no `[DONE]`), never as a silently short
//! stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use tandem_model::chat_template::Message;

use super::{Daemon, DaemonError, Generation, Job, Output};
use crate::client::{GenerateRequest, Summary};
use crate::error::Error;
use crate::models::ModelChoice;
use crate::router::RouteChoice;

/// The request header that asks for a route, and the response header that says where it ran.
pub const ROUTE_HEADER: &str = "x-tandem-route";

/// The HTTP routes, over `daemon`.
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{id}", get(get_model))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .with_state(daemon)
}

/// An error in OpenAI's shape.
#[derive(Debug)]
pub struct ApiError(pub DaemonError);

impl From<DaemonError> for ApiError {
    fn from(e: DaemonError) -> Self {
        ApiError(e)
    }
}

/// The `{"error": {...}}` body and status of `e`.
pub fn error_body(e: &DaemonError) -> (StatusCode, Value) {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match status.as_u16() {
        400 | 404 => "invalid_request_error",
        401 => "authentication_error",
        429 => "rate_limit_error",
        _ => "server_error",
    };
    let (param, code) = match e {
        DaemonError::BadRequest { param, message } => (
            param.clone(),
            if message.contains("is not supported") {
                "unsupported_parameter"
            } else {
                "invalid_value"
            },
        ),
        DaemonError::NotFound(m) if m.contains("model") => {
            (Some("model".into()), "model_not_found")
        }
        DaemonError::NotFound(_) => (None, "not_found"),
        DaemonError::Busy { .. } => (None, "busy"),
        DaemonError::Unauthenticated(_) => (None, "invalid_api_key"),
        DaemonError::Sdk(Error::Route(m)) if m.contains("exceed the local budget") => {
            (Some("messages".into()), "context_length_exceeded")
        }
        DaemonError::Sdk(Error::Route(_)) => (None, "route_unavailable"),
        DaemonError::Sdk(Error::Remote(_)) | DaemonError::Unavailable(_) => {
            (None, "remote_unavailable")
        }
        _ => (None, "internal_error"),
    };
    (
        status,
        json!({"error": {"message": e.to_string(), "type": kind, "param": param, "code": code}}),
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = error_body(&self.0);
        (status, axum::Json(body)).into_response()
    }
}

fn model_json(d: &Daemon, m: &super::ModelEntry) -> Value {
    json!({
        "id": m.choice.as_str(),
        "object": "model",
        "created": 0,
        "owned_by": "tandem",
        "tandem": {
            "digest": m.digest,
            "context_tokens": m.context_tokens,
            "local": m.local,
            "remote": m.remote,
            "local_token_budget": if m.local { Some(d.client().local_budget()) } else { None },
            "chat_template": m.chat_template,
            "adapters": m.adapters.iter().map(|(n, dg)| json!({"name": n, "digest": dg})).collect::<Vec<_>>(),
        },
    })
}

async fn list_models(State(d): State<Arc<Daemon>>) -> Response {
    let data: Vec<Value> = d.models().iter().map(|m| model_json(&d, m)).collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn get_model(State(d): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    match d.model(&id) {
        Ok(choice) => match d.models().iter().find(|m| m.choice == choice) {
            Some(m) => axum::Json(model_json(&d, m)).into_response(),
            None => ApiError(DaemonError::NotFound(format!(
                "the model `{id}` does not exist"
            )))
            .into_response(),
        },
        Err(e) => ApiError(e).into_response(),
    }
}

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

/// A parsed request body.
#[derive(Debug)]
struct Parsed {
    model: ModelChoice,
    job: Job,
    stream: bool,
}

/// The request's fields, `null` ones dropped.
fn object(body: &[u8]) -> Result<Map<String, Value>, DaemonError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| DaemonError::BadRequest {
        message: format!("the request body is not JSON: {e}"),
        param: None,
    })?;
    let Value::Object(mut m) = v else {
        return Err(DaemonError::BadRequest {
            message: "the request body must be a JSON object".into(),
            param: None,
        });
    };
    m.retain(|_, v| !v.is_null());
    Ok(m)
}

fn number(m: &Map<String, Value>, k: &str) -> Result<Option<f64>, DaemonError> {
    m.get(k)
        .map(|v| {
            v.as_f64()
                .ok_or_else(|| DaemonError::bad(k, format!("`{k}` must be a number")))
        })
        .transpose()
}

fn integer(m: &Map<String, Value>, k: &str) -> Result<Option<i64>, DaemonError> {
    m.get(k)
        .map(|v| {
            v.as_i64()
                .ok_or_else(|| DaemonError::bad(k, format!("`{k}` must be an integer")))
        })
        .transpose()
}

fn parse(d: &Daemon, kind: Kind, headers: &HeaderMap, body: &[u8]) -> Result<Parsed, DaemonError> {
    let m = object(body)?;
    let allowed: &[&str] = match kind {
        Kind::Chat => &[
            "model",
            "messages",
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "seed",
            "stop",
            "n",
            "stream",
            "stream_options",
        ],
        Kind::Completion => &[
            "model",
            "prompt",
            "max_tokens",
            "temperature",
            "top_p",
            "seed",
            "stop",
            "n",
            "stream",
            "stream_options",
        ],
    };
    if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(DaemonError::bad(
            k.as_str(),
            format!(
                "the field `{k}` is not supported by Tandem (supported: {})",
                allowed.join(", ")
            ),
        ));
    }
    let model_name = match m.get("model") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(DaemonError::bad("model", "`model` must be a string")),
        None => {
            return Err(DaemonError::bad(
                "model",
                "`model` is required: `device` or `server` (GET /v1/models)",
            ));
        }
    };
    let model = d.model(model_name)?;
    if let Some(n) = integer(&m, "n")?
        && n != 1
    {
        return Err(DaemonError::bad(
            "n",
            format!("n = {n} is not supported: Tandem returns one choice (n = 1)"),
        ));
    }
    let stream = match m.get("stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(DaemonError::bad("stream", "`stream` must be a boolean")),
    };
    if let Some(so) = m.get("stream_options") {
        let ok = so.as_object().is_some_and(|o| {
            o.iter()
                .all(|(k, v)| k == "include_usage" && (v.is_boolean() || v.is_null()))
        });
        if !ok {
            return Err(DaemonError::bad(
                "stream_options",
                "`stream_options` is not supported beyond {\"include_usage\": bool} (usage is always in the last chunk)",
            ));
        }
    }
    let max_tokens = match (
        integer(&m, "max_tokens")?,
        integer(&m, "max_completion_tokens")?,
    ) {
        (Some(_), Some(_)) => {
            return Err(DaemonError::bad(
                "max_completion_tokens",
                "give `max_tokens` or `max_completion_tokens`, not both",
            ));
        }
        (Some(n), None) | (None, Some(n)) => u32::try_from(n)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| DaemonError::bad("max_tokens", "max_tokens must be at least 1"))?,
        (None, None) => d.options().default_max_tokens,
    };
    // OpenAI's defaults: temperature 1, top_p 1 (off).
    let temperature = number(&m, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(DaemonError::bad(
            "temperature",
            "temperature must be in [0, 2]",
        ));
    }
    let top_p = number(&m, "top_p")?;
    if let Some(p) = top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(DaemonError::bad("top_p", "top_p must be in (0, 1]"));
    }
    let seed = integer(&m, "seed")?.map_or(0, i64::cast_unsigned);
    let stop = match m.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    DaemonError::bad("stop", "`stop` must be a string or an array of strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(DaemonError::bad(
                "stop",
                "`stop` must be a string or an array of strings",
            ));
        }
    };
    let prompt = match kind {
        Kind::Chat => d.chat_prompt(model, &messages(&m)?)?,
        Kind::Completion => match m.get("prompt") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                a[0].as_str().unwrap_or_default().to_string()
            }
            Some(Value::Array(_)) => {
                return Err(DaemonError::bad(
                    "prompt",
                    "`prompt` as an array is supported only with one string (n = 1, no token ids)",
                ));
            }
            Some(_) => return Err(DaemonError::bad("prompt", "`prompt` must be a string")),
            None => return Err(DaemonError::bad("prompt", "`prompt` is required")),
        },
    };
    let route = match headers.get(ROUTE_HEADER) {
        None => RouteChoice::Auto,
        Some(v) => super::parse_route(
            ROUTE_HEADER,
            v.to_str().map_err(|_| {
                DaemonError::bad(ROUTE_HEADER, "the x-tandem-route header is not text")
            })?,
        )?,
    };
    #[allow(clippy::cast_possible_truncation)]
    let request = GenerateRequest {
        prompt,
        model,
        adapter: None,
        max_new_tokens: max_tokens,
        temperature: temperature as f32,
        top_p: top_p.map(|p| p as f32),
        seed,
        route,
    };
    Ok(Parsed {
        model,
        job: Job { request, stop },
        stream,
    })
}

/// `messages`: `{role, content}` with content a string or an array of text parts.
fn messages(m: &Map<String, Value>) -> Result<Vec<Message>, DaemonError> {
    let Some(Value::Array(list)) = m.get("messages") else {
        return Err(DaemonError::bad(
            "messages",
            "`messages` is required: an array of {role, content}",
        ));
    };
    list.iter()
        .enumerate()
        .map(|(i, msg)| {
            let Some(o) = msg.as_object() else {
                return Err(DaemonError::bad(
                    format!("messages[{i}]"),
                    format!("messages[{i}] must be an object {{role, content}}"),
                ));
            };
            if let Some(k) = o.keys().find(|k| !["role", "content"].contains(&k.as_str())) {
                return Err(DaemonError::bad(
                    format!("messages[{i}].{k}"),
                    format!("messages[{i}].{k} is not supported by Tandem (role and content only)"),
                ));
            }
            let role = o.get("role").and_then(Value::as_str).ok_or_else(|| {
                DaemonError::bad(format!("messages[{i}].role"), format!("messages[{i}] has no string `role`"))
            })?;
            let content = match o.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut s = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                            (Some("text"), Some(t)) => s.push_str(t),
                            (t, _) => {
                                return Err(DaemonError::bad(
                                    format!("messages[{i}].content[{j}]"),
                                    format!(
                                        "messages[{i}].content[{j}] of type `{}` is not supported by Tandem (text parts only)",
                                        t.unwrap_or("?")
                                    ),
                                ));
                            }
                        }
                    }
                    s
                }
                _ => {
                    return Err(DaemonError::bad(
                        format!("messages[{i}].content"),
                        format!("messages[{i}] has no `content` (a string or text parts)"),
                    ));
                }
            };
            Ok(Message::new(role, content))
        })
        .collect()
}

fn tandem_json(s: &Summary, fallback: Option<&str>) -> Value {
    json!({
        "route": s.route.as_str(),
        "reason": s.reason,
        "model_digest": s.model_digest.to_string(),
        "adapter_digest": s.adapter_digest.map(|d| d.to_string()),
        "fallback": fallback,
        "receipt": s.receipt.as_ref().map(|r| json!({
            "node": r.node,
            "root_of_trust": r.root_of_trust,
            "release_digest": r.release_digest.to_string(),
            "log_index": r.log_index,
            "model_digest": r.model_digest.to_string(),
            "adapter_digest": r.adapter_digest.map(|d| d.to_string()),
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "finish_reason": r.finish_reason,
        })),
    })
}

fn usage(s: &Summary) -> Value {
    json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "total_tokens": s.prompt_tokens.saturating_add(s.completion_tokens),
    })
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn response_id(kind: Kind) -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Completion => "cmpl",
    };
    format!("{prefix}-tandem-{:x}-{n}", tandem_service::unix_now())
}

fn route_header(route: crate::router::Route) -> (&'static str, HeaderValue) {
    (ROUTE_HEADER, HeaderValue::from_static(route.as_str()))
}

async fn chat_completions(
    State(d): State<Arc<Daemon>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run(d, Kind::Chat, headers, body).await
}

async fn completions(State(d): State<Arc<Daemon>>, headers: HeaderMap, body: Bytes) -> Response {
    run(d, Kind::Completion, headers, body).await
}

async fn run(d: Arc<Daemon>, kind: Kind, headers: HeaderMap, body: Bytes) -> Response {
    match start(&d, kind, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn start(
    d: &Daemon,
    kind: Kind,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let p = parse(d, kind, headers, body)?;
    let mut g = d.start(p.job).await?;
    // The first output decides the answer's status: an error before any text is an ordinary
    // HTTP error; after a fallback notice or text the route is fixed.
    let first = match g.next().await {
        Some(Ok(o)) => o,
        Some(Err(e)) => return Err(e.into()),
        None => {
            return Err(DaemonError::Internal("the generation produced nothing".into()).into());
        }
    };
    let id = response_id(kind);
    let created = tandem_service::unix_now();
    let model = p.model.as_str();
    if p.stream {
        let route = route_header(g.route());
        let s = SseState {
            g: Some(g),
            first: Some(first),
            kind,
            id,
            created,
            model,
            fallback: None,
            sent_role: false,
            done: false,
        };
        let events = futures_util::stream::unfold(s, |mut s| async move {
            let ev = s.step().await?;
            Some((Ok::<_, Infallible>(ev), s))
        });
        return Ok(([route], Sse::new(events)).into_response());
    }
    let (mut text, mut fallback) = (String::new(), None);
    let mut item: Option<Result<Output, DaemonError>> = Some(Ok(first));
    let summary = loop {
        match item {
            Some(Ok(Output::Text(t))) => text.push_str(&t),
            Some(Ok(Output::Fallback(r))) => fallback = Some(r),
            Some(Ok(Output::Done(s))) => break s,
            Some(Err(e)) => return Err(e.into()),
            None => {
                return Err(
                    DaemonError::Internal("the generation ended without a summary".into()).into(),
                );
            }
        }
        item = g.next().await;
    };
    let choice = match kind {
        Kind::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": summary.finish_reason,
            "logprobs": null,
        }),
        Kind::Completion => json!({
            "index": 0,
            "text": text,
            "finish_reason": summary.finish_reason,
            "logprobs": null,
        }),
    };
    let body = json!({
        "id": id,
        "object": match kind { Kind::Chat => "chat.completion", Kind::Completion => "text_completion" },
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(&summary),
        "tandem": tandem_json(&summary, fallback.as_deref()),
    });
    Ok(([route_header(summary.route)], axum::Json(body)).into_response())
}

/// The state of one SSE answer.
struct SseState {
    g: Option<Generation>,
    first: Option<Output>,
    kind: Kind,
    id: String,
    created: u64,
    model: &'static str,
    fallback: Option<String>,
    sent_role: bool,
    done: bool,
}

impl SseState {
    fn chunk(&self, choice: Value, extra: Option<(Value, Value)>) -> SseEvent {
        let mut v = json!({
            "id": self.id,
            "object": match self.kind { Kind::Chat => "chat.completion.chunk", Kind::Completion => "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if let Some((usage, tandem)) = extra {
            v["usage"] = usage;
            v["tandem"] = tandem;
        }
        SseEvent::default().data(v.to_string())
    }

    fn text_choice(&mut self, text: &str) -> Value {
        match self.kind {
            Kind::Chat => {
                let delta = if self.sent_role {
                    json!({"content": text})
                } else {
                    self.sent_role = true;
                    json!({"role": "assistant", "content": text})
                };
                json!({"index": 0, "delta": delta, "finish_reason": null, "logprobs": null})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text, "finish_reason": null, "logprobs": null})
            }
        }
    }

    /// The next SSE event; `None` after `[DONE]` or an error event.
    async fn step(&mut self) -> Option<SseEvent> {
        loop {
            if self.done {
                return None;
            }
            let item = match self.first.take() {
                Some(o) => Some(Ok(o)),
                None => match self.g.as_mut() {
                    Some(g) => g.next().await,
                    None => None,
                },
            };
            match item {
                Some(Ok(Output::Text(t))) => {
                    let c = self.text_choice(&t);
                    return Some(self.chunk(c, None));
                }
                Some(Ok(Output::Fallback(r))) => self.fallback = Some(r),
                Some(Ok(Output::Done(s))) => {
                    let choice = match self.kind {
                        Kind::Chat => {
                            let delta = if self.sent_role {
                                json!({})
                            } else {
                                json!({"role": "assistant", "content": ""})
                            };
                            json!({"index": 0, "delta": delta, "finish_reason": s.finish_reason, "logprobs": null})
                        }
                        Kind::Completion => {
                            json!({"index": 0, "text": "", "finish_reason": s.finish_reason, "logprobs": null})
                        }
                    };
                    let extra = (usage(&s), tandem_json(&s, self.fallback.as_deref()));
                    let ev = self.chunk(choice, Some(extra));
                    self.first = None;
                    // `[DONE]` comes next.
                    self.g = None;
                    return Some(ev);
                }
                Some(Err(e)) => {
                    self.done = true;
                    self.g = None;
                    let (_, body) = error_body(&e);
                    return Some(SseEvent::default().data(body.to_string()));
                }
                None => {
                    self.done = true;
                    return Some(SseEvent::default().data("[DONE]"));
                }
            }
        }
    }
}
