//! `tandem-fleet dev` as a child process: start it, verify candidates with the policy it wrote,
//! seal inference requests, read sealed answers.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prost::Message as _;
use tandem_attest::digest::Sha256Digest;
use tandem_attest::verify::{Policy, VerifiedNode, Verifier, VerifyContext};
use tandem_proto::v1::gateway_client::GatewayClient;
use tandem_proto::v1::{self, response_event, submit_reply};
use tandem_proto::{
    Limits, ResponseContext, RoutingMetadata, SealOptions, SizeBucket, seal_request,
};
use tonic::transport::Channel;

pub use crate::now;

pub fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
}

/// A running `tandem-fleet dev`.
pub struct DevRun {
    pub child: Option<Child>,
    /// (pid, address) of each node.
    pub nodes: Vec<(u32, SocketAddr)>,
    /// The device config it wrote.
    pub config: serde_json::Value,
    /// The trust policy file it printed (in its state directory).
    pub policy_path: Option<PathBuf>,
    /// The gateway's Prometheus metrics URL it printed.
    pub metrics_url: Option<String>,
    _dir: tempfile::TempDir,
}

impl DevRun {
    pub fn start(nodes: usize) -> DevRun {
        DevRun::start_with(nodes, &[])
    }

    /// Starts `tandem-fleet dev` with `extra` arguments after the usual ones.
    pub fn start_with(nodes: usize, extra: &[&std::ffi::OsStr]) -> DevRun {
        DevRun::start_logged(nodes, extra, None)
    }

    /// [`DevRun::start_with`], writing the process's standard error (the gateway's events and
    /// the nodes' log lines) to `stderr` when given.
    pub fn start_logged(nodes: usize, extra: &[&std::ffi::OsStr], stderr: Option<&Path>) -> DevRun {
        let stderr = match stderr {
            Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
            None => Stdio::null(),
        };
        let dir = tempfile::tempdir().unwrap();
        let device_config = dir.path().join("device.json");
        let mut child = Command::new(crate::bins::path("tandem-fleet"))
            .args(["dev", "--nodes", &nodes.to_string(), "--write-config"])
            .arg(&device_config)
            .arg("--models")
            .arg(models_dir())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let mut run = DevRun {
            child: Some(child),
            nodes: Vec::new(),
            config: serde_json::Value::Null,
            policy_path: None,
            metrics_url: None,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("tandem-fleet dev prints `ready`");
            if line == "ready" {
                break;
            }
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.first() == Some(&"node") && w.get(2) == Some(&"pid") {
                run.nodes
                    .push((w[3].parse().unwrap(), w[5].parse().unwrap()));
            }
            if let Some(p) = line.strip_prefix("policy ") {
                run.policy_path = Some(PathBuf::from(p));
            }
            if w.first() == Some(&"gateway") && w.get(2) == Some(&"metrics") {
                run.metrics_url = w.get(3).map(|u| (*u).to_owned());
            }
        }
        run.config = serde_json::from_slice(&std::fs::read(&device_config).unwrap()).unwrap();
        run
    }

    pub async fn gateway(&self) -> GatewayClient<Channel> {
        let ch = tonic::transport::Endpoint::from_shared(
            self.config["gateway"].as_str().unwrap().to_owned(),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
        GatewayClient::new(ch)
    }

    pub fn verifier(&self) -> Verifier {
        Verifier::new(
            Policy::from_json(&serde_json::to_vec(&self.config["policy"]).unwrap()).unwrap(),
        )
    }

    pub fn model_dir(&self, which: &str) -> PathBuf {
        PathBuf::from(self.config["models"][which].as_str().unwrap())
    }
}

impl Drop for DevRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = tandem_fleet::dev::send_signal(c.id(), tandem_fleet::dev::StopSignal::Term);
            let _ = c.wait();
        }
    }
}

pub fn kill9(pid: u32) {
    tandem_fleet::dev::send_signal(pid, tandem_fleet::dev::StopSignal::Kill).unwrap();
}

