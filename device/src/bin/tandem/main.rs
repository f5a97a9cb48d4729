//! `tandem`: the Tandem command line.

mod eval_cmd;
mod train_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tandem", version, about = "Tandem: private split inference")]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    /// Model tools: training the embedded models.
    #[command(subcommand)]
    Model(ModelCmd),
    /// Evaluation: perplexity, task adapters.
    #[command(subcommand)]
    Eval(eval_cmd::EvalCmd),
}

#[derive(Debug, Subcommand)]
enum ModelCmd {
    /// Train a byte-level BPE tokenizer on a corpus.
    TrainTokenizer(train_cmd::TrainTokenizerArgs),
    /// Pre-train a base model (AdamW, warm-up + cosine, checkpoints, resume).
    Train(train_cmd::TrainArgs),
    /// Train a LoRA task adapter on a frozen base model.
    TrainAdapter(train_cmd::TrainAdapterArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Top::Model(ModelCmd::TrainTokenizer(a)) => train_cmd::train_tokenizer(&a),
        Top::Model(ModelCmd::Train(a)) => train_cmd::train(&a),
        Top::Model(ModelCmd::TrainAdapter(a)) => train_cmd::train_adapter(&a),
        Top::Eval(c) => eval_cmd::run(&c),
    }
}
