//! `tandem-node dev --nodes 2 --write-config F` end to end: the real binary starts the log, the
//! signed release, two node processes and the gateway; this test reads the device config it
//! wrote, verifies the candidates with the trust policy from that config, seals an inference
//! request for the embedded device model through the gateway, opens the streamed answer, checks
//! the receipt, then sends SIGTERM and checks that every process is gone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tandem_attest::digest::Sha256Digest;
use tandem_attest::verify::{Policy, Verifier, VerifyContext};
use tandem_proto::v1::gateway_client::GatewayClient;
use tandem_proto::v1::{self, response_event, submit_reply};
use tandem_proto::{Limits, RoutingMetadata, SealOptions, SizeBucket, seal_request};

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("models")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn file_digest(p: &Path) -> Sha256Digest {
    Sha256Digest(Sha256::digest(std::fs::read(p).unwrap()).into())
}

/// Kills the dev process if the test fails midway (no orphans from a failed test either).
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = tandem_node::dev::send_signal(c.id(), tandem_node::dev::StopSignal::Term);
            let _ = c.wait();
        }
    }
}

#[test]
fn dev_fleet_serves_a_sealed_request_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let device_config = dir.path().join("device.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-node"))
        .args(["dev", "--nodes", "2", "--write-config"])
        .arg(&device_config)
        .arg("--models")
        .arg(models_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut guard = Guard(Some(child));
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Keep stderr drained (node and gateway events), and keep it for diagnostics.
    let (etx, erx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = etx.send(line);
        }
    });

    // 1. Wait for `ready`, collecting the node pids and the policy path.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut pids = Vec::new();
    let mut policy_path = None;
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                let err: Vec<String> = erx.try_iter().collect();
                panic!(
                    "no `ready` from tandem-node dev; stderr:\n{}",
                    err.join("\n")
                )
            });
        if line == "ready" {
            break;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"node") && words.get(2) == Some(&"pid") {
            pids.push(words[3].parse::<u32>().unwrap());
        }
        if let Some(p) = line.strip_prefix("policy ") {
            policy_path = Some(PathBuf::from(p));
        }
    }
    assert_eq!(pids.len(), 2, "two node processes");
    let policy_path = policy_path.expect("the policy path is printed before `ready`");
    assert!(policy_path.is_file());

    // 2. The device config.
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&device_config).unwrap()).unwrap();
    let gateway = cfg["gateway"].as_str().unwrap().to_owned();
    assert!(gateway.starts_with("http://127.0.0.1:"), "{gateway}");
    assert!(cfg["tls_ca_pem"].is_null());
    assert!(
        cfg["log_url"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
    let device_dir = PathBuf::from(cfg["models"]["device"].as_str().unwrap());
    assert!(device_dir.join("config.json").is_file());
    assert!(Path::new(cfg["models"]["server"].as_str().unwrap()).is_dir());
    let policy =
        Policy::from_json(&serde_json::to_vec(&cfg["policy"]).unwrap()).expect("a valid policy");
    let verifier = Verifier::new(policy);

    let model_digest = tandem_model::model_digest(&device_dir).unwrap();
    let required: Vec<Sha256Digest> = ["config.json", "tokenizer.json", "model.safetensors"]
        .iter()
        .map(|f| file_digest(&device_dir.join(f)))
        .collect();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(gateway.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut gw = GatewayClient::new(channel);
        // 3. Discover and verify every candidate with the policy from the device config.
        let model_id = model_digest.to_string();
        let cands = gw
            .discover(v1::DiscoverRequest {
                model_id: model_id.clone(),
                adapter_id: String::new(),
                count: 3,
            })
            .await
            .unwrap()
            .into_inner()
            .candidates;
        assert_eq!(cands.len(), 2, "both nodes are offered (K = 3, fleet of 2)");
        let cx = VerifyContext {
            now: now(),
            known: None,
            required_digests: &required,
            nonce: None,
        };
        let mut verified = Vec::new();
        for c in &cands {
            let doc = &c.attestation.as_ref().unwrap().document;
            let v = verifier.verify_node(doc, &cx);
            let node = v
                .node
                .unwrap_or_else(|| panic!("candidate does not verify: {:?}", v.report));
            verified.push((c.node_handle.clone(), node));
        }

        // 4. Seal an inference request to both and submit it through the gateway.
        let body = v1::InferenceRequest {
            model_digest: model_digest.0.0.to_vec(),
            adapter_digest: Vec::new(),
            prompt: "Task: truecase\nInput: the king of england\nOutput:".into(),
            max_new_tokens: 6,
            temperature: 0.0,
            top_p: 0.0,
            seed: 0,
        }
        .encode_to_vec();
        let configs: Vec<_> = verified
            .iter()
            .map(|(_, n)| n.key_configs().entries()[0].clone())
            .collect();
        let (sealed, ctx) = seal_request(
            &configs,
            &RoutingMetadata {
                model_id,
                adapter_id: String::new(),
                size_bucket: SizeBucket::for_len(body.len()),
            },
            now(),
            &body,
            &SealOptions::default(),
        )
        .unwrap();
        let mut stream = gw
            .submit(v1::SubmitRequest {
                sealed_request: sealed,
                node_handles: verified.iter().map(|(h, _)| h.clone()).collect(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut ctx = Some(ctx);
        let mut opener = None;
        let mut tokens = 0usize;
        let mut receipt = None;
        while let Some(m) = stream.message().await.unwrap() {
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
                    let opened = opener.as_mut().expect("head first").open(&c).unwrap();
                    let ev = v1::ResponseEvent::decode(opened.data.as_slice()).unwrap();
                    match ev.event.unwrap() {
                        response_event::Event::Delta(d) => tokens += d.token_ids.len(),
                        response_event::Event::Receipt(r) => receipt = Some(r),
                        response_event::Event::Error(e) => panic!("node error {e:?}"),
                    }
                }
            }
        }
        opener
            .unwrap()
            .finish()
            .expect("the stream ended with its final chunk");
        let r = receipt.expect("the final chunk is a receipt");
        assert_eq!(r.model_digest, model_digest.0.0.to_vec());
        assert!(r.adapter_digest.is_empty());
        let releases: Vec<Vec<u8>> = verified
            .iter()
            .map(|(_, n)| n.release().digest().0.to_vec())
            .collect();
        assert!(
            releases.contains(&r.release_digest),
            "receipt names the verified release"
        );
        assert!(r.prompt_tokens > 0);
        assert!(
            r.completion_tokens >= 1 && r.completion_tokens <= 6,
            "{r:?}"
        );
        assert_eq!(
            tokens, r.completion_tokens as usize,
            "deltas carry every token"
        );
    });

    // 5. SIGTERM: dev stops its nodes and exits 0; no process is left.
    let mut child = guard.0.take().unwrap();
    tandem_node::dev::send_signal(child.id(), tandem_node::dev::StopSignal::Term).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "dev did not exit within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "dev exits 0 on SIGTERM: {status}");
    if Path::new("/proc/self").exists() {
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "node process {pid} outlived dev"
            );
        }
    }
    assert!(!policy_path.exists(), "the state directory is removed");
}
