//! A `tandem-fleet dev` fleet (started by [`crate::fleet::DevRun`]) seen through the device
//! SDK: used by the end-to-end tests and the remote-overhead bench.

use tandem_device::{Client, Config, Error, Event, GenerateRequest, RouteChoice, Summary};

use crate::fleet::DevRun;

/// A `tandem-fleet dev` fleet (two nodes) and the device config it wrote; the fleet gets SIGTERM
/// on drop, so a failing test leaves no processes behind.
pub struct Fleet {
    pub run: DevRun,
    pub config: Config,
    /// The log's signing key (the test made it and passed `--log-key`), to forge checkpoints.
    pub log_signer: tandem_attest::log::NoteSigner,
    _key_dir: tempfile::TempDir,
}

impl Fleet {
    /// The node processes' pids.
    pub fn node_pids(&self) -> Vec<u32> {
        self.run.nodes.iter().map(|(pid, _)| *pid).collect()
    }
}

pub fn start_fleet() -> Fleet {
    start_fleet_logged(None)
}

/// [`start_fleet`], with the fleet's standard error (gateway events, node log lines) written
/// to `stderr` when given.
pub fn start_fleet_logged(stderr: Option<&std::path::Path>) -> Fleet {
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("log.key");
    let (log_signer, skey) = tandem_attest::log::NoteSigner::generate_with_rng(
        &mut rand::rngs::OsRng,
        tandem_fleet::dev::LOG_ORIGIN,
    )
    .unwrap();
    std::fs::write(&key_file, skey).unwrap();
    let run = DevRun::start_logged(2, &["--log-key".as_ref(), key_file.as_os_str()], stderr);
    let config = Config::from_json(&serde_json::to_vec(&run.config).unwrap())
        .expect("dev writes a valid device config");
    Fleet {
        run,
        config,
        log_signer,
        _key_dir: key_dir,
    }
}

/// Runs a request to the end: (text, token ids, summary, fallback reason).
pub async fn run(
    client: &Client,
    req: GenerateRequest,
) -> Result<(String, Vec<u32>, Summary, Option<String>), Error> {
    let mut events = client.generate(req);
    let (mut text, mut ids, mut fallback) = (String::new(), Vec::new(), None);
    while let Some(ev) = events.next().await {
        match ev? {
            Event::Text { text: t, token_ids } => {
                text.push_str(&t);
                ids.extend(token_ids);
            }
            Event::Fallback { reason } => fallback = Some(reason),
            Event::Done(s) => return Ok((text, ids, *s, fallback)),
        }
    }
    panic!("stream ended without Done or an error")
}

pub fn greedy(prompt: &str, max: u32, route: RouteChoice) -> GenerateRequest {
    GenerateRequest {
        max_new_tokens: max,
        route,
        ..GenerateRequest::new(prompt)
    }
}
