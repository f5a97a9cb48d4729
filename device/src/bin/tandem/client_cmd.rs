//! `tandem ask | chat | nodes | config init`: the SDK from the command line.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tandem_device::{
    Client, Config, Event, GenerateRequest, ModelChoice, RouteChoice, Summary, VerifiedReceipt,
};
use tandem_model::chat_template::Message;

use crate::chat_template_cmd::{Prompter, fit_history};

/// Where the device config comes from, shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// Device config file (JSON; `tandem config init`, or `tandem-fleet dev --write-config`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Gateway URL (overrides the config's).
    #[arg(long)]
    gateway: Option<String>,
    /// Trust policy file (tandem-attest policy JSON; overrides the config's).
    #[arg(long)]
    policy: Option<PathBuf>,
}

impl ConfigArgs {
    pub fn load(&self) -> Result<Config> {
        let mut c = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        if let Some(g) = &self.gateway {
            c.gateway = Some(g.clone());
        }
        if let Some(p) = &self.policy {
            let bytes =
                std::fs::read(p).with_context(|| format!("reading policy {}", p.display()))?;
            let v: Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("policy {} is not JSON", p.display()))?;
            c.policy = Some(v);
        }
        c.validate()?;
        Ok(c)
    }

    fn client(&self) -> Result<Client> {
        Ok(Client::new(self.load()?)?)
    }
}

/// `tandem ask`.
#[derive(Debug, Args)]
pub struct AskArgs {
    /// The prompt.
    prompt: String,
    /// Which model: `device` (default) or `server` (runs only on nodes).
    #[arg(long, default_value = "device")]
    model: ModelChoice,
    /// Adapter name (e.g. `proofread`, `truecase`). With a task adapter the prompt is the
    /// task's input and is wrapped in the task prompt format (see `--raw`).
    #[arg(long)]
    adapter: Option<String>,
    /// Send the prompt as is: without the model's chat template (which otherwise makes it a
    /// user turn), and without the task prompt format of a task adapter.
    #[arg(long)]
    raw: bool,
    /// Most new tokens (at least 1).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: u32,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling threshold in (0, 1].
    #[arg(long)]
    top_p: Option<f32>,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to run: auto (local first), local or remote.
    #[arg(long, default_value = "auto")]
    route: RouteChoice,
    #[command(flatten)]
    cfg: ConfigArgs,
    /// Print one JSON object (text, route, reason, receipt) instead of streaming.
    #[arg(long)]
    json: bool,
}

/// `tandem chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Adapter name.
    #[arg(long)]
    adapter: Option<String>,
    /// Most new tokens per reply (at least 1).
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: u32,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// System message (with a model that has a chat template; kept when old turns are dropped).
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    cfg: ConfigArgs,
}

/// `tandem nodes`.
#[derive(Debug, Args)]
pub struct NodesArgs {
    /// Which model's nodes to ask for.
    #[arg(long, default_value = "device")]
    model: ModelChoice,
    /// Adapter the nodes must serve.
    #[arg(long)]
    adapter: Option<String>,
    #[command(flatten)]
    cfg: ConfigArgs,
    /// One JSON object: each candidate's report and key configs (RFC 9458, base64).
    #[arg(long)]
    json: bool,
}

/// `tandem config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Write a device config with the defaults and the embedded models.
    Init {
        /// Where to write it.
        #[arg(long, default_value = "tandem.json")]
        out: PathBuf,
        /// Gateway URL to put in it.
        #[arg(long)]
        gateway: Option<String>,
        /// Policy file to inline.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tandem_service::runtime(2).context("starting the async runtime")
}

