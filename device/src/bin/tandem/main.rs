//! `tandem`: the device-side command line.
//!
//! Each group of `tandem model …` subcommands lives in its own module file with a `Cmd` enum
//! (clap `Subcommand`) and `fn run(self) -> anyhow::Result<()>`. Adding a group is two lines:
//! `mod NAME_cmd;` below, and `NAME_cmd::Cmd => Variant,` in `model_subcommands!`.

use clap::{Parser, Subcommand};

mod client_cmd;
mod eval_cmd;
mod model_cmd;
mod pallet_cmd;
mod train_cmd;

/// Generates the `tandem model` subcommand enum from the module list, and its dispatch.
macro_rules! model_subcommands {
    ($($module:ident :: Cmd => $variant:ident),* $(,)?) => {
        /// Run, inspect, evaluate and train local models.
        #[derive(Debug, Subcommand)]
        enum ModelCommand {
            $(
                #[command(flatten)]
                $variant($module::Cmd),
            )*
        }

        impl ModelCommand {
            fn run(self) -> anyhow::Result<()> {
                match self {
                    $(ModelCommand::$variant(c) => c.run(),)*
                }
            }
        }
    };
}

model_subcommands! {
    model_cmd::Cmd => Inference,
    train_cmd::Cmd => Training,
    pallet_cmd::Cmd => Palletization,
}

/// Tandem: private split inference.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate text: local first, or on a verified node; says where it ran and why.
    Ask(client_cmd::AskArgs),
    /// Chat interactively; the conversation stays on this device.
    Chat(client_cmd::ChatArgs),
    /// What the gateway offers now, with each node's verification report.
    Nodes(client_cmd::NodesArgs),
    /// Device config files.
    #[command(subcommand)]
    Config(client_cmd::ConfigCmd),
    /// Local model commands (perplexity, generate, inspect, train, …).
    #[command(subcommand)]
    Model(ModelCommand),
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
        Command::Ask(a) => client_cmd::ask(a),
        Command::Chat(a) => client_cmd::chat(a),
        Command::Nodes(a) => client_cmd::nodes(a),
        Command::Config(c) => client_cmd::config(c),
        Command::Model(c) => c.run(),
        Command::Eval(c) => eval_cmd::run(&c),
    }
}
