//! `tandem-lab eval perplexity | task | make-examples`: scoring the embedded models and adapters.

use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tandem_lab::tasks::{
    Scores, Task, answer, examples_to_jsonl, extract_sentences, grade, make_examples, parse_answer,
    parse_examples, prompt,
};
use tandem_lab::train::data::TokenStream;
use tandem_lab::train::tokenizer::{EOT, end_of_text_id};
use tandem_model::{DType, Device, GenerateParams, load_adapter, load_model};

use tandem_lab::train::trainer::eval_loss;

use crate::train_cmd::ensure_threads;

/// `tandem-lab eval …`
#[derive(Debug, Subcommand)]
pub enum EvalCmd {
    /// Held-out perplexity of a model (next-token, non-overlapping windows).
    Perplexity(PerplexityArgs),
    /// Score a task adapter on examples: exact match, CER, good/neutral/poor.
    Task(TaskArgs),
    /// Make task examples (JSON Lines) from held-out text.
    MakeExamples(MakeExamplesArgs),
}

/// `tandem-lab eval perplexity`
#[derive(Debug, Args)]
pub struct PerplexityArgs {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Text to score (documents separated by `<|endoftext|>` lines).
    #[arg(long)]
    pub text: PathBuf,
    /// Tokens per window (each window scores this many next-token predictions).
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Use at most this many windows, evenly spread (0 = all).
    #[arg(long, default_value_t = 0)]
    pub windows: usize,
    /// Optional LoRA adapter directory.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Compute threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tandem-lab eval task`
#[derive(Debug, Args)]
pub struct TaskArgs {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Adapter directory (omit to score the base model with the same prompt).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Task name (`proofread` or `truecase`); examples of other tasks are refused.
    #[arg(long)]
    pub task: String,
    /// Examples (JSON Lines from `tandem-lab eval make-examples`).
    #[arg(long)]
    pub examples: PathBuf,
    /// Score only the first N examples (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Compute threads.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write each example's output here (JSON Lines).
    #[arg(long)]
    pub outputs: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tandem-lab eval make-examples`
#[derive(Debug, Args)]
pub struct MakeExamplesArgs {
    /// Task name.
    #[arg(long)]
    pub task: String,
    /// Source text (the held-out split).
    #[arg(long)]
    pub text: PathBuf,
    /// Number of examples (evenly spread over the sentences).
    #[arg(long, default_value_t = 400)]
    pub n: usize,
    /// Seed for the corruption.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Output file.
    #[arg(long)]
    pub out: PathBuf,
    /// Write training documents in the prompt format (`prompt + answer`, separated by
    /// `<|endoftext|>` lines) instead of JSON Lines, to mix into a pre-training corpus.
    #[arg(long)]
    pub as_documents: bool,
}

pub fn run(cmd: &EvalCmd) -> Result<()> {
    match cmd {
        EvalCmd::Perplexity(a) => perplexity(a),
        EvalCmd::Task(a) => task(a),
        EvalCmd::MakeExamples(a) => make(a),
    }
}

fn perplexity(a: &PerplexityArgs) -> Result<()> {
    ensure_threads(a.threads)?;
    let dev = Device::Cpu;
    let m = load_model(&a.model, DType::F32, &dev)?;
    let adapter = match &a.adapter {
        Some(d) => Some(load_adapter(d, m.model.config(), DType::F32, &dev)?),
        None => None,
    };
    let tok_bytes =
        std::fs::read(a.model.join("tokenizer.json")).context("reading tokenizer.json")?;
    let eos = end_of_text_id(m.model.config(), &m.tokenizer)?;
    let stream: TokenStream =
        crate::train_cmd::load_tokens(&a.text, &m.tokenizer, &tok_bytes, eos)?;
    let max = if a.windows == 0 {
        usize::MAX
    } else {
        a.windows
    };
    let windows = stream.eval_windows(a.seq_len, max);
    let loss = eval_loss(&m.model, &windows, adapter.as_ref().map(|x| &x.adapter))?;
    let tokens = windows.len() * a.seq_len;
    if a.json {
        println!(
            "{}",
            json!({"model": a.model.display().to_string(), "digest": m.digest.to_string(), "text": a.text.display().to_string(),
                   "windows": windows.len(), "seq_len": a.seq_len, "tokens": tokens, "loss": loss, "perplexity": loss.exp()})
        );
    } else {
        println!(
            "{}: {} windows x {} tokens = {tokens} predictions; loss {loss:.4} nats/token; perplexity {:.3}",
            a.model.display(),
            windows.len(),
            a.seq_len,
            loss.exp()
        );
    }
    Ok(())
}

fn task(a: &TaskArgs) -> Result<()> {
    ensure_threads(a.threads)?;
    let dev = Device::Cpu;
    let t = Task::from_name(&a.task)?;
    let m = load_model(&a.model, DType::F32, &dev)?;
    let adapter = match &a.adapter {
        Some(d) => Some(load_adapter(d, m.model.config(), DType::F32, &dev)?),
        None => None,
    };
    let text = std::fs::read_to_string(&a.examples)
        .with_context(|| format!("reading {}", a.examples.display()))?;
    let mut examples = parse_examples(&text)?;
    if examples.iter().any(|e| e.task != t) {
        bail!(
            "{} holds examples of another task than `{}`",
            a.examples.display(),
            t.name()
        );
    }
    if a.limit > 0 {
        examples.truncate(a.limit);
    }
    let bar = ProgressBar::new(examples.len() as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} examples {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut scores = Scores::default();
    let mut outputs = String::new();
    for ex in &examples {
        let ids = m.tokenizer.encode(&prompt(t, &ex.input))?;
        let params = GenerateParams {
            max_tokens: ids.len() + 16,
            stop_strings: vec!["\n".to_string()],
            eos_token_ids: None,
            ..GenerateParams::default()
        };
        let g = m.model.generate(
            &m.tokenizer,
            &ids,
            adapter.as_ref().map(|x| &x.adapter),
            &params,
            |_| ControlFlow::Continue(()),
        )?;
        let out = parse_answer(&g.text);
        scores.add(ex, &out);
        outputs.push_str(&serde_json::to_string(&json!({"input": ex.input, "target": ex.target, "output": out, "grade": grade(ex, &out)}))?);
        outputs.push('\n');
        bar.inc(1);
        bar.set_message(format!(
            "CER {:.3} -> {:.3}",
            scores.input_cer(),
            scores.output_cer()
        ));
    }
    bar.finish_and_clear();
    if let Some(p) = &a.outputs {
        std::fs::write(p, outputs).with_context(|| format!("writing {}", p.display()))?;
    }
    let adapter_digest = adapter.as_ref().map(|x| x.digest.to_string());
    if a.json {
        println!(
            "{}",
            json!({"model": a.model.display().to_string(), "model_digest": m.digest.to_string(), "adapter": a.adapter.as_ref().map(|p| p.display().to_string()),
                   "adapter_digest": adapter_digest, "task": t.name(), "n": scores.n, "exact": scores.exact_rate(), "input_cer": scores.input_cer(),
                   "output_cer": scores.output_cer(), "cer_ratio": if scores.input_cer() > 0.0 { scores.output_cer() / scores.input_cer() } else { 0.0 },
                   "good": scores.good_rate(), "neutral": scores.neutral as f64 / scores.n.max(1) as f64, "poor": scores.poor_rate()})
        );
    } else {
        println!(
            "{} on {} examples: exact {:.1}%  CER input {:.2}% -> output {:.2}% (ratio {:.2})  good {:.1}%  neutral {:.1}%  poor {:.1}%",
            t.name(),
            scores.n,
            100.0 * scores.exact_rate(),
            100.0 * scores.input_cer(),
            100.0 * scores.output_cer(),
            if scores.input_cer() > 0.0 {
                scores.output_cer() / scores.input_cer()
            } else {
                0.0
            },
            100.0 * scores.good_rate(),
            100.0 * scores.neutral as f64 / scores.n.max(1) as f64,
            100.0 * scores.poor_rate()
        );
    }
    Ok(())
}

fn make(a: &MakeExamplesArgs) -> Result<()> {
    let t = Task::from_name(&a.task)?;
    let text = std::fs::read_to_string(&a.text)
        .with_context(|| format!("reading {}", a.text.display()))?;
    let sentences = extract_sentences(&text);
    let n = sentences.len();
    if n == 0 || a.n == 0 {
        bail!("{} yields no usable sentences", a.text.display());
    }
    let take = a.n.min(n);
    let picked: Vec<String> = (0..take).map(|i| sentences[i * n / take].clone()).collect();
    let ex = make_examples(t, &picked, a.seed);
    let body = if a.as_documents {
        let docs: Vec<String> = ex
            .iter()
            .map(|e| format!("{}{}", prompt(t, &e.input), answer(&e.target)))
            .collect();
        docs.join(&format!("\n{EOT}\n")) + "\n"
    } else {
        examples_to_jsonl(&ex)
    };
    std::fs::write(&a.out, body).with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "wrote {} {} examples from {n} sentences to {}",
        ex.len(),
        t.name(),
        a.out.display()
    );
    Ok(())
}
