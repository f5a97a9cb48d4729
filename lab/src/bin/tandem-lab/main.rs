//! `tandem-lab`: the command line of whoever builds Tandem's models (tokenizer, pre-training,
//! task adapters, palletization, evaluation). App users run `tandem`.
//!
//! Each group of subcommands lives in its own module file with a `Cmd` enum (clap
//! `Subcommand`) and `fn run(self) -> anyhow::Result<()>`; the groups are flattened into the
//! top level (`tandem-lab train`, `tandem-lab palletize`, …), except `eval`.

use clap::{Parser, Subcommand};

mod eval_cmd;
mod pallet_cmd;
mod perplexity_cmd;
mod train_cmd;

/// Tandem lab: build, compress and evaluate the models.
#[derive(Debug, Parser)]
#[command(name = "tandem-lab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Perplexity(perplexity_cmd::Cmd),
    #[command(flatten)]
    Training(train_cmd::Cmd),
    #[command(flatten)]
    Palletization(pallet_cmd::Cmd),
    /// Evaluation: held-out perplexity, task adapters.
    #[command(subcommand)]
    Eval(eval_cmd::EvalCmd),
}

fn main() -> anyhow::Result<()> {
    // SAFETY: the first statement of `main`: no other thread exists yet.
    #[allow(unsafe_code)]
    unsafe {
        tandem_model::default_thread_count()
    };
    match Cli::parse().command {
        Command::Perplexity(c) => c.run(),
        Command::Training(c) => c.run(),
        Command::Palletization(c) => c.run(),
        Command::Eval(c) => eval_cmd::run(&c),
    }
}
