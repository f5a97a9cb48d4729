//! `tandem`: the device-side command line.
//!
//! Each group of `tandem model …` subcommands lives in its own module file with a `Cmd` enum
//! (clap `Subcommand`) and `fn run(self) -> anyhow::Result<()>`. Adding a group is two lines:
//! `mod NAME_cmd;` below, and `NAME_cmd::Cmd => Variant,` in `model_subcommands!`.

use clap::{Parser, Subcommand};

mod model_cmd;

/// Generates the `tandem model` subcommand enum from the module list, and its dispatch.
macro_rules! model_subcommands {
    ($($module:ident :: Cmd => $variant:ident),* $(,)?) => {
        /// Run, inspect and evaluate local models.
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
    /// Local model commands (perplexity, generate, inspect, …).
    #[command(subcommand)]
    Model(ModelCommand),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Model(c) => c.run(),
    }
}