fn spinner(msg: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

fn receipt_json(r: &VerifiedReceipt) -> Value {
    json!({
        "node": r.node,
        "root_of_trust": r.root_of_trust,
        "release_digest": r.release_digest.to_string(),
        "log_index": r.log_index,
        "model_digest": r.model_digest.to_string(),
        "adapter_digest": r.adapter_digest.map(|d| d.to_string()),
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "finish_reason": r.finish_reason,
    })
}

fn summary_line(s: &Summary) -> String {
    let mut line = format!(
        "[ran {} on the {} model: {}; {} prompt + {} new tokens, finish: {}]",
        s.route, s.model, s.reason, s.prompt_tokens, s.completion_tokens, s.finish_reason
    );
    if let Some(r) = &s.receipt {
        line.push_str(&format!(
            "\n[receipt: node {} ({}), release {} (log index {}), model {}, adapter {}]",
            r.node,
            r.root_of_trust,
            r.release_digest,
            r.log_index,
            r.model_digest,
            r.adapter_digest
                .map_or_else(|| "none".to_string(), |d| d.to_string())
        ));
    }
    line
}

/// Runs one request, streaming text to `out` unless `json`; returns the text, token ids, the
/// summary and the fallback reason if any.
async fn run_one(
    client: &Client,
    req: GenerateRequest,
    mut out: Option<&mut dyn Write>,
    busy: &str,
) -> Result<(String, Vec<u32>, Summary, Option<String>)> {
    let pb = spinner(busy);
    let mut events = client.generate(req);
    let (mut text, mut ids, mut fallback) = (String::new(), Vec::new(), None);
    while let Some(ev) = events.next().await {
        match ev? {
            Event::Text { text: t, token_ids } => {
                pb.finish_and_clear();
                if let Some(o) = out.as_deref_mut() {
                    o.write_all(t.as_bytes())?;
                    o.flush()?;
                }
                text.push_str(&t);
                ids.extend(token_ids);
            }
            Event::Fallback { reason } => {
                eprintln!("[remote failed before the first chunk: {reason}; running locally]");
                fallback = Some(reason);
            }
            Event::Done(s) => {
                pb.finish_and_clear();
                return Ok((text, ids, *s, fallback));
            }
        }
    }
    pb.finish_and_clear();
    bail!("the generation ended without a summary")
}

fn is_task(adapter: &str) -> bool {
    tandem_model::tasks::Task::from_name(adapter).is_ok()
}

pub fn ask(a: AskArgs) -> Result<()> {
    let client = a.cfg.client()?;
    // The task prompt format wins over the chat template; `--raw` turns both off.
    let task = a.adapter.as_deref().filter(|ad| is_task(ad));
    let prompter = match (task, a.raw, client.pin(a.model)) {
        (None, false, Some(pin)) => Prompter::for_model(&pin.dir)?,
        _ => None,
    };
    let base = match (task, a.raw, &prompter) {
        (Some(ad), false, _) => GenerateRequest::for_adapter(ad, &a.prompt),
        (_, _, Some(p)) => GenerateRequest {
            adapter: a.adapter.clone(),
            ..GenerateRequest::new(p.prompt(&[Message::new("user", a.prompt.as_str())])?)
        },
        _ => GenerateRequest {
            adapter: a.adapter.clone(),
            ..GenerateRequest::new(a.prompt.clone())
        },
    };
    let req = GenerateRequest {
        model: a.model,
        max_new_tokens: a.max_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        route: a.route,
        ..base
    };
    let rt = runtime()?;
    let mut stdout = std::io::stdout();
    let out: Option<&mut dyn Write> = if a.json { None } else { Some(&mut stdout) };
    let (text, ids, s, fallback) = rt.block_on(run_one(&client, req, out, "working…"))?;
    if a.json {
        let mut v = json!({
            "text": text,
            "route": s.route.as_str(),
            "reason": s.reason,
            "model": s.model.as_str(),
            "model_digest": s.model_digest.to_string(),
            "adapter_digest": s.adapter_digest.map(|d| d.to_string()),
            "token_ids": ids,
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "finish_reason": s.finish_reason,
            "fallback": fallback,
        });
        if let Some(r) = &s.receipt {
            v["receipt"] = receipt_json(r);
        }
        println!("{v}");
    } else {
        println!();
        eprintln!("{}", summary_line(&s));
    }
    Ok(())
}

pub fn chat(a: ChatArgs) -> Result<()> {
    let client = a.cfg.client()?;
    let prompter = match (
        a.adapter.as_deref().filter(|ad| is_task(ad)),
        client.pin(ModelChoice::Device),
    ) {
        (None, Some(pin)) => Prompter::for_model(&pin.dir)?,
        _ => None,
    };
    match prompter {
        Some(p) => chat_templated(&client, &a, &p),
        None => {
            if a.system.is_some() {
                eprintln!("[the device model has no chat template: --system is ignored]");
            }
            chat_plain(&client, &a)
        }
    }
}

/// `tandem chat` with the device model's chat template: a message history, rendered whole each
/// turn, its oldest exchanges dropped to keep prompt + reply within the local token budget.
fn chat_templated(client: &Client, a: &ChatArgs, p: &Prompter) -> Result<()> {
    let rt = runtime()?;
    let budget = client.local_budget().saturating_sub(a.max_tokens as usize);
    eprintln!(
        "tandem chat: the conversation stays on this device (local route only; the model's chat template). Empty line or Ctrl-D ends."
    );
    let mut history: Vec<Message> = a
        .system
        .iter()
        .map(|s| Message::new("system", s.as_str()))
        .collect();
    let stdin = std::io::stdin();
    let mut turn = 0u64;
    loop {
        eprint!("you> ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        history.push(Message::new("user", line.trim_end()));
        let (prompt, dropped) =
            fit_history(&mut history, budget, |m| Ok(p.prompt(m)?), |t| p.count(t))?;
        if dropped > 0 {
            eprintln!(
                "[dropped the oldest {dropped} exchange(s) to keep the prompt within {budget} tokens]"
            );
        }
        let text = chat_turn(client, &rt, a, prompt, turn)?;
        turn += 1;
        history.push(Message::new("assistant", text.trim()));
    }
    Ok(())
}

/// One reply of `tandem chat`: `prompt` run locally on the device model (seed `turn`), streamed
/// to stdout; returns its text.
fn chat_turn(
    client: &Client,
    rt: &tokio::runtime::Runtime,
    a: &ChatArgs,
    prompt: String,
    turn: u64,
) -> Result<String> {
    let req = GenerateRequest {
        prompt,
        model: ModelChoice::Device,
        adapter: a.adapter.clone(),
        max_new_tokens: a.max_tokens,
        temperature: a.temperature,
        top_p: None,
        seed: turn,
        route: RouteChoice::Local,
    };
    let mut stdout = std::io::stdout();
    let (text, _, _, _) = rt.block_on(run_one(client, req, Some(&mut stdout), "thinking…"))?;
    println!();
    Ok(text)
}

/// `tandem chat` for a model without a chat template: the lines so far, newline-separated.
fn chat_plain(client: &Client, a: &ChatArgs) -> Result<()> {
    let rt = runtime()?;
    let budget = client.local_budget();
    eprintln!(
        "tandem chat: the conversation stays on this device (local route only). Empty line or Ctrl-D ends."
    );
    let mut history = String::new();
    let stdin = std::io::stdin();
    let mut turn = 0u64;
    loop {
        eprint!("you> ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        history.push_str(line.trim_end());
        history.push('\n');
        // Keep the most recent part of the conversation that fits the local budget.
        let mut prompt = history.clone();
        while !prompt.is_empty() && prompt.len() / 2 + a.max_tokens as usize > budget {
            let cut = prompt.find('\n').map_or(prompt.len(), |i| i + 1);
            prompt.drain(..cut);
        }
        if prompt.is_empty() {
            prompt = line.trim_end().to_string();
        }
        let text = chat_turn(client, &rt, a, prompt, turn)?;
        turn += 1;
        history.push_str(text.trim());
        history.push('\n');
    }
    Ok(())
}

pub fn nodes(a: NodesArgs) -> Result<()> {
    let client = a.cfg.client()?;
    let Some(remote) = client.remote() else {
        bail!(
            "no gateway and trust policy are configured (pass --config FILE from `tandem-fleet dev --write-config`, or --gateway and --policy)"
        );
    };
    let pin = client
        .pin(a.model)
        .with_context(|| format!("the {} model is not known to this device", a.model))?;
    let adapter = a
        .adapter
        .as_deref()
        .map(|n| pin.adapter(n))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let model_id = pin.digest.to_string();
    let adapter_id = adapter.map(|x| x.digest.to_string()).unwrap_or_default();
    let required = pin.required_digests(adapter);
    let rt = runtime()?;
    let reports = rt.block_on(remote.discover(&model_id, &adapter_id, &required))?;
    if a.json {
        let v: Vec<Value> = reports
            .iter()
            .map(|c| {
                json!({
                    "handle": c.handle,
                    "verified": c.node.is_some(),
                    "node": c.node.as_ref().map(|n| n.name().to_string()),
                    "key_configs": c.key_configs.as_ref().map(|k| base64::engine::general_purpose::STANDARD.encode(k)),
                    "key_expiry": c.node.as_ref().map(|n| n.key_expiry()),
                    "release_digest": c.node.as_ref().map(|n| n.release().digest().to_string()),
                    "report": c.report.to_json_value(),
                })
            })
            .collect();
        println!(
            "{}",
            json!({"gateway": remote.url(), "model": a.model.as_str(), "model_digest": model_id, "candidates": v})
        );
    } else {
        println!(
            "gateway {} offers {} node(s) for the {} model ({model_id}):",
            remote.url(),
            reports.len(),
            a.model
        );
        for c in &reports {
            println!("\n== {} ==", c.handle);
            print!("{}", c.report.human());
        }
    }
    if reports.iter().all(|c| c.node.is_none()) {
        bail!("no offered node passed verification");
    }
    Ok(())
}

fn abs(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned())
}

pub fn config(c: ConfigCmd) -> Result<()> {
    match c {
        ConfigCmd::Init {
            out,
            gateway,
            policy,
            force,
        } => {
            if out.exists() && !force {
                bail!("{} exists; pass --force to overwrite it", out.display());
            }
            let base = tandem_device::models::default_models_dir();
            let mut cfg = Config {
                gateway,
                ..Config::default()
            };
            cfg.models.device = Some(abs(&base.join("device")));
            let server = base.join("server");
            cfg.models.server = server.is_dir().then(|| abs(&server));
            if let Some(p) = policy {
                let bytes =
                    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                cfg.policy = Some(
                    serde_json::from_slice(&bytes)
                        .with_context(|| format!("{} is not JSON", p.display()))?,
                );
            }
            cfg.validate()?;
            // Check it builds a client (models pin, policy parses) before writing.
            Client::new(cfg.clone())?;
            std::fs::write(&out, cfg.to_json_pretty() + "\n")
                .with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {}", out.display());
            Ok(())
        }
    }
}
