//! `tandem`: the device-side command line.
//!
//! App-user commands only: building, compressing and evaluating models is `tandem-lab`'s
//! (the `tandem-lab` crate).

use clap::{Parser, Subcommand};

mod bench_cmd;
mod chat_template_cmd;
mod client_cmd;
mod model_cmd;
mod serve_cmd;

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
    /// Local model commands (generate, inspect, chat-template).
    #[command(subcommand)]
    Model(model_cmd::Cmd),
    /// The device daemon: gRPC `tandem.v1.Device` and an OpenAI-compatible API for every app.
    Serve(serve_cmd::ServeArgs),
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
        Command::Serve(a) => serve_cmd::serve(a),
    }
}
