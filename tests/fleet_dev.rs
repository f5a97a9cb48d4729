//! `tandem-fleet dev --nodes 2 --write-config F` end to end: the real binary starts the log, the
//! signed release, two node processes and the gateway; this test reads the device config it
//! wrote, verifies the candidates with the trust policy from that config, seals an inference
//! request for the embedded device model through the gateway, opens the streamed answer, checks
//! the receipt, then sends SIGTERM and checks that every process is gone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tandem_proto::v1;
use tandem_tests::fleet::{DevRun, candidates, read_answer, seal};

#[test]
fn dev_fleet_serves_a_sealed_request_and_stops_cleanly() {
    let mut dev = DevRun::start(2);

    // 1. Two node processes and the policy file, printed before `ready`.
    let pids: Vec<u32> = dev.nodes.iter().map(|(pid, _)| *pid).collect();
    assert_eq!(pids.len(), 2, "two node processes");
    let policy_path = dev
        .policy_path
        .clone()
        .expect("the policy path is printed before `ready`");
    assert!(policy_path.is_file());

    // 2. The device config.
    let cfg = &dev.config;
    assert!(
        cfg["gateway"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
    assert!(cfg["tls_ca_pem"].is_null());
    assert!(
        cfg["log_url"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
    assert!(
        cfg["checkpoint_file"]
            .as_str()
            .is_some_and(|p| Path::new(p).is_absolute()),
        "{cfg}"
    );
    let device_dir = PathBuf::from(cfg["models"]["device"].as_str().unwrap());
    assert!(device_dir.join("config.json").is_file());
    assert!(Path::new(cfg["models"]["server"].as_str().unwrap()).is_dir());
    let model_digest = tandem_model::model_digest(&device_dir).unwrap();

    let rt = tandem_service::runtime(2).unwrap();
    rt.block_on(async {
        // 3. Discover, and verify every candidate with the policy from the device config.
        let mut gw = dev.gateway().await;
        let cands = candidates(&mut gw, &dev.verifier(), &device_dir).await;
        assert_eq!(cands.len(), 2, "both nodes are offered (K = 3, fleet of 2)");

        // 4. Seal an inference request to both and submit it through the gateway.
        let to: Vec<_> = cands.iter().map(|(_, n, _)| n).collect();
        let (sealed, ctx) = seal(
            &device_dir,
            "Task: truecase\nInput: the king of england\nOutput:",
            6,
            &to,
        );
        let mut stream = gw
            .submit(v1::SubmitRequest {
                sealed_request: sealed,
                node_handles: cands.iter().map(|(h, _, _)| h.clone()).collect(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut tokens = 0usize;
        let r = read_answer(&mut stream, ctx, |_, d| tokens += d.token_ids.len())
            .await
            .expect("the stream ends with its final chunk");
        assert_eq!(r.model_digest, model_digest.0.0.to_vec());
        assert!(r.adapter_digest.is_empty());
        let releases: Vec<Vec<u8>> = cands
            .iter()
            .map(|(_, n, _)| n.release().digest().0.to_vec())
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
    let mut child = dev.child.take().unwrap();
    tandem_fleet::dev::send_signal(child.id(), tandem_fleet::dev::StopSignal::Term).unwrap();
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