/// The per-file digests a release must list for the model in `dir` (what the device requires).
pub fn required(dir: &Path) -> Vec<Sha256Digest> {
    tandem_model::model_files(dir)
        .unwrap()
        .iter()
        .map(|f| {
            Sha256Digest::of_reader(std::fs::File::open(f).unwrap(), |_| {})
                .unwrap()
                .0
        })
        .collect()
}

/// Discover and verify: (handle, verified node, attestation document) per candidate.
pub async fn candidates(
    gw: &mut GatewayClient<Channel>,
    verifier: &Verifier,
    model_dir: &Path,
) -> Vec<(String, VerifiedNode, Vec<u8>)> {
    let model = tandem_model::model_digest(model_dir).unwrap();
    let req = required(model_dir);
    let cands = gw
        .discover(v1::DiscoverRequest {
            model_id: model.to_string(),
            adapter_id: String::new(),
            count: 3,
        })
        .await
        .unwrap()
        .into_inner()
        .candidates;
    let cx = VerifyContext {
        now: now(),
        known: None,
        required_digests: &req,
        nonce: None,
    };
    cands
        .into_iter()
        .map(|c| {
            let doc = c.attestation.unwrap().document;
            let v = verifier.verify_node(&doc, &cx).into_result().unwrap();
            (c.node_handle, v, doc)
        })
        .collect()
}

/// Seals an InferenceRequest for the model in `model_dir` to `to`.
pub fn seal(
    model_dir: &Path,
    prompt: &str,
    max_new_tokens: u32,
    to: &[&VerifiedNode],
) -> (Vec<u8>, ResponseContext) {
    let model = tandem_model::model_digest(model_dir).unwrap();
    let body = v1::InferenceRequest {
        model_digest: model.0.0.to_vec(),
        adapter_digest: Vec::new(),
        prompt: prompt.into(),
        max_new_tokens,
        temperature: 0.0,
        top_p: 0.0,
        seed: 0,
    }
    .encode_to_vec();
    let configs: Vec<_> = to
        .iter()
        .map(|n| n.key_configs().entries()[0].clone())
        .collect();
    seal_request(
        &configs,
        &RoutingMetadata {
            model_id: model.to_string(),
            adapter_id: String::new(),
            size_bucket: SizeBucket::for_len(body.len()),
        },
        now(),
        &body,
        &SealOptions::default(),
    )
    .unwrap()
}

/// Reads an answer: calls `on_delta` after each delta (with the count so far and the delta);
/// returns the receipt, or the status the stream ended with.
pub async fn read_answer(
    stream: &mut tonic::Streaming<v1::SubmitReply>,
    ctx: ResponseContext,
    mut on_delta: impl FnMut(usize, &v1::TextDelta),
) -> Result<v1::Receipt, tonic::Status> {
    let mut ctx = Some(ctx);
    let mut opener = None;
    let mut deltas = 0;
    let mut receipt = None;
    while let Some(m) = stream.message().await? {
        match m.part.unwrap() {
            submit_reply::Part::Head(h) => {
                opener = Some(
                    ctx.take()
                        .unwrap()
                        .open_head(&h, Limits::default())
                        .unwrap(),
                );
            }
            submit_reply::Part::Chunk(c) => {
                let opened = opener.as_mut().unwrap().open(&c).unwrap();
                match v1::ResponseEvent::decode(opened.data.as_slice())
                    .unwrap()
                    .event
                    .unwrap()
                {
                    response_event::Event::Delta(d) => {
                        deltas += 1;
                        on_delta(deltas, &d);
                    }
                    response_event::Event::Receipt(r) => receipt = Some(r),
                    response_event::Event::Error(e) => panic!("node error {e:?}"),
                }
            }
        }
    }
    opener
        .unwrap()
        .finish()
        .expect("a stream that ends OK ends with its final chunk");
    Ok(receipt.expect("the final chunk is a receipt"))
}
