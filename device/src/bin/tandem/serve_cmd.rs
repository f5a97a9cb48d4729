//! `tandem serve`: the device daemon (gRPC `tandem.v1.Device` and the OpenAI-compatible HTTP
//! API), a thin shell over `tandem_device::daemon`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use tandem_device::Client;
use tandem_device::daemon::{self, Daemon, DaemonOptions, ServeOptions};

use crate::client_cmd::ConfigArgs;

/// `tandem serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Unix socket to listen on (created 0600). The default when no --listen is given:
    /// $XDG_RUNTIME_DIR/tandem/daemon.sock, else <temp dir>/tandem-$USER/daemon.sock.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// TCP address to listen on, e.g. 127.0.0.1:8642 (repeatable; port 0 picks one). Loopback
    /// only unless --allow-remote.
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Accept a non-loopback --listen address (requires --token-file).
    #[arg(long)]
    allow_remote: bool,
    /// File holding the bearer token every request must carry (`authorization: Bearer …`).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Local generations run at once.
    #[arg(long, default_value_t = 1)]
    max_local: usize,
    /// Local generations that may wait for a slot; more are refused ("busy").
    #[arg(long, default_value_t = 32)]
    queue: usize,
    /// New tokens when a request does not say.
    #[arg(long, default_value_t = 64)]
    default_max_tokens: u32,
    /// Seconds in-flight requests may take after SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 10)]
    grace_secs: u64,
    /// Test aid: pause this long before handing on each text delta.
    #[arg(long, hide = true)]
    token_delay_ms: Option<u64>,
    #[command(flatten)]
    cfg: ConfigArgs,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let token = match &a.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the token file {}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let socket = match (&a.socket, a.listen.is_empty()) {
        (Some(s), _) => Some(s.clone()),
        (None, true) => Some(daemon::default_socket_path()),
        (None, false) => None,
    };
    let opts = ServeOptions {
        socket,
        listen: a.listen.clone(),
        allow_remote: a.allow_remote,
        token,
        grace: Duration::from_secs(a.grace_secs),
    };
    // Everything is checked before a model loads or a port is bound.
    if let Err(e) = opts.check() {
        bail!("{e}");
    }
    let client = Client::new(a.cfg.load()?)?;
    let daemon = Arc::new(Daemon::new(
        client,
        DaemonOptions {
            max_local: a.max_local,
            queue_limit: a.queue,
            default_max_tokens: a.default_max_tokens,
            token_delay: a.token_delay_ms.map(Duration::from_millis),
        },
    )?);
    let rt = tandem_service::runtime(2).context("starting the async runtime")?;
    eprintln!("tandem serve: loading the device model…");
    rt.block_on(daemon.client().load_local())?;
    let result = rt.block_on(daemon::serve(
        daemon,
        opts,
        |s| {
            let mut out = std::io::stdout().lock();
            if let Some(p) = &s.socket {
                let _ = writeln!(out, "listening unix {}", p.display());
            }
            for t in &s.tcp {
                let _ = writeln!(out, "listening tcp {t}");
            }
            let _ = writeln!(out, "ready");
            let _ = out.flush();
        },
        tandem_service::shutdown_signal(),
    ));
    rt.shutdown_timeout(Duration::from_secs(2));
    result.context("tandem serve")
}
